"""The exit decoder: one state object per row and one `step()`, shared by `generate_with_exit` (our own batched
loop), `EarlyExit` (the HF LogitsProcessor) and `exit run` (which calls `generate_with_exit`).

A loop owns the model and the batch; per row and per decode step it
* tells the decoder what the row fed (`feed`: the token, and the probe's class probabilities after it, read by
  `read_probe` from the probe layer's residual of the same forward pass), then
* asks `step(row, proposed)` what the row feeds next: the model's greedy token while it reasons, the next cue token
  once it stopped (the policy fired, its own `\\nAnswer:` line, EOS, the token budget, a budget or a given cut),
  or None when it has nothing more to feed (the cue is complete: `read_answer` reads the letter from these logits;
  or, in the own loop, the probe's own answer or a free-form row, whose answer is decoded after the loop).
With `write_answer=True` (the processor) an exit in `mode="probe"` also writes the cue, and the letter the probe
chose, `)` and EOS follow (`answer_tokens`), so the text ends in the model's own answer format.

Decisions at boundaries are the policy's (`ExitPolicy.fires`, the rule `ExitPolicy.replay` applies offline). A cut at
a newline boundary reuses the fed newline as the cue's first token, so the model sees prompt + reasoning[:cut] + cue.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import torch
from torch import nn

from ..core.hooks import check_layers, d_model
from .answer import ANSWER_CUE, LETTERS, cue_ids, letter_token_ids
from .drift import DriftWatch
from .formats import ReasoningFormat, boundary_test, get_format
from .free import STABILITY_CLASSES, answers_kind, class_probs, free_policy
from .policy import ExitPolicy

REASON, CUE, DONE, ANSWER = 0, 1, 2, 3  # ANSWER: the processor lets the model write a free-form answer


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
    probe_trace: torch.Tensor | None = None  # [len(fed_ids), n_classes]: the probe after each fed token
    acts: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> [len(fed_ids), D] (fp16)
    checks: int = 0

    @property
    def generated(self) -> int:
        return len(self.fed_ids)

    @property
    def cut(self) -> int:
        return len(self.reasoning_ids)


@dataclass
class RowState:
    """One row while it decodes: its phase, what it fed, its cut, the policy's checks, its answer."""

    limit: int | None = None  # policy kind "cuts": this row's cut
    phase: int = REASON
    fed: list[int] = field(default_factory=list)
    cut: int = 0
    cue_ptr: int = 0  # cue tokens fed (or about to be: step advances it as it hands one out)
    stop: str = ""
    checks: int = 0
    gated: list[float] = field(default_factory=list)  # the policy's gated confidence at each check
    answer: str = ""
    answer_probs: list[float] = field(default_factory=list)
    letter_mass: float | None = None
    last_probs: torch.Tensor | None = None
    trace: list[torch.Tensor] = field(default_factory=list)
    acts: dict[int, list[torch.Tensor]] = field(default_factory=dict)
    forced: list[int] = field(default_factory=list)  # processor: tokens still to write after the cue
    answer_ids: list[int] = field(default_factory=list)  # processor, free-form: the answer the model writes

    def result(self, prompt_ids: Sequence[int] = ()) -> ExitRow:
        return ExitRow(prompt_ids=list(prompt_ids), reasoning_ids=self.fed[: self.cut], fed_ids=self.fed,
                       stop=self.stop, answer=self.answer, answer_probs=self.answer_probs,
                       letter_mass=self.letter_mass, probe_trace=torch.stack(self.trace) if self.trace else None,
                       acts={L: torch.stack(v) if v else torch.zeros(0, 0, dtype=torch.float16)
                             for L, v in self.acts.items()},
                       checks=self.checks)


