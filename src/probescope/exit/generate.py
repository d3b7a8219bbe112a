"""`generate_with_exit`: batched greedy decoding with a KV cache that can end each row's reasoning early.

One loop serves every method. Per step, each active row feeds one token:
* reasoning: the greedy token; the probe layer's residual is read by a hook from the SAME forward pass that
  feeds it (no second forward) and folded into the probe's running state with `probe.step` (O(1) per token);
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
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import nn

from .answer import ANSWER_CUE, LETTERS, cue_ids, encode_prefix, letter_token_ids
from .formats import BOUNDARIES, ReasoningFormat, boundary_test, get_format
from .free import STABILITY_CLASSES, answers_kind, class_probs, forced_free_answers, free_policy
from ..core.capture import left_pad
from ..core.hooks import check_layers, d_model, residual_hooks
from ..core.progress import progress
from ..core.tokens import pad_id

KINDS = ("probe", "never", "budget", "cuts")
REASON, CUE, DONE = 0, 1, 2


@dataclass
class ExitPolicy:
    """When to stop reasoning. `kind`: "probe" (top probe probability >= `threshold` at a boundary, for
    `consecutive` boundaries in a row, after at least `min_tokens` reasoning tokens), "never" (full reasoning),
    "budget" (cut after `budget` tokens), "cuts" (cut row i after `cuts[i]` tokens: the oracle).
    Boundaries: "newline" (each newline token), "sentence" (each token ending a sentence) or "every" (every
    `every` tokens); see `probescope.exit.formats`. `mode`: the answer at an exit is the "forced" answer at the
    cut, or the "probe"'s own prediction."""

    kind: str = "probe"
    threshold: float = 0.9
    consecutive: int = 1
    min_tokens: int = 0
    boundary: str = "newline"
    every: int = 8
    mode: str = "forced"
    budget: int = 0
    cuts: list[int] | None = None
    stable_class: int | None = None  # the probe's confidence is P(this class) (answer stability), not its top one

    def validate(self, n_prompts: int) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"policy kind {self.kind!r} is unknown: use one of {', '.join(KINDS)}")
        if self.boundary not in BOUNDARIES:
            raise ValueError(f"boundary {self.boundary!r} is unknown: use one of {', '.join(BOUNDARIES)}")
        if self.mode not in ("forced", "probe"):
            raise ValueError(f"mode {self.mode!r} is unknown: use 'forced' or 'probe'")
        if self.consecutive < 1 or self.every < 1:
            raise ValueError(f"consecutive={self.consecutive}, every={self.every}: both must be >= 1")
        if self.kind == "cuts" and (self.cuts is None or len(self.cuts) != n_prompts):
            raise ValueError(f"policy kind 'cuts' needs one cut per prompt ({n_prompts}), got "
                             f"{None if self.cuts is None else len(self.cuts)}")


@dataclass
class ExitRow:
    """One prompt's run. `reasoning_ids`: the reasoning kept (the cut); `fed_ids`: every reasoning-phase token
    fed (the cut plus, at a newline exit or the model's own answer line, the tokens after it);
    `generated`: reasoning tokens decoded (the cost); `stop`: why reasoning ended."""

    prompt_ids: list[int]
    reasoning_ids: list[int]
    fed_ids: list[int]
    stop: str
    answer: str
    answer_probs: list[float]
    letter_mass: float | None = None
    probe_trace: torch.Tensor | None = None  # [len(fed_ids), n_letters]: the probe after each fed token
    acts: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> [len(fed_ids), D] (fp16)
    checks: int = 0

    @property
    def generated(self) -> int:
        return len(self.fed_ids)

    @property
    def cut(self) -> int:
        return len(self.reasoning_ids)


