"""The forced answer: after a reasoning (full or cut), append `\\nAnswer: (` and read the letter logits.

Read the same way everywhere: the prompt is tokenized on its own (as in training), the reasoning text is
tokenized without special tokens and appended, then the cue tokens; the answer is the argmax over the
single-token logits of the option letters (A-D), and `probs` is the softmax over those letters only.

* `forced_answer`: batched (left padding), one reasoning per prompt.
* `forced_answer_curve`: the forced answer after every k-th reasoning token of one problem, from one KV cache
  of the full reasoning (each cut attends to its prefix only): the curve that early exit reads.
* `generate_reasoning`: batched greedy generation (KV-cached) that stops at the answer line or a token budget.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import nn
from transformers import StoppingCriteria, StoppingCriteriaList

from ..core.capture import left_pad
from ..core.kv import cached_forward, returned_cache
from ..core.tokens import pad_id as pad_token

ANSWER_CUE = "\nAnswer: ("
ANSWER_LINE = "\nAnswer:"
LETTERS = ("A", "B", "C", "D")


def letter_token_ids(tokenizer: Any, letters: Sequence[str] = LETTERS) -> list[int]:
    """Token id of each option letter; raises when a letter is not a single token for this tokenizer."""
    out = []
    for L in letters:
        ids = tokenizer(L, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise ValueError(
                f"option letter '{L}' is {len(ids)} tokens {ids} for this tokenizer; the forced answer needs "
                "single-token letters: pass other letters= (e.g. digits) that this tokenizer keeps whole"
            )
        out.append(ids[0])
    return out


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def encode_prefix(tokenizer: Any, prompt: str, reasoning: str = "") -> tuple[list[int], list[int]]:
    """(prompt ids, reasoning ids): the prompt with the tokenizer's special tokens, the reasoning without."""
    bos = getattr(tokenizer, "bos_token", None)
    p = tokenizer(prompt, add_special_tokens=not (bos and prompt.startswith(bos)))["input_ids"]
    r = tokenizer(reasoning, add_special_tokens=False)["input_ids"] if reasoning else []
    return list(p), list(r)


def cue_ids(tokenizer: Any, cue: str = ANSWER_CUE) -> list[int]:
    return list(tokenizer(cue, add_special_tokens=False)["input_ids"])


@dataclass
class ForcedAnswer:
    """Forced answers of N sequences: `letters[i]`, `probs[i]` over the letters (sums to 1), `letter_mass[i]`
    (the letters' share of the full next-token distribution: low means the cue did not elicit a letter)."""

    letters: list[str]
    probs: torch.Tensor  # [N, n_letters]
    letter_mass: torch.Tensor  # [N]
    option_letters: tuple[str, ...] = LETTERS

    @property
    def index(self) -> torch.Tensor:
        return self.probs.argmax(-1)


@torch.no_grad()
def forced_answer_ids(
    model: nn.Module,
    sequences: Sequence[Sequence[int]],
    letter_ids: Sequence[int],
    pad_id: int,
    batch_size: int = 16,
    letters: Sequence[str] = LETTERS,
) -> ForcedAnswer:
    """Forced answer for token sequences that already end with the cue; left-padded batches."""
    if not sequences:
        raise ValueError("no sequences given")
    dev = _device(model)
    probs, mass = [], []
    for s in range(0, len(sequences), batch_size):
        chunk = sequences[s: s + batch_size]
        ids, att = left_pad(chunk, pad_id)
        pos = (att.cumsum(-1) - 1).clamp(min=0)
        logits = model(input_ids=ids.to(dev), attention_mask=att.to(dev), position_ids=pos.to(dev),
                       logits_to_keep=1, use_cache=False).logits[:, -1].float()
        full = logits.log_softmax(-1)[:, list(letter_ids)]
        mass.append(full.exp().sum(-1).cpu())
        probs.append(logits[:, list(letter_ids)].softmax(-1).cpu())
    P = torch.cat(probs)
    return ForcedAnswer([letters[i] for i in P.argmax(-1).tolist()], P, torch.cat(mass), tuple(letters))


def forced_answer(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    reasonings: Sequence[str] | None = None,
    batch_size: int = 16,
    letters: Sequence[str] = LETTERS,
    cue: str = ANSWER_CUE,
) -> ForcedAnswer:
    """Forced answer after each (prompt, reasoning): prompt + reasoning + `\\nAnswer: (` -> argmax over letters."""
    reasonings = list(reasonings) if reasonings is not None else [""] * len(prompts)
    if len(reasonings) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(reasonings)} reasonings: give one reasoning per prompt")
    c = cue_ids(tokenizer, cue)
    seqs = []
    for p, r in zip(prompts, reasonings):
        pi, ri = encode_prefix(tokenizer, p, r)
        seqs.append(pi + ri + c)
    pad = pad_token(tokenizer, fallback=None)
    return forced_answer_ids(model, seqs, letter_token_ids(tokenizer, letters), pad, batch_size, letters)


