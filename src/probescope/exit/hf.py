"""Early exit inside HF `generate` (and `pipeline("text-generation")`): a LogitsProcessor that reads the probe
from the same forward pass and, once the policy fires, forces the answer in the model's own format.

    with EarlyExit(model, tokenizer, probe, ExitPolicy(kind="probe", tau=tau)) as ee:
        out = model.generate(**inputs, logits_processor=[ee], do_sample=False, max_new_tokens=200)
    ee.rows[0].answer, ee.rows[0].stop, ee.rows[0].cut

Per step, for each row still reasoning it makes the same decision as `generate_with_exit` (the same exit decoder,
`probescope.exit.engine`: one state per row, one `step()`):
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

from typing import Any, Sequence

import torch
from torch import nn

from ..core.hooks import residual_hooks
from .answer import ANSWER_CUE, LETTERS
from .engine import ANSWER, CUE, DONE, REASON, ExitDecoder, ExitRow, RowState
from .formats import ReasoningFormat
from .free import MAX_ANSWER_TOKENS, answer_complete, normalize_answer
from .policy import ExitPolicy

NEG = float("-inf")


class EarlyExit:
    """A `transformers` LogitsProcessor (callable on (input_ids, scores)) that ends reasoning early; see module doc.

    One instance serves one `generate` call (its rows are the batch). It holds a read hook on the model from
    construction until `close()` (or the end of a `with` block).
    """

    def __init__(self, model: nn.Module, tokenizer: Any, probe: Any = None, policy: ExitPolicy | None = None, *,
                 max_new_tokens: int = 200, letters: Sequence[str] = LETTERS, cue: str = ANSWER_CUE,
                 close_with: str = ")", fmt: ReasoningFormat | str | None = None, answers: str | None = None,
                 answer_tokens: int = MAX_ANSWER_TOKENS, allow_other_model: bool = False):
        if policy is not None and policy.kind == "cuts":
            raise ValueError("policy kind 'cuts' is for replay with generate_with_exit; use probe, budget or never")
        self.dec = ExitDecoder(model, tokenizer, probe, policy, max_new_tokens=max_new_tokens, letters=letters, cue=cue,
                               close_with=close_with if fmt is None else None, fmt=fmt, answers=answers,
                               write_answer=True, allow_other_model=allow_other_model)
        if answer_tokens < 1:
            raise ValueError(f"answer_tokens={answer_tokens}: must be >= 1")
        if self.dec.eos is None:
            raise ValueError("the tokenizer has no eos token: EarlyExit ends each row with EOS")
        self.answer_tokens = answer_tokens
        self.model, self.tok = model, tokenizer
        self._grab: dict[str, torch.Tensor] = {}
        self._hook = None
        if self.dec.layer is not None:
            self._hook = residual_hooks(model, {self.dec.layer: self._read})
            self._hook.__enter__()
        self.states: list[RowState] | None = None

    @property
    def policy(self) -> ExitPolicy:
        return self.dec.policy

    @property
    def free(self) -> bool:
        return self.dec.free

    @property
    def probe_seconds(self) -> float:
        return self.dec.probe_seconds

    @property
    def drift(self) -> str | None:
        """The drift check's warning, in words, once live confidences left the calibration's range (a policy from
        `ExitPolicy.from_calibration`); None otherwise."""
        return self.dec.drift.message if self.dec.drift is not None else None

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

    # ---- the processor -------------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        B, T = input_ids.shape
        dec = self.dec
        if self.states is None:
            self.states, self._t0 = [dec.new_row() for _ in range(B)], T
            dec.start_batch(B)
        elif B != len(self.states):
            raise ValueError("EarlyExit serves one generate call with a fixed batch: make a new one per call "
                             "(beam search and num_return_sequences > 1 are not supported)")
        rows = self.states
        if T != self._t0:  # the token fed in this forward is the last one of input_ids
            last = input_ids[:, -1].tolist()
            reasoning = [b for b in range(B) if rows[b].phase == REASON]
            probs = dec.read_probe(self._grab.get("h"), reasoning, B)
            for b in reasoning:
                dec.feed(rows[b], last[b], None if probs is None else probs[b])
            for b in range(B):
                if rows[b].phase == ANSWER:
                    rows[b].answer_ids.append(last[b])
                    if last[b] == dec.eos or answer_complete(self.tok, rows[b].answer_ids, self.answer_tokens):
                        self._free_done(rows[b])
        out = scores.clone()
        for b, row in enumerate(rows):
            if row.phase in (REASON, CUE):
                tok = dec.step(row, int(scores[b].argmax()))
                if row.phase == REASON:  # greedy picks the model's own token: the scores are left alone
                    continue
                if tok is not None:  # the cue, one token per step
                    self._force(out, b, tok)
                    continue
                if dec.free:  # the cue is complete: the model writes its answer (greedy: scores left alone)
                    row.phase = ANSWER
                    continue
                if not row.answer:  # the cue is complete: these logits are the forced answer
                    dec.read_answer(row, scores[b])
                row.forced = dec.answer_tokens(row)  # the letter (forced, or the probe's), its close, EOS
                row.phase = DONE
            if row.phase == DONE:
                self._force(out, b, row.forced.pop(0) if row.forced else dec.eos)
        if all(r.phase == DONE and not r.forced for r in rows):
            self.close()
        return out

    def _free_done(self, row: RowState) -> None:
        row.answer = normalize_answer(self.tok.decode(row.answer_ids, skip_special_tokens=True))
        row.answer_probs, row.phase, row.forced = [], DONE, [self.dec.eos]

    @staticmethod
    def _force(scores: torch.Tensor, b: int, token: int) -> None:
        scores[b].fill_(NEG)
        scores[b, token] = 0.0

    @property
    def generate_budget(self) -> int:
        """`max_new_tokens` to give `generate`: the reasoning budget plus the cue, the letter, its close and EOS."""
        d = self.dec
        return d.max_new + len(d.cue) + (self.answer_tokens + 1 if d.free else 2 + len(d.tail))

    # ---- results -------------------------------------------------------------------------------------------
    @property
    def rows(self) -> list[ExitRow]:
        """One `ExitRow` per batch row, as `generate_with_exit` returns them."""
        if self.states is None:
            return []
        for row in self.states:  # free answers cut short by generate's budget: what was written so far
            if row.phase == ANSWER:
                self._free_done(row)
        return [row.result() for row in self.states]