def check_probe(model: nn.Module, probe: Any, letters: Sequence[str], allow_other_model: bool = False) -> int:
    """Raise a clear error unless `probe` fits `model` (the model it was trained on, width, layer, classes); return
    its layer. `allow_other_model`: accept a probe recorded for another model id (the same model under another
    name: a local copy, a merged adapter), still checking the width."""
    if probe.layer is None:
        raise ValueError("the probe has no layer recorded: train it with `probescope exit train` (it sets probe.layer)")
    width = d_model(model)
    if probe.d_model != width:
        raise ValueError(f"the probe expects activations of width {probe.d_model}, but this model's residual stream "
                         f"is {width} wide: use a probe trained on this model (probe.model_id={probe.model_id!r})")
    if not allow_other_model and probe.model_id is not None:
        from ..core.models.registry import model_id

        mid = model_id(model)
        if mid != probe.model_id:
            raise ValueError(f"the probe was trained on model {probe.model_id!r}, not {mid!r}: use a probe trained on "
                             f"{mid!r} (`probescope exit collect --model {mid}` then `probescope exit train`), or pass "
                             "allow_other_model=True (CLI: --allow-other-model) if it is the same model under another "
                             "name")
    layer = check_layers(model, int(probe.layer))[0]
    if [str(c) for c in probe.classes] != list(letters):
        raise ValueError(f"the probe's classes {probe.classes} are not {list(letters)}: train it with `probescope exit "
                         "train` on a collect of the same kind (option letters; changes/stable for --answers free)")
    return layer


def resolve_answers(probe: Any, policy: ExitPolicy, answers: str | None) -> str:
    """The answer kind: `answers` or the policy's (they must agree when both are given), else from the probe."""
    if answers is not None and policy.answers is not None and answers != policy.answers:
        raise ValueError(f"the policy says answers={policy.answers!r} but answers={answers!r} was passed: give the "
                         "answer kind once (ExitPolicy(answers=...))")
    return answers_kind(probe, answers if answers is not None else policy.answers)