@dataclass
class AnswerCurve:
    """Forced answers of one problem after the first `cuts[j]` reasoning tokens (0 = no reasoning at all)."""

    cuts: list[int]
    n_reasoning_tokens: int
    letters: list[str]
    probs: torch.Tensor  # [len(cuts), n_letters]

    def settle_cut(self) -> int:
        """The first cut from which the forced answer never changes again (equals the final answer)."""
        final = self.letters[-1]
        k = len(self.letters) - 1
        while k > 0 and self.letters[k - 1] == final:
            k -= 1
        return self.cuts[k]

    @property
    def settle_fraction(self) -> float:
        """settle_cut / number of reasoning tokens (0: settled before any reasoning; 1: only at the end)."""
        return self.settle_cut() / max(1, self.n_reasoning_tokens)


def _has_sliding_layers(model: nn.Module, length: int | None = None) -> bool:
    """True when some layer attends through a sliding window that `length` tokens would overflow (any length
    when `length` is None); inside the window a sliding layer sees every earlier token, as a full one does."""
    cfg = getattr(model, "config", None)
    types = getattr(cfg, "layer_types", None) or []
    sliding = any("sliding" in str(t) for t in types) or bool(getattr(cfg, "use_sliding_window", False))
    window = getattr(cfg, "sliding_window", None)
    if not sliding or length is None or not window:
        return sliding
    return length > int(window)


@torch.no_grad()
def forced_answer_curve(
    model: nn.Module,
    tokenizer: Any,
    prompt: str,
    reasoning: str,
    stride: int = 1,
    *,
    chunk: int = 32,
    letters: Sequence[str] = LETTERS,
    cue: str = ANSWER_CUE,
    use_cache: bool = True,
) -> AnswerCurve:
    """Forced answer after every `stride`-th reasoning token (always including 0 and the full reasoning).

    With `use_cache` the prompt+reasoning is run once; each cut then feeds only the cue tokens, attending to
    its prefix through the cached keys (masked beyond the cut, positions set to follow the cut). Without it,
    every cut is a separate left-padded sequence (slower, the reference).
    """
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    pi, ri = encode_prefix(tokenizer, prompt, reasoning)
    c = cue_ids(tokenizer, cue)
    L = len(ri)
    cuts = sorted(set(range(0, L + 1, stride)) | {L})
    lid = letter_token_ids(tokenizer, letters)
    probs = forced_curve_ids(model, pi, ri, cuts, c, lid, pad_id=pad_token(tokenizer, fallback=None), chunk=chunk,
                             use_cache=use_cache)
    return AnswerCurve(cuts, L, [letters[i] for i in probs.argmax(-1).tolist()], probs)


@torch.no_grad()
def forced_curve_ids(model: nn.Module, prompt_ids: list[int], reasoning_ids: list[int], cuts: Sequence[int],
                     c_ids: list[int], lid: Sequence[int], *, pad_id: int = 0, chunk: int = 32,
                     use_cache: bool = True) -> torch.Tensor:
    """Letter probabilities `[len(cuts), n_letters]` of the forced answer prompt + reasoning[:c] + cue for each
    cut c. With `use_cache`, from one KV cache of prompt + reasoning (each cut feeds only the cue, attending to
    its prefix); sliding-window models, or `use_cache=False`, get separate sequences (exact, slower)."""
    pi, ri, c = list(prompt_ids), list(reasoning_ids), list(c_ids)
    P, L = len(pi), len(ri)
    cuts = list(cuts)
    if use_cache and _has_sliding_layers(model, P + L + len(c)):
        use_cache = False  # past the window a sliding cache drops old keys: the masked-cache trick would not be exact
    if not use_cache:
        return forced_answer_ids(model, [pi + ri[:t] + c for t in cuts], lid, pad_id, chunk).probs
    dev = _device(model)
    ids = torch.tensor([pi + ri], device=dev)
    base = returned_cache(cached_forward(model, None, input_ids=ids, logits_to_keep=1))
    n_c = len(c)
    cue_t = torch.tensor(c, device=dev)
    out = []
    for s in range(0, len(cuts), chunk):
        part = cuts[s: s + chunk]
        K = len(part)
        cache = copy.deepcopy(base)
        cache.batch_repeat_interleave(K)
        att = torch.zeros((K, P + L + n_c), dtype=torch.long, device=dev)
        pos = torch.zeros((K, n_c), dtype=torch.long, device=dev)
        for i, t in enumerate(part):
            att[i, : P + t] = 1
            att[i, P + L:] = 1
            pos[i] = torch.arange(P + t, P + t + n_c, device=dev)
        logits = cached_forward(model, cache, input_ids=cue_t.expand(K, n_c), attention_mask=att, position_ids=pos,
                                logits_to_keep=1).logits[:, -1].float()
        out.append(logits[:, list(lid)].softmax(-1).cpu())
    return torch.cat(out)


