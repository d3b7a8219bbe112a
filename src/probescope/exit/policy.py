"""The exit rule: one `ExitPolicy` owns it, for live decoding and for offline replay over collected traces.

A policy says when a row stops reasoning and what it answers. `kind`:
* "probe": at each check (a boundary: a newline, a sentence end, or every N tokens), the probe's confidence
  (its top probability, or P(stable) for an answer-stability probe) is gated, `gate(conf, cut)` (-inf before
  `min_tokens`), and the rule fires at the first check where the last `consecutive` gated confidences are all
  >= `tau` (`effective`: their minimum);
* "never" (full reasoning), "budget" (cut after `budget` tokens), "cuts" (row i cut after `cuts[i]` tokens: the
  oracle, live).
The answer at an exit is the forced answer at the cut (`mode="forced"`) or the probe's own prediction
(`mode="probe"`); where the token budget runs out, `at_budget` says what the row answers (`probescope.exit.at_budget`:
"forced", the default, or "calibrated", "probe", "product"); `answers` is the answer kind, "mcq" (option letters) or "free" (free-form; None: from the
probe's classes).

Live decoding (`probescope.exit.engine`) asks `fires(gated)` at each check; offline, `first_exit(conf, cuts, taus)`
runs the same rule over a whole trace for many τ at once (calibration) and `replay(trace)` for this τ. Both go
through `gate` and `effective`, so the τ calibration chooses is the τ live decoding applies (tested: the replay of a
full run's trace exits where live decoding does).

τ has one name, `tau`, in the API, the CLI (`--tau`) and every file written (calibration.json, run config).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Sequence

import numpy as np

from .formats import BOUNDARIES

KINDS = ("probe", "never", "budget", "cuts")
MODES = ("forced", "probe")
ANSWER_KINDS = ("mcq", "free")


@dataclass
class Trace:
    """One problem's checks for one signal. `final`: full reasoning's answer; `full`: its length."""

    id: str
    split: str
    gold: str
    final: str
    full: int
    cuts: np.ndarray  # [K] reasoning tokens kept at each check
    conf: np.ndarray  # [K] the signal's confidence there
    answer: list[str]  # [K] the answer an exit there would give
    group: str = ""  # the problem's family group: "original", "held-out" (generated families) or "file" (--data)


@dataclass
class Outcome:
    """A method on a set of problems: tokens kept per problem and the answers."""

    cuts: np.ndarray
    full: np.ndarray
    answers: list[str]
    finals: list[str]
    golds: list[str]

    @property
    def n(self) -> int:
        return len(self.answers)

    @property
    def tokens_saved(self) -> float:
        return float(1 - self.cuts.sum() / max(1, self.full.sum()))

    @property
    def agreement(self) -> float:
        return float(np.mean([a == f for a, f in zip(self.answers, self.finals)])) if self.n else float("nan")

    @property
    def accuracy(self) -> float:
        return float(np.mean([a == g for a, g in zip(self.answers, self.golds)])) if self.n else float("nan")


@dataclass
class ExitPolicy:
    """When to stop reasoning and what to answer (see the module doc). `tau` has no default: a probe policy takes
    the τ its calibration chose (`probescope exit calibrate`; `calibrate.load_calibration`)."""

    kind: str = "probe"
    tau: float | None = None
    consecutive: int = 1
    min_tokens: int = 0
    boundary: str = "newline"
    every: int = 8
    mode: str = "forced"
    budget: int = 0
    cuts: list[int] | None = None
    stable_class: int | None = None  # the probe's confidence is P(this class) (answer stability), not its top one
    answers: str | None = None  # "mcq" | "free" | None (from the probe's classes)
    # the calibration's confidence range (calibration.json `confidence_range`, or (lo, hi)): live decoding warns once
    # when the median confidence at its checks leaves it (`probescope.exit.drift`); None: no drift check
    conf_range: Any = None
    at_budget: str = "forced"  # the answer where the token budget runs out (`probescope.exit.at_budget.AT_BUDGET`)

    @classmethod
    def from_calibration(cls, cal: dict, **kw: Any) -> "ExitPolicy":
        """The probe policy a calibration (`load_calibration`'s dict) describes: its τ, answer mode, consecutive
        checks, min_tokens and confidence range (the drift check); `kw` sets or replaces any field (e.g. the
        format's `boundary`)."""
        tau = cal["tau"]
        base = {"kind": "probe", "tau": math.inf if tau is None else float(tau), "mode": cal.get("mode", "probe"),
                "consecutive": int(cal.get("consecutive", 1)), "min_tokens": int(cal.get("min_tokens", 0)),
                "conf_range": cal.get("confidence_range"), "answers": cal.get("answers")}
        return cls(**{**base, **kw})

    def validate(self, n_prompts: int) -> None:
        """Raise a clear error for an unknown kind, boundary, mode or answer kind, or counts that make no sense."""
        if self.kind not in KINDS:
            raise ValueError(f"policy kind {self.kind!r} is unknown: use one of {', '.join(KINDS)}")
        if self.boundary not in BOUNDARIES:
            raise ValueError(f"boundary {self.boundary!r} is unknown: use one of {', '.join(BOUNDARIES)}")
        if self.mode not in MODES:
            raise ValueError(f"mode {self.mode!r} is unknown: use 'forced' or 'probe'")
        from .at_budget import check_rule

        check_rule(self.at_budget)
        if self.answers is not None and self.answers not in ANSWER_KINDS:
            raise ValueError(f"answers {self.answers!r} is unknown: use 'mcq' (option letters) or 'free' (free-form)")
        if self.consecutive < 1 or self.every < 1:
            raise ValueError(f"consecutive={self.consecutive}, every={self.every}: both must be >= 1")
        if self.tau is not None and math.isnan(self.tau):
            raise ValueError("tau=nan: give a number (math.inf never exits)")
        if self.conf_range is not None:
            from .drift import check_range

            check_range(self.conf_range)
        if self.kind == "cuts" and (self.cuts is None or len(self.cuts) != n_prompts):
            raise ValueError(f"policy kind 'cuts' needs one cut per prompt ({n_prompts}), got "
                             f"{None if self.cuts is None else len(self.cuts)}")

    def require_tau(self) -> None:
        """A probe policy needs τ: raise, naming where it comes from."""
        if self.kind == "probe" and self.tau is None:
            raise ValueError("policy kind 'probe' needs tau: the threshold its calibration chose "
                             "(`probescope exit calibrate --collect COLLECT --probe PROBE` writes it; "
                             "`probescope.exit.calibrate.load_calibration(probe_path, probe)['tau']` reads it), e.g. "
                             "ExitPolicy(kind='probe', tau=0.97)")

    def with_tau(self, tau: float) -> "ExitPolicy":
        return replace(self, tau=tau)

    @property
    def checks(self) -> bool:
        """Whether the policy looks at the probe at boundaries."""
        return self.kind == "probe"

    # ---- the rule: one implementation, live and offline -----------------------------------------------------
    def confidence(self, probs: Any) -> float | None:
        """The confidence a check reads from the probe's class probabilities (None before the probe has read)."""
        if probs is None:
            return None
        return float(probs.max() if self.stable_class is None else probs[self.stable_class])

    def gate(self, conf: Any, cut: Any) -> Any:
        """The confidence a check counts: -inf before `min_tokens` (or without a confidence); vectorised."""
        if conf is None:
            return -math.inf
        return np.where(np.asarray(cut) >= self.min_tokens, np.asarray(conf, dtype=float), -np.inf)

    def effective(self, gated: np.ndarray) -> np.ndarray:
        """At each check, the minimum of the last `consecutive` gated confidences (-inf with fewer checks): the rule
        fires at the first check whose value is >= τ."""
        g = np.asarray(gated, dtype=float)
        m = self.consecutive
        if m == 1 or len(g) == 0:
            return g
        out = np.full(len(g), -np.inf)
        if len(g) >= m:
            out[m - 1:] = np.lib.stride_tricks.sliding_window_view(g, m).min(-1)
        return out

    def fires(self, gated: Sequence[float]) -> bool:
        """Live: does the rule fire at the last of these checks (their gated confidences, oldest first)?"""
        if not len(gated):
            return False
        return bool(self.effective(np.asarray(gated[-self.consecutive:], dtype=float))[-1] >= self.tau)

    def first_exit(self, conf: np.ndarray, cuts: np.ndarray, taus: np.ndarray | None = None) -> np.ndarray:
        """Offline: for each τ in `taus` (default: this policy's), the index of the first check where the rule
        fires, len(conf) when it never does."""
        taus = np.array([self.tau], dtype=float) if taus is None else np.asarray(taus, dtype=float)
        if len(conf) == 0:
            return np.zeros(len(taus), dtype=int)
        runmax = np.maximum.accumulate(self.effective(self.gate(conf, cuts)))
        return np.searchsorted(runmax, taus, side="left")

    def replay(self, trace: Trace) -> tuple[int, int, str]:
        """Offline: (check index, cut, answer) where this policy exits on `trace`; (len(checks), full, final) when
        it never fires."""
        self.require_tau()
        k = int(self.first_exit(trace.conf, trace.cuts)[0])
        if k < len(trace.conf):
            return k, int(trace.cuts[k]), trace.answer[k]
        return k, int(trace.full), trace.final

    def replay_all(self, traces: Sequence[Trace]) -> Outcome:
        """This policy on every trace."""
        cuts, answers = [], []
        for t in traces:
            _, c, a = self.replay(t)
            cuts.append(c)
            answers.append(a)
        return Outcome(np.array(cuts, dtype=int), np.array([t.full for t in traces]), answers,
                       [t.final for t in traces], [t.gold for t in traces])