@dataclass
class ExitResult:
    rows: list[ExitRow]
    seconds: float
    probe_seconds: float
    n_forwards: int

    @property
    def probe_overhead(self) -> float:
        """Probe time (steps + policy checks) / decode time without it."""
        return self.probe_seconds / max(1e-9, self.seconds - self.probe_seconds)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def check_probe(model: nn.Module, probe: Any, letters: Sequence[str]) -> int:
    """Raise a clear error unless `probe` fits `model` (width, layer, letter classes); return its layer."""
    if probe.layer is None:
        raise ValueError("the probe has no layer recorded: train it with `probescope exit train` (it sets probe.layer)")
    width = d_model(model)
    if probe.d_model != width:
        raise ValueError(f"the probe expects activations of width {probe.d_model}, but this model's residual stream "
                         f"is {width} wide: use a probe trained on this model (probe.model_id={probe.model_id!r})")
    layer = check_layers(model, int(probe.layer))[0]
    if [str(c) for c in probe.classes] != list(letters):
        raise ValueError(f"the probe's classes {probe.classes} are not {list(letters)}: train it with `probescope exit "
                         "train` on a collect of the same kind (option letters; changes/stable for --answers free)")
    return layer


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
) -> ExitResult:
    """Greedy reasoning per prompt that ends when `policy` fires, then the forced answer (see module doc).

    `record_layers`: also keep the residual at these layers for every fed reasoning token (for `collect`).
    `on_token(row, token_id, probe_probs)`: called for each fed reasoning token (live display).
    `fmt`: the reasoning format (its cue and the model's own end, e.g. `</think>`); default: plain with `cue`.
    The prompts should end where reasoning starts (`prompts.exit_prompt` builds them for a format).
    `answers="free"`: free-form answers (`probescope.exit.free`): a row leaves when its reasoning stops, and its
    answer is then decoded after prompt + kept reasoning + cue (the probe: an answer-stability probe, whose
    P(stable) is the confidence). `answers=None`: free when the probe is a stability probe, else option letters.
    """
    policy = policy or ExitPolicy(kind="never")
    policy.validate(len(prompts))
    if policy.kind == "probe" and probe is None:
        raise ValueError("policy kind 'probe' needs a probe: pass probe=load_probe(...) or policy=ExitPolicy(kind='never')")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens}: must be >= 1")
    free = answers_kind(probe, answers) == "free"
    if free:
        policy = free_policy(policy)
    rec = check_layers(model, list(record_layers)) if record_layers else []
    p_layer = check_probe(model, probe, STABILITY_CLASSES if free else letters) if probe is not None else None
    fmt = get_format(fmt) if fmt is not None else get_format(None, answer_cue=cue)
    fmt = fmt.free_form() if free else fmt
    lid = [] if free else letter_token_ids(tokenizer, letters)
    fmt.check(tokenizer, () if free else letters)
    c_ids = cue_ids(tokenizer, fmt.cue)
    stop_ids = cue_ids(tokenizer, fmt.stop)
    at_boundary = boundary_test(tokenizer, policy.boundary if policy.kind == "probe" else "every")
    pad = pad_id(tokenizer, fallback=None)
    eos = tokenizer.eos_token_id
    dev = _device(model)
    if probe is not None:  # the probe reads activations where the model makes them (CPU or CUDA)
        probe = probe.to(dev)
    encoded = [encode_prefix(tokenizer, p)[0] for p in prompts]
    rows: list[ExitRow | None] = [None] * len(prompts)
    t_start = time.perf_counter()
    probe_s = 0.0
    n_fw = 0
    with progress(len(prompts), "reasoning", unit="problem", quiet=quiet) as bar:
        for s in range(0, len(prompts), batch_size):
            idx = list(range(s, min(s + batch_size, len(prompts))))
            res, ps, nf = _run_batch(model, [encoded[i] for i in idx], probe, p_layer, policy, rec, max_new_tokens,
                                     c_ids, len(stop_ids), at_boundary, lid, letters, pad, eos, dev,
                                     [policy.cuts[i] for i in idx] if policy.kind == "cuts" else None,
                                     on_token, s, free)
            for i, r in zip(idx, res):
                rows[i] = r
            probe_s += ps
            n_fw += nf
            bar.advance(len(idx))
        if free:  # each row's answer: decoded after prompt + kept reasoning + cue
            texts = forced_free_answers(model, tokenizer, [r.prompt_ids + r.reasoning_ids + c_ids for r in rows],
                                        batch_size=batch_size)
            for r, a in zip(rows, texts):
                r.answer = a
    return ExitResult([r for r in rows if r is not None], time.perf_counter() - t_start, probe_s, n_fw)


