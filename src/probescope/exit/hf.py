"""Early exit inside HF `generate` (and `pipeline("text-generation")`): a LogitsProcessor that reads the probe
from the same forward pass and, once the policy fires, forces the answer in the model's own format.

    with EarlyExit(model, tokenizer, probe, ExitPolicy(kind="probe", threshold=tau)) as ee:
        out = model.generate(**inputs, logits_processor=[ee], do_sample=False, max_new_tokens=200)
    ee.rows[0].answer, ee.rows[0].stop, ee.rows[0].cut

Per step, for each row still reasoning it makes the same decision as `generate_with_exit` (the same `_decide`):
go on (the scores are left alone: greedy picks the model's token), or stop and teacher-force the cue
`\\nAnswer: (` one token per step, then the letter the forced answer (or, in `mode="probe"`, the probe) chose, `)`
and EOS. The probe's layer is read by a residual hook on the forward `generate` already runs (no second
forward); the reasoning, the cut and the answer are token-for-token those of probescope's own loop (tested).
Greedy decoding only: sampling would change the reasoning the probe was calibrated on. With a think format
(`fmt="qwen3"`, see `probescope.exit.formats`) the forced text is `</think>`, the answer cue, the letter, `)`, EOS.

Free-form answers (`answers="free"`, or a stability probe with classes changes/stable; see `probescope.exit.free`):
the exit fires when P(stable) >= τ, the cue is `\nAnswer:` (the format's, without the option bracket), and then
the model writes its answer greedily, up to the first newline after some text or `answer_tokens` tokens, then EOS.
`rows[i].answer` is that answer normalised: the forced free answer `generate_with_exit` gives (tested).
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any, Sequence

import torch
from torch import nn

from ..core.hooks import residual_hooks
from .answer import ANSWER_CUE, LETTERS, cue_ids, letter_token_ids
from .formats import ReasoningFormat, boundary_test, get_format
from .free import (MAX_ANSWER_TOKENS, STABILITY_CLASSES, answer_complete, answers_kind, class_probs, free_policy,
                   normalize_answer)
from .generate import CUE, DONE, REASON, ExitPolicy, ExitRow, _decide, check_probe

ANSWER = 3  # free-form answers: the model writes its answer after the cue

NEG = float("-inf")


class EarlyExit:
    """A `transformers` LogitsProcessor (callable on (input_ids, scores)) that ends reasoning early; see module doc.

    One instance serves one `generate` call (its rows are the batch). It holds a read hook on the model from
    construction until `close()` (or the end of a `with` block).
    """

    def __init__(self, model: nn.Module, tokenizer: Any, probe: Any = None, policy: ExitPolicy | None = None, *,
                 max_new_tokens: int = 200, letters: Sequence[str] = LETTERS, cue: str = ANSWER_CUE,
                 close_with: str = ")", fmt: ReasoningFormat | str | None = None, answers: str | None = None,
                 answer_tokens: int = MAX_ANSWER_TOKENS):
        self.policy = policy or ExitPolicy(kind="never")
        self.free = answers_kind(probe, answers) == "free"
        if self.free:
            self.policy = free_policy(self.policy)
        if answer_tokens < 1:
            raise ValueError(f"answer_tokens={answer_tokens}: must be >= 1")
        self.answer_tokens = answer_tokens
        if self.policy.kind == "probe" and probe is None:
            raise ValueError("policy kind 'probe' needs a probe: pass probe=load_probe(...)")
        if self.policy.kind == "cuts":
            raise ValueError("policy kind 'cuts' is for replay with generate_with_exit; use probe, budget or never")
        # the probe reads activations where the model makes them (CPU or CUDA)
        self.model, self.tok = model, tokenizer
        self.probe = probe.to(next(model.parameters()).device) if probe is not None else None
        self.letters = list(letters)
        self.max_new = max_new_tokens
        self.fmt = get_format(fmt) if fmt is not None else replace(get_format(None, answer_cue=cue), close_with=close_with)
        if self.free:
            self.fmt = self.fmt.free_form()
        self.lid = [] if self.free else letter_token_ids(tokenizer, self.letters)
        self.fmt.check(tokenizer, () if self.free else self.letters)
        self.c_ids = cue_ids(tokenizer, self.fmt.cue)
        self.n_stop = len(cue_ids(tokenizer, self.fmt.stop))
        self.at_boundary = boundary_test(tokenizer, self.policy.boundary if self.policy.kind == "probe" else "every")
        close = self.fmt.close_with
        self.tail = list(tokenizer(close, add_special_tokens=False)["input_ids"]) if close else []
        self.eos = tokenizer.eos_token_id
        if self.eos is None:
            raise ValueError("the tokenizer has no eos token: EarlyExit ends each row with EOS")
        self.p_layer = (check_probe(model, probe, STABILITY_CLASSES if self.free else self.letters)
                        if probe is not None else None)
        self._grab: dict[str, torch.Tensor] = {}
        self._hook = None
        if self.p_layer is not None:
            self._hook = residual_hooks(model, {self.p_layer: self._read})
            self._hook.__enter__()
        self._B: int | None = None
        self.probe_seconds = 0.0

    # ---- lifecycle -----------------------------------------------------------------------------------------
    def close(self) -> None:
        """Remove the read hook (idempotent)."""
        if self._hook is not None:
            self._hook.__exit__(None, None, None)
            self._hook = None

    def __enter__(self) -> "EarlyExit":
        return self

    def __exit__(self, *exc) -> bool:
        self.close()
        return False

    def _read(self, hidden: torch.Tensor) -> None:
        self._grab["h"] = hidden[:, -1]

    def _start(self, B: int, prompt_len: int) -> None:
        self._B, self._t0 = B, prompt_len
        self.phase = [REASON] * B
        self.fed: list[list[int]] = [[] for _ in range(B)]
        self.cut, self.cue_ptr, self.streak, self.checks = [0] * B, [0] * B, [0] * B, [0] * B
        self.stop = [""] * B
        self.ans: list[tuple[str, list[float], float | None]] = [("", [], None)] * B
        self.last_probs: list[torch.Tensor | None] = [None] * B
        self.traces: list[list[torch.Tensor]] = [[] for _ in range(B)]
        self.forced: list[list[int]] = [[] for _ in range(B)]  # tokens still to force after the letter is known
        self.answer_ids: list[list[int]] = [[] for _ in range(B)]  # free-form: the answer the model writes
        self.state = self.probe.init_state(B) if self.probe is not None else None
        self.prompt_ids = None

    # ---- the processor -------------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        B, T = input_ids.shape
        if self._B is None:
            self._start(B, T)
            self.prompt_ids = input_ids.tolist()
        elif B != self._B:
            raise ValueError("EarlyExit serves one generate call with a fixed batch: make a new one per call "
                             "(beam search and num_return_sequences > 1 are not supported)")
        first = T == self._t0
        last = input_ids[:, -1].tolist()
        if not first:  # the token fed in this forward was the last one of input_ids
            reasoning = [b for b in range(B) if self.phase[b] == REASON]
            for b in reasoning:
                self.fed[b].append(last[b])
            if self.probe is not None and reasoning:
                t0 = time.perf_counter()
                valid = torch.zeros(B, dtype=torch.bool, device=scores.device)
                valid[torch.tensor(reasoning, device=scores.device)] = True
                probs = class_probs(self.probe, self.probe.step(self.state, self._grab["h"].float(), valid)).cpu()
                for b in reasoning:
                    self.last_probs[b] = probs[b]
                    self.traces[b].append(probs[b])
                self.probe_seconds += time.perf_counter() - t0
            for b in range(B):
                if self.phase[b] == CUE:
                    self.cue_ptr[b] += 1
                elif self.phase[b] == ANSWER:
                    self.answer_ids[b].append(last[b])
                    if last[b] == self.eos or answer_complete(self.tok, self.answer_ids[b], self.answer_tokens):
                        self._free_done(b)
        out = scores.clone()
        for b in range(B):
            if self.phase[b] == REASON:
                g = int(scores[b].argmax())
                _decide(b, g, self.policy, self.probe, self.last_probs, self.fed, self.cut, self.cue_ptr, self.stop,
                        self.streak, self.checks, self.phase, self.ans, self.c_ids, self.n_stop, self.at_boundary, self.eos,
                        self.max_new, None, self.letters)
                if self.phase[b] == REASON:
                    continue
                if self.phase[b] == DONE:  # mode="probe": the probe's own answer, written in the model's format
                    self.phase[b] = CUE
                    self.cue_ptr[b] = self._cue_start(b)
                    self.forced[b] = [self.lid[self.letters.index(self.ans[b][0])], *self.tail, self.eos]
                else:
                    self.cue_ptr[b] = self._cue_resume(b)
            if self.phase[b] == CUE:
                if self.cue_ptr[b] < len(self.c_ids):
                    self._force(out, b, self.c_ids[self.cue_ptr[b]])
                    continue
                if self.free:  # the cue is complete: the model writes its answer (greedy: scores left alone)
                    self.phase[b] = ANSWER
                    continue
                if not self.forced[b]:  # the cue is complete: these logits are the forced answer
                    lg = scores[b].float()
                    p = lg[self.lid].softmax(-1)
                    mass = float(lg.log_softmax(-1)[self.lid].exp().sum())
                    self.ans[b] = (self.letters[int(p.argmax())], p.tolist(), mass)
                    self.forced[b] = [self.lid[int(p.argmax())], *self.tail, self.eos]
                self.phase[b] = DONE
            if self.phase[b] == DONE:
                tok = self.forced[b].pop(0) if self.forced[b] else self.eos
                self._force(out, b, tok)
        if all(p == DONE and not f for p, f in zip(self.phase, self.forced)):
            self.close()
        return out

    def _free_done(self, b: int) -> None:
        self.ans[b] = (normalize_answer(self.tok.decode(self.answer_ids[b], skip_special_tokens=True)), [], None)
        self.phase[b] = DONE
        self.forced[b] = [self.eos]

    def _cue_start(self, b: int) -> int:
        """Where the cue starts for a row the probe decided: `_decide` set the cut; tokens fed after it are
        already in the sequence (a newline boundary fed the cue's first token)."""
        extra = len(self.fed[b]) - self.cut[b]
        return extra if self.fed[b][self.cut[b]:] == self.c_ids[:extra] else 0

    def _cue_resume(self, b: int) -> int:
        """`_decide` set cue_ptr to the cue tokens already fed (newline boundary or the model's own answer line)."""
        return self.cue_ptr[b]

    @staticmethod
    def _force(scores: torch.Tensor, b: int, token: int) -> None:
        scores[b].fill_(NEG)
        scores[b, token] = 0.0

    @property
    def generate_budget(self) -> int:
        """`max_new_tokens` to give `generate`: the reasoning budget plus the cue, the letter, its close and EOS."""
        return self.max_new + len(self.c_ids) + (self.answer_tokens + 1 if self.free else 2 + len(self.tail))

    # ---- results -------------------------------------------------------------------------------------------
    @property
    def rows(self) -> list[ExitRow]:
        """One `ExitRow` per batch row, as `generate_with_exit` returns them."""
        if self._B is None:
            return []
        for b in range(self._B):  # free answers cut short by generate's budget: what was written so far
            if self.phase[b] == ANSWER:
                self._free_done(b)
        return [ExitRow(prompt_ids=[], reasoning_ids=self.fed[b][: self.cut[b]], fed_ids=self.fed[b],
                        stop=self.stop[b], answer=self.ans[b][0], answer_probs=self.ans[b][1],
                        letter_mass=self.ans[b][2],
                        probe_trace=torch.stack(self.traces[b]) if self.traces[b] else None, checks=self.checks[b])
                for b in range(self._B)]
