"""`generate_with_exit`: batched greedy decoding with a KV cache that can end each row's reasoning early.

One loop serves every method; its per-row decisions are the exit decoder's (`probescope.exit.engine`: one state
per row, one `step()`, the same the HF processor `EarlyExit` uses). Per step, each active row feeds one token:
* reasoning: the greedy token; the probe layer's residual is read by a hook from the SAME forward pass that
  feeds it (no second forward) and folded into the probe's running state (O(1) per token);
* cue: once a row stops reasoning (policy fired, its own `\\nAnswer:` line, EOS or the budget), the cue tokens
  `\\nAnswer: (` are teacher-forced one per step; after the last one the letter logits give its answer and the
  row leaves the batch (its KV cache rows are dropped), while the other rows go on.

A cut at a newline boundary reuses the fed newline as the cue's first token, so the sequence the model sees is
exactly prompt ids + kept reasoning ids + cue ids: the forced answer read as `probescope.exit.answer` reads it.
Left padding, with the attention mask and position ids kept per row. A reasoning format (`fmt`, see
`probescope.exit.formats`) changes the cue and the model's own end: with `<think>` formats an exit writes
`</think>` and then the answer cue, and the model's own `</think>` ends its reasoning.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import nn

from .answer import ANSWER_CUE, LETTERS, encode_prefix
from .engine import CUE, DONE, REASON, ExitDecoder, ExitRow, RowState, check_probe
from .formats import ReasoningFormat
from .free import forced_free_answers
from .policy import KINDS, ExitPolicy
from ..core.capture import left_pad
from ..core.hooks import check_layers, residual_hooks
from ..core.kv import cached_forward
from ..core.progress import progress
from ..core.tokens import pad_id

__all__ = ["ExitPolicy", "ExitResult", "ExitRow", "KINDS", "REASON", "CUE", "DONE", "check_probe",
           "generate_with_exit"]


@dataclass
class ExitResult:
    rows: list[ExitRow]
    seconds: float
    probe_seconds: float
    n_forwards: int
    drift: str | None = None  # the drift check's warning, in words (None: no drift seen, or no range to check)

    @property
    def probe_overhead(self) -> float:
        """Probe time (steps + policy checks) / decode time without it."""
        return self.probe_seconds / max(1e-9, self.seconds - self.probe_seconds)


@torch.no_grad()
def generate_with_exit(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    probe: Any = None,
    policy: ExitPolicy | None = None,
    *,
    max_new_tokens: int = 200,
    batch_size: int = 16,
    record_layers: Sequence[int] = (),
    letters: Sequence[str] = LETTERS,
    cue: str = ANSWER_CUE,
    on_token: Callable[[int, int, torch.Tensor | None], None] | None = None,
    quiet: bool | None = True,
    fmt: ReasoningFormat | str | None = None,
    answers: str | None = None,
    allow_other_model: bool = False,
) -> ExitResult:
    """Greedy reasoning per prompt that ends when `policy` fires, then the forced answer (see module doc).

    `record_layers`: also keep the residual at these layers for every fed reasoning token (for `collect`).
    `on_token(row, token_id, probe_probs)`: called for each fed reasoning token (live display).
    `fmt`: the reasoning format (its cue and the model's own end, e.g. `</think>`); default: plain with `cue`.
    The prompts should end where reasoning starts (`prompts.exit_prompt` builds them for a format).
    `answers="free"` (or `policy.answers`): free-form answers (`probescope.exit.free`): a row leaves when its
    reasoning stops, and its answer is then decoded after prompt + kept reasoning + cue (the probe: an
    answer-stability probe, whose P(stable) is the confidence). None: free when the probe is a stability probe,
    else option letters. `allow_other_model`: accept a probe recorded for another model id (same widths).
    A policy with a confidence range (`ExitPolicy.from_calibration`) warns once (`ExitDriftWarning`, and
    `result.drift`) when the live check confidences leave it (`probescope.exit.drift`).
    """
    dec = ExitDecoder(model, tokenizer, probe, policy, max_new_tokens=max_new_tokens, letters=letters, cue=cue, fmt=fmt,
                      answers=answers, n_prompts=len(prompts), allow_other_model=allow_other_model)
    rec = check_layers(model, list(record_layers)) if record_layers else []
    pad = pad_id(tokenizer, fallback=None)
    encoded = [encode_prefix(tokenizer, p)[0] for p in prompts]
    cuts = dec.policy.cuts if dec.policy.kind == "cuts" else None
    rows: list[ExitRow] = []
    t_start = time.perf_counter()
    n_fw = 0
    with progress(len(prompts), "reasoning", unit="problem", quiet=quiet) as bar:
        for s in range(0, len(prompts), batch_size):
            idx = list(range(s, min(s + batch_size, len(prompts))))
            states = [dec.new_row(None if cuts is None else cuts[i], rec) for i in idx]
            n_fw += _run_batch(model, dec, [encoded[i] for i in idx], states, rec=rec, pad=pad, on_token=on_token,
                               offset=s)
            rows += [st.result(encoded[i]) for i, st in zip(idx, states)]
            bar.advance(len(idx))
        if dec.free:  # each row's answer: decoded after prompt + kept reasoning + cue
            texts = forced_free_answers(model, tokenizer, [r.prompt_ids + r.reasoning_ids + dec.cue for r in rows],
                                        batch_size=batch_size)
            for r, a in zip(rows, texts):
                r.answer = a
    return ExitResult(rows, time.perf_counter() - t_start, dec.probe_seconds, n_fw,
                      dec.drift.message if dec.drift is not None else None)


def _run_batch(model: nn.Module, dec: ExitDecoder, enc: list[list[int]], states: list[RowState], *,
               rec: Sequence[int], pad: int | None, on_token: Callable | None, offset: int) -> int:
    """Decode one left-padded batch until every row left it; the rows' states are filled in. Returns the number
    of forward passes."""
    from transformers import DynamicCache

    dev = next(model.parameters()).device
    ids, att = left_pad(enc, pad)
    pos = (att.cumsum(-1) - 1).clamp(min=0)
    ids, att, pos = ids.to(dev), att.to(dev), pos.to(dev)
    next_pos = att.sum(1)  # [B]: the position of each row's next token
    grabbed: dict[int, torch.Tensor] = {}

    def reader(layer: int):
        def fn(hidden: torch.Tensor) -> None:
            grabbed[layer] = hidden[:, -1]
        return fn

    layers = sorted(set(rec) | ({dec.layer} if dec.layer is not None else set()))
    alive = list(range(len(enc)))  # batch row -> row of `states`, for the rows still in the cache
    dec.start_batch(len(enc))
    cache = DynamicCache()
    with residual_hooks(model, {L: reader(L) for L in layers}) if layers else nullcontext():
        out = cached_forward(model, cache, input_ids=ids, attention_mask=att, position_ids=pos, logits_to_keep=1)
        n_fw = 1
        logits = out.logits[:, -1].float()
        while True:
            keep, inputs = [], []
            for b, r in enumerate(alive):
                st = states[r]
                tok = dec.step(st, int(logits[b].argmax()))
                if tok is not None:
                    keep.append(b)
                    inputs.append(tok)
                    continue
                if dec.cue_complete(st):  # these logits follow the whole cue: the forced answer
                    dec.read_answer(st, logits[b])
                st.phase = DONE
            if len(keep) < len(alive):  # rows that are done leave the batch (their KV cache rows are dropped)
                alive = [alive[b] for b in keep]
                if not alive:
                    break
                kt = torch.tensor(keep, dtype=torch.long, device=dev)
                cache.batch_select_indices(kt)
                att, next_pos = att[kt], next_pos[kt]
                dec.select(kt)
            reasoning = [b for b, r in enumerate(alive) if states[r].phase == REASON]
            x = torch.tensor(inputs, device=dev).unsqueeze(1)
            att = torch.cat([att, torch.ones((len(alive), 1), dtype=att.dtype, device=dev)], 1)
            out = cached_forward(model, cache, input_ids=x, attention_mask=att, position_ids=next_pos.unsqueeze(1))
            n_fw += 1
            next_pos = next_pos + 1
            logits = out.logits[:, -1].float()
            if not reasoning:
                continue
            probs = dec.read_probe(grabbed.get(dec.layer), reasoning, len(alive))
            rr = torch.tensor(reasoning, device=dev)
            saved = {L: grabbed[L][rr].to(torch.float16).cpu() for L in rec}
            for j, b in enumerate(reasoning):
                st = states[alive[b]]
                dec.feed(st, inputs[b], None if probs is None else probs[b])
                for L in rec:
                    st.acts[L].append(saved[L][j])
                if on_token is not None:
                    on_token(offset + alive[b], inputs[b], st.last_probs)
    return n_fw