def _run_batch(model, enc, probe, p_layer, policy, rec, max_new, c_ids, n_stop, at_boundary, lid, letters, pad, eos, dev,
               cuts, on_token, offset, free=False):
    B = len(enc)
    ids, att = left_pad(enc, pad)
    pos = (att.cumsum(-1) - 1).clamp(min=0)
    ids, att, pos = ids.to(dev), att.to(dev), pos.to(dev)
    next_pos = att.sum(1)  # [B]: the position of each row's next token
    grabbed: dict[int, torch.Tensor] = {}

    def reader(layer: int):
        def fn(hidden: torch.Tensor) -> None:
            grabbed[layer] = hidden[:, -1]
        return fn

    layers = sorted(set(rec) | ({p_layer} if p_layer is not None else set()))
    alive = list(range(B))  # batch row -> original row, for the rows still in the cache
    phase = [REASON] * B
    fed: list[list[int]] = [[] for _ in range(B)]
    cut = [0] * B
    cue_ptr = [0] * B
    stop = [""] * B
    streak = [0] * B
    checks = [0] * B
    ans: list[tuple[str, list[float], float | None]] = [("", [], None)] * B
    traces: list[list[torch.Tensor]] = [[] for _ in range(B)]
    acts: list[dict[int, list[torch.Tensor]]] = [{L: [] for L in rec} for _ in range(B)]
    state = probe.init_state(B) if probe is not None else None
    last_probs: list[torch.Tensor | None] = [None] * B
    probe_s = 0.0
    n_fw = 0
    from transformers import DynamicCache

    cache = DynamicCache()
    with residual_hooks(model, {L: reader(L) for L in layers}) if layers else _null():
        out = model(input_ids=ids, attention_mask=att, position_ids=pos, past_key_values=cache, use_cache=True,
                    logits_to_keep=1)
        n_fw += 1
        logits = out.logits[:, -1].float()
        while alive:
            inputs = []
            for b, r in enumerate(alive):
                if phase[r] == REASON:
                    _decide(r, int(logits[b].argmax()), policy, probe, last_probs, fed, cut, cue_ptr, stop, streak,
                            checks, phase, ans, c_ids, n_stop, at_boundary, eos, max_new, cuts, letters)
                    if free and phase[r] == CUE:  # the answer is decoded after the loop
                        phase[r] = DONE
                if phase[r] == REASON:
                    inputs.append(int(logits[b].argmax()))
                elif phase[r] == CUE:
                    inputs.append(c_ids[cue_ptr[r]])
                    cue_ptr[r] += 1
                else:
                    inputs.append(pad)
            # rows decided by the probe's own prediction leave before the forward
            keep = [b for b, r in enumerate(alive) if phase[r] != DONE]
            if len(keep) < len(alive):
                alive, inputs = [alive[b] for b in keep], [inputs[b] for b in keep]
                if not alive:
                    break
                kt = torch.tensor(keep, dtype=torch.long, device=dev)
                cache.batch_select_indices(kt)
                att, next_pos = att[kt], next_pos[kt]
                if state is not None:
                    _select_state(state, kt)
            reasoning_rows = [b for b, r in enumerate(alive) if phase[r] == REASON]
            for b in reasoning_rows:
                fed[alive[b]].append(inputs[b])
            x = torch.tensor(inputs, device=dev).unsqueeze(1)
            att = torch.cat([att, torch.ones((len(alive), 1), dtype=att.dtype, device=dev)], 1)
            out = model(input_ids=x, attention_mask=att, position_ids=next_pos.unsqueeze(1), past_key_values=cache,
                        use_cache=True)
            n_fw += 1
            next_pos = next_pos + 1
            logits = out.logits[:, -1].float()
            if reasoning_rows:
                rr = torch.tensor(reasoning_rows, device=dev)
                for L in rec:
                    h = grabbed[L][rr].to(torch.float16).cpu()
                    for j, b in enumerate(reasoning_rows):
                        acts[alive[b]][L].append(h[j])
                if probe is not None:
                    t0 = time.perf_counter()
                    valid = torch.zeros(len(alive), dtype=torch.bool, device=dev)
                    valid[rr] = True
                    probs = class_probs(probe, probe.step(state, grabbed[p_layer].float(), valid)).cpu()
                    for b in reasoning_rows:
                        last_probs[alive[b]] = probs[b]
                        traces[alive[b]].append(probs[b])
                    probe_s += time.perf_counter() - t0
                if on_token is not None:
                    for b in reasoning_rows:
                        on_token(offset + alive[b], inputs[b], last_probs[alive[b]])
            done = []
            for b, r in enumerate(alive):
                if phase[r] == CUE and cue_ptr[r] == len(c_ids):
                    lg = logits[b]
                    p = lg[lid].softmax(-1)
                    mass = float(lg.log_softmax(-1)[lid].exp().sum())
                    ans[r] = (letters[int(p.argmax())], p.tolist(), mass)
                    phase[r] = DONE
                    done.append(b)
            if done:
                keep = [b for b in range(len(alive)) if b not in set(done)]
                alive = [alive[b] for b in keep]
                if not alive:
                    break
                kt = torch.tensor(keep, dtype=torch.long, device=dev)
                cache.batch_select_indices(kt)
                att, next_pos, logits = att[kt], next_pos[kt], logits[kt]
                if state is not None:
                    _select_state(state, kt)
    out_rows = []
    for r in range(B):
        out_rows.append(ExitRow(
            prompt_ids=list(enc[r]), reasoning_ids=fed[r][: cut[r]], fed_ids=fed[r], stop=stop[r], answer=ans[r][0],
            answer_probs=ans[r][1], letter_mass=ans[r][2],
            probe_trace=torch.stack(traces[r]) if traces[r] else None,
            acts={L: torch.stack(v) if v else torch.zeros(0, 0, dtype=torch.float16) for L, v in acts[r].items()},
            checks=checks[r]))
    return out_rows, probe_s, n_fw