class ExitDecoder:
    """The per-row decisions of early exit for one model, tokenizer, probe and policy (see the module doc).

    Checks everything before any decoding: the policy, the probe against the model (its model, width, layer and
    classes), τ for a probe policy, the format's markers and cue against the tokenizer."""

    def __init__(self, model: nn.Module, tokenizer: Any, probe: Any = None, policy: ExitPolicy | None = None, *,
                 max_new_tokens: int = 200, letters: Sequence[str] = LETTERS, cue: str = ANSWER_CUE,
                 close_with: str | None = None, fmt: ReasoningFormat | str | None = None, answers: str | None = None,
                 n_prompts: int = 1, write_answer: bool = False, allow_other_model: bool = False):
        policy = policy or ExitPolicy(kind="never")
        self.free = resolve_answers(probe, policy, answers) == "free"
        policy.validate(n_prompts)
        if self.free:
            policy = free_policy(policy)
        policy = replace(policy, answers="free" if self.free else "mcq")
        if policy.kind == "probe" and probe is None:
            raise ValueError("policy kind 'probe' needs a probe: pass probe=load_probe(...) or "
                             "policy=ExitPolicy(kind='never')")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={max_new_tokens}: must be >= 1")
        self.letters = list(letters)
        # a question with fewer options than the probe's classes (three of A-D): the probe's belief is read over the
        # options that exist, renormalised, so it never believes in (or answers) an option the question lacks
        self.option_index = None
        want = STABILITY_CLASSES if self.free else self.letters
        if probe is not None and not self.free:
            pc = [str(c) for c in probe.classes]
            if self.letters != pc and len(set(self.letters)) == len(self.letters) and set(self.letters) < set(pc):
                self.option_index, want = [pc.index(L) for L in self.letters], pc
        self.layer = check_probe(model, probe, want, allow_other_model) if probe is not None else None
        policy.require_tau()
        self.policy = policy
        # the drift check: live check confidences against the calibration's range (warns once; None without one)
        self.drift = DriftWatch(policy.conf_range) if policy.checks and policy.conf_range is not None else None
        self.probe = probe.to(next(model.parameters()).device) if probe is not None else None  # where activations are
        fmt = get_format(fmt) if fmt is not None else get_format(None, answer_cue=cue)
        if close_with is not None:
            fmt = replace(fmt, close_with=close_with)
        self.fmt = fmt.free_form() if self.free else fmt
        self.letter_ids = [] if self.free else letter_token_ids(tokenizer, self.letters)
        self.prior = self._budget_prior(model, tokenizer, probe)
        self.fmt.check(tokenizer, () if self.free else self.letters)
        self.cue = cue_ids(tokenizer, self.fmt.cue)
        self.n_stop = len(cue_ids(tokenizer, self.fmt.stop))
        self.at_boundary = boundary_test(tokenizer, policy.boundary if policy.checks else "every")
        self.eos = tokenizer.eos_token_id
        close = self.fmt.close_with
        self.tail = list(tokenizer(close, add_special_tokens=False)["input_ids"]) if close else []
        self.max_new = max_new_tokens
        self.write_answer = write_answer
        self.probe_seconds = 0.0
        self.pstate: Any = None

    # ---- the probe, batched ----------------------------------------------------------------------------------
    def start_batch(self, n: int) -> None:
        """A fresh probe state for a batch of `n` rows."""
        self.pstate = self.probe.init_state(n) if self.probe is not None else None

    def select(self, keep: torch.Tensor) -> None:
        """Keep these batch rows of the probe state (the others left the batch)."""
        if self.pstate is not None:
            for name in ("m", "z", "num", "pos"):
                setattr(self.pstate, name, getattr(self.pstate, name)[keep])

    def read_probe(self, hidden: torch.Tensor | None, reasoning: Sequence[int], n: int) -> torch.Tensor | None:
        """Fold the probe layer's residual of the rows that fed a reasoning token (`reasoning`, of `n` batch rows)
        into the probe state; the class probabilities `[n, C]` (CPU) after it, or None without a probe."""
        if self.probe is None or not reasoning:
            return None
        t0 = time.perf_counter()
        valid = torch.zeros(n, dtype=torch.bool, device=hidden.device)
        valid[torch.tensor(list(reasoning), device=hidden.device)] = True
        probs = class_probs(self.probe, self.probe.step(self.pstate, hidden.float(), valid)).cpu()
        if self.option_index is not None:
            probs = probs[:, self.option_index]
            probs = probs / probs.sum(-1, keepdim=True).clamp_min(1e-30)
        self.probe_seconds += time.perf_counter() - t0
        return probs

    # ---- one row -------------------------------------------------------------------------------------------------
    def new_row(self, limit: int | None = None, record: Sequence[int] = ()) -> RowState:
        return RowState(limit=limit, acts={L: [] for L in record})

    def feed(self, row: RowState, token: int, probs: torch.Tensor | None = None) -> None:
        """The row fed reasoning token `token`; `probs`: the probe's class probabilities after it."""
        row.fed.append(token)
        if probs is not None:
            row.last_probs = probs
            row.trace.append(probs)

    def step(self, row: RowState, proposed: int) -> int | None:
        """The token `row` feeds next, given the model's greedy token `proposed`; None when it feeds no more (its
        cue is complete, or it left: the probe's own answer, a free-form row in the own loop)."""
        if row.phase == REASON:
            self._decide(row, proposed)
            if row.phase == REASON:
                return proposed
        if row.phase == CUE and row.cue_ptr < len(self.cue):
            row.cue_ptr += 1
            return self.cue[row.cue_ptr - 1]
        return None

    def cue_complete(self, row: RowState) -> bool:
        return row.phase == CUE and row.cue_ptr == len(self.cue)

    def read_answer(self, row: RowState, logits: torch.Tensor) -> None:
        """The forced answer from the logits after the complete cue: the top letter, its probabilities over the
        letters and the letters' share of the whole distribution; where the token budget ran out, the policy's
        at-budget rule's letter (`_at_budget`)."""
        lg = logits.float()
        p = lg[self.letter_ids].softmax(-1)
        row.answer, row.answer_probs = self.letters[int(p.argmax())], p.tolist()
        row.letter_mass = float(lg.log_softmax(-1)[self.letter_ids].exp().sum())
        if row.stop == "max_tokens" and self.policy.at_budget != "forced":
            self._at_budget(row)

    def _budget_prior(self, model: nn.Module, tokenizer: Any, probe: Any) -> torch.Tensor | None:
        """Check the policy's at-budget rule against what it needs; the letter prior for "calibrated" (else None)."""
        rule = self.policy.at_budget
        if rule == "forced":
            return None
        if self.free:
            raise ValueError(f"at_budget={rule!r} reads option letters, but these answers are free-form: use "
                             "at_budget='forced' (CLI: --at-budget forced)")
        if rule in ("probe", "product") and probe is None:
            raise ValueError(f"at_budget={rule!r} answers with the exit probe's belief where the budget runs out: pass "
                             "a probe, or use at_budget='forced' or 'calibrated'")
        if rule != "calibrated":
            return None
        from .answer import letter_prior

        return letter_prior(model, tokenizer, letters=self.letters)

    def _at_budget(self, row: RowState) -> None:
        """Where the token budget ran out, the answer the policy's at-budget rule gives (`exit.at_budget`): the row's
        forced letter probabilities become the rule's scores, normalised, and the answer their top letter."""
        from .at_budget import budget_scores

        s = budget_scores(self.policy.at_budget, row.answer_probs, row.last_probs, self.prior)
        s = (s / s.sum()).float()
        row.answer, row.answer_probs = self.letters[int(s.argmax())], s.tolist()

    def answer_tokens(self, row: RowState) -> list[int]:
        """What the processor writes after the cue: the letter, the format's close (e.g. `)`) and EOS."""
        return [self.letter_ids[self.letters.index(row.answer)], *self.tail, self.eos]

    def _decide(self, row: RowState, g: int) -> None:
        """Row is reasoning, has fed `row.fed`, and the model proposes `g`: go on, or stop and start the cue.
        A boundary token that is also the cue's first token (the newline of `\\nAnswer: (`) is reused as it: the
        cut is before it; any other boundary keeps its token and the whole cue follows."""
        pol, fed = self.policy, row.fed
        t = len(fed)
        # 1. the policy, at boundaries (the probe state includes the last fed token)
        if pol.checks and t > 0:
            last = fed[-1]
            if (t % pol.every == 0) if pol.boundary == "every" else self.at_boundary(last):
                reuse = pol.boundary != "every" and last == self.cue[0]
                c = t - 1 if reuse else t
                row.checks += 1
                conf = pol.confidence(row.last_probs)
                row.gated.append(float(pol.gate(conf, c)))
                if self.drift is not None:
                    self.drift.add(conf)
                if pol.fires(row.gated):
                    if pol.mode == "probe":  # the probe's own answer
                        p = row.last_probs
                        row.answer, row.answer_probs, row.letter_mass = self.letters[int(p.argmax())], p.tolist(), None
                        if not self.write_answer:
                            row.cut, row.stop, row.phase = c, "exit", DONE
                            return
                    return self._start_cue(row, c, 1 if reuse else 0, "exit")
        if pol.kind == "budget" and t >= pol.budget:
            return self._start_cue(row, t, 0, "budget")
        if pol.kind == "cuts" and t >= row.limit:
            return self._start_cue(row, t, 0, "cut")
        # 2. the model's own end: its answer line, EOS, or the token budget
        k = self.n_stop - 1
        if g == self.cue[k] and t >= k and fed[t - k:] == self.cue[:k]:
            return self._start_cue(row, t - k, k, "answer_line")
        if self.eos is not None and g == self.eos:
            return self._start_cue(row, t, 0, "eos")
        if t >= self.max_new:
            return self._start_cue(row, t, 0, "max_tokens")

    def _start_cue(self, row: RowState, cut: int, fed_of_cue: int, why: str) -> None:
        row.cut, row.cue_ptr, row.stop, row.phase = cut, fed_of_cue, why, CUE
        if self.free and not self.write_answer:  # the own loop decodes free answers after the loop
            row.phase = DONE