# ------------------------------------------------------------------------------------------------------------
# Greedy reasoning
# ------------------------------------------------------------------------------------------------------------


class _StopAtText(StoppingCriteria):
    """Per-row stop once the newly generated text contains `text`."""

    def __init__(self, tokenizer: Any, text: str, start: int, window: int = 8):
        self.tok, self.text, self.start, self.window = tokenizer, text, start, window

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kw: Any) -> torch.Tensor:
        new = input_ids[:, self.start:]
        tail = new[:, -self.window:]
        done = [self.text in self.tok.decode(row, skip_special_tokens=True) for row in tail]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


@dataclass
class Generation:
    """One greedy continuation: the full `text`, the `reasoning` before the answer line, whether it got there."""

    text: str
    reasoning: str
    reached_answer: bool
    n_new_tokens: int
    extra: dict[str, Any] = field(default_factory=dict)


@torch.no_grad()
def generate_reasoning(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    max_new_tokens: int = 200,
    batch_size: int = 16,
    stop_text: str = ANSWER_CUE.strip(),
) -> list[Generation]:
    """Greedy reasoning for each prompt (left-padded batches, KV cache), stopping at `Answer: (` or the budget."""
    dev = _device(model)
    pad = pad_token(tokenizer, fallback=None)
    out: list[Generation] = []
    for s in range(0, len(prompts), batch_size):
        chunk = [encode_prefix(tokenizer, p)[0] for p in prompts[s: s + batch_size]]
        ids, att = left_pad(chunk, pad)
        T = ids.shape[1]
        gen = model.generate(
            input_ids=ids.to(dev), attention_mask=att.to(dev), max_new_tokens=max_new_tokens, do_sample=False,
            pad_token_id=pad, stopping_criteria=StoppingCriteriaList([_StopAtText(tokenizer, stop_text, T)]),
            temperature=None, top_p=None, top_k=None,
        )
        for row in gen[:, T:]:
            text = tokenizer.decode(row, skip_special_tokens=True)
            n = int((row != pad).sum())
            cut = text.find(ANSWER_LINE)
            reached = cut >= 0
            out.append(Generation(text, text[:cut] if reached else text.rstrip(), reached, n))
    return out


CONTENT_FREE = ("N/A", "", "?")  # Zhao et al. 2021's content-free inputs, as the question and every option


def content_free_prompts(tokenizer: Any, texts: Sequence[str] = CONTENT_FREE) -> list[str]:
    """Prompts in the reasoner's format whose question and four options are each one content-free text."""
    from ..tasks.mcq import MCQProblem, build_prompt

    return [build_prompt(MCQProblem(f"cf{i}", "test", "cf", t, (t,) * len(LETTERS), 0, t), tokenizer)
            for i, t in enumerate(texts)]


def letter_prior(model: nn.Module, tokenizer: Any, texts: Sequence[str] = CONTENT_FREE,
                 batch_size: int = 16, letters: Sequence[str] = LETTERS) -> torch.Tensor:
    """The model's letter prior: the mean forced-answer distribution over `letters` on content-free prompts
    (contextual calibration, Zhao et al. 2021), with no reasoning before the cue. Sums to 1."""
    p = forced_answer(model, tokenizer, content_free_prompts(tokenizer, texts), batch_size=batch_size,
                      letters=letters).probs.mean(0)
    return p / p.sum()


def calibrated_letters(probs: torch.Tensor, prior: torch.Tensor, letters: Sequence[str] = LETTERS) -> list[str]:
    """Per row, the letter maximising p(letter) / prior(letter) (Zhao et al.'s W = diag(prior)⁻¹, b = 0)."""
    probs, prior = torch.as_tensor(probs, dtype=torch.float64), torch.as_tensor(prior, dtype=torch.float64)
    if probs.dim() != 2 or probs.shape[1] != prior.numel() or prior.numel() != len(letters):
        raise ValueError(f"probs {tuple(probs.shape)} and prior {tuple(prior.shape)} must both cover the "
                         f"{len(letters)} letters")
    if not bool((prior > 0).all()):
        raise ValueError(f"the letter prior {prior.tolist()} has a zero: calibration would divide by it")
    return [letters[i] for i in (probs / prior).argmax(-1).tolist()]