def _decide(r, g, policy, probe, last_probs, fed, cut, cue_ptr, stop, streak, checks, phase, ans, c_ids, n_stop,
            at_boundary, eos, max_new, cuts, letters) -> None:
    """Row `r` is reasoning, has fed `fed[r]`, and the model proposes `g`: go on, or stop and start the cue.
    A boundary token that is also the cue's first token (the newline of `\nAnswer: (`) is reused as it: the cut
    is before it; any other boundary keeps its token and the whole cue follows."""
    t = len(fed[r])

    def start_cue(c: int, ptr: int, why: str) -> None:
        cut[r], cue_ptr[r], stop[r], phase[r] = c, ptr, why, CUE

    # 1. the policy, at boundaries (the state includes the last fed token)
    if policy.kind == "probe" and t > 0:
        last = fed[r][-1]
        hit = t % policy.every == 0 if policy.boundary == "every" else at_boundary(last)
        if hit:
            reuse = policy.boundary != "every" and last == c_ids[0]
            c = t - 1 if reuse else t
            p = last_probs[r]
            checks[r] += 1
            conf = None if p is None else float(p.max() if policy.stable_class is None else p[policy.stable_class])
            ok = conf is not None and conf >= policy.threshold and c >= policy.min_tokens
            streak[r] = streak[r] + 1 if ok else 0
            if streak[r] >= policy.consecutive:
                if policy.mode == "probe":
                    cut[r], stop[r], phase[r] = c, "exit", DONE
                    ans[r] = (letters[int(p.argmax())], p.tolist(), None)
                else:
                    start_cue(c, 1 if reuse else 0, "exit")
                return
    if policy.kind == "budget" and t >= policy.budget:
        return start_cue(t, 0, "budget")
    if policy.kind == "cuts" and t >= cuts[r]:
        return start_cue(t, 0, "cut")
    # 2. the model's own end: its answer line, EOS, or the token budget
    k = n_stop - 1
    if g == c_ids[k] and t >= k and fed[r][t - k:] == c_ids[:k]:
        return start_cue(t - k, k, "answer_line")
    if eos is not None and g == eos:
        return start_cue(t, 0, "eos")
    if t >= max_new:
        return start_cue(t, 0, "max_tokens")


def _select_state(state: Any, kt: torch.Tensor) -> None:
    for name in ("m", "z", "num", "pos"):
        setattr(state, name, getattr(state, name)[kt])


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *a):
        return False
