"""Offline simulation of exit policies on collected data, and the choice of the threshold τ.

Per problem, a `Trace` holds the checkpoints a live run would check (cut, confidence, answer at the cut) for
one signal: the probe (its top probability, from `predict_prefixes`, equal to the streaming `step` path) or the
forced answer (its top letter probability: DEER-style). A threshold policy exits at the first checkpoint whose
confidence is >= τ for `consecutive` checks in a row with cut >= `min_tokens`; else it reasons in full.

Choosing τ (never on the test split; `calibrate` refuses test rows). Loss ℓ_i(τ) = 1 if the answer at the exit
differs from full reasoning's answer. It is made monotone, ℓ̃_i(τ) = max_{τ' >= τ} ℓ_i(τ') (an upper bound,
non-increasing in τ; τ = ∞ never exits, loss 0). Rules, α = 1 − target agreement:
* "crc" (default), conformal risk control (Angelopoulos et al. 2022): the smallest τ with
  (Σ_i ℓ̃_i(τ) + 1) / (n + 1) <= α. If calibration and test problems are exchangeable, a new problem's
  expected disagreement E[ℓ(τ̂)] <= α. Needs n >= 1/α − 1 (99 problems for α = 0.01), else τ = ∞.
* "ucb": the smallest τ whose one-sided Clopper-Pearson (1 − δ) upper bound on the disagreement rate is
  <= α: with probability >= 1 − δ over the calibration draw, the test disagreement rate <= α.
  Needs n >= log(δ)/log(1 − α) (299 problems for α = 0.01, δ = 0.05).
* "empirical": the smallest τ with Σ ℓ̃_i(τ) / n <= α (no guarantee).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

RULES = ("crc", "ucb", "empirical")
MODES = ("probe", "forced")


def check_exit_options(rule: str, mode: str, target_agreement: float) -> None:
    """Raise a clear error for an unknown calibration rule or answer mode, or a target outside (0, 1]."""
    if rule not in RULES:
        raise ValueError(f"rule {rule!r} is unknown: use one of {', '.join(RULES)}")
    if mode not in MODES:
        raise ValueError(f"mode {mode!r} is unknown: use one of {', '.join(MODES)}")
    if not 0 < target_agreement <= 1:
        raise ValueError(f"target_agreement={target_agreement}: must be in (0, 1], e.g. 0.99")


@dataclass(kw_only=True)
class ExitRuleOptions:
    """The exit rule's options shared by `exit calibrate` and `exit eval` (keyword-only, checked on creation)."""

    target_agreement: float = field(default=0.99, metadata={
        "flag": "--target", "help": "agreement with full reasoning to keep (1 - budget)"})
    rule: str = field(default="crc", metadata={"help": "crc | ucb | empirical (see docs/early_exit.md)"})
    delta: float = field(default=0.05, metadata={"help": "failure probability of the ucb rule"})
    consecutive: int = field(default=1, metadata={"help": "checks in a row at or above τ before exiting"})
    min_tokens: int = field(default=0, metadata={"help": "reasoning tokens before the first exit"})
    mode: str = field(default="probe", metadata={"help": "answer at the exit: probe (its own prediction) | forced"})

    def __post_init__(self) -> None:
        check_exit_options(self.rule, self.mode, self.target_agreement)


@dataclass
class Trace:
    """One problem's checkpoints for one signal. `final`: full reasoning's answer; `full`: its length."""

    id: str
    split: str
    gold: str
    final: str
    full: int
    cuts: np.ndarray  # [K] reasoning tokens kept at each checkpoint
    conf: np.ndarray  # [K] the signal's top probability there
    answer: list[str]  # [K] the answer an exit there gives


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


def exit_index(conf: np.ndarray, cuts: np.ndarray, taus: np.ndarray, consecutive: int = 1, min_tokens: int = 0) -> np.ndarray:
    """For each τ in `taus`, the first checkpoint index where the policy fires (len(conf) when it never does)."""
    K = len(conf)
    if K == 0:
        return np.zeros(len(taus), dtype=int)
    c = np.where(cuts >= min_tokens, conf, -np.inf).astype(float)
    if consecutive > 1:  # a window of m checks in a row, all >= τ  <=>  their minimum >= τ
        eff = np.full(K, -np.inf)
        for k in range(consecutive - 1, K):
            eff[k] = c[k - consecutive + 1: k + 1].min()
        c = eff
    runmax = np.maximum.accumulate(c)
    return np.searchsorted(runmax, taus, side="left")


def simulate(traces: Sequence[Trace], tau: float, consecutive: int = 1, min_tokens: int = 0) -> Outcome:
    """The threshold policy at `tau` on every trace."""
    cuts, answers = [], []
    for t in traces:
        k = int(exit_index(t.conf, t.cuts, np.array([tau]), consecutive, min_tokens)[0])
        if k < len(t.conf):
            cuts.append(int(t.cuts[k]))
            answers.append(t.answer[k])
        else:
            cuts.append(t.full)
            answers.append(t.final)
    return Outcome(np.array(cuts), np.array([t.full for t in traces]), answers, [t.final for t in traces],
                   [t.gold for t in traces])


def loss_matrix(traces: Sequence[Trace], taus: np.ndarray, consecutive: int = 1, min_tokens: int = 0) -> np.ndarray:
    """ℓ[i, g] = 1 when problem i's exit at τ_g disagrees with its full reasoning."""
    out = np.zeros((len(traces), len(taus)))
    for i, t in enumerate(traces):
        k = exit_index(t.conf, t.cuts, taus, consecutive, min_tokens)
        wrong = np.array([a != t.final for a in t.answer] + [False])
        out[i] = wrong[np.minimum(k, len(t.conf))]
    return out


def clopper_pearson_upper(k: int, n: int, delta: float) -> float:
    """One-sided (1 − δ) upper confidence bound on a binomial rate with k successes out of n."""
    if n == 0:
        return 1.0
    if k >= n:
        return 1.0
    from scipy.stats import beta

    return float(beta.ppf(1 - delta, k + 1, n - k))


@dataclass
class Calibration:
    tau: float
    rule: str
    alpha: float
    delta: float
    n: int
    feasible: bool
    risk_bound: float
    val_agreement: float
    val_tokens_saved: float
    note: str = ""

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d["tau"] = None if math.isinf(self.tau) else self.tau
        return d


def calibrate(traces: Sequence[Trace], target_agreement: float = 0.99, rule: str = "crc", delta: float = 0.05,
              consecutive: int = 1, min_tokens: int = 0) -> Calibration:
    """The smallest τ meeting the agreement target under `rule` (see the module doc). Raises on test rows."""
    check_exit_options(rule, "probe", target_agreement)
    bad = sorted({t.split for t in traces if t.split == "test"})
    if bad:
        raise ValueError("calibration was given test-split problems: calibrate on the val split only "
                         "(the test split must never choose τ)")
    if not traces:
        raise ValueError("no calibration problems: collect a val split (--n-val)")
    alpha = 1 - target_agreement
    n = len(traces)
    taus = np.unique(np.concatenate([t.conf[np.isfinite(t.conf)] for t in traces] + [np.array([])]))
    taus = np.append(taus, np.inf)
    loss = loss_matrix(traces, taus, consecutive, min_tokens)
    mono = np.maximum.accumulate(loss[:, ::-1], axis=1)[:, ::-1]  # ℓ̃(τ_g) = max over g' >= g
    k = mono.sum(0)
    if rule == "crc":
        bound = (k + 1) / (n + 1)
    elif rule == "ucb":
        bound = np.array([clopper_pearson_upper(int(v), n, delta) for v in k])
    else:
        bound = k / n
    ok = bound <= alpha + 1e-12
    g = int(np.argmax(ok)) if ok.any() else len(taus) - 1
    feasible = bool(ok.any())
    tau = float(taus[g])
    note = ""
    if math.isinf(tau):
        need = {"crc": f"n >= {math.ceil(1 / alpha - 1)}" if alpha > 0 else "alpha > 0",
                "ucb": f"n >= {math.ceil(math.log(delta) / math.log(1 - alpha))}" if 0 < alpha < 1 else "alpha > 0",
                "empirical": "fewer disagreements"}[rule]
        note = f"no finite τ meets the target with {n} problems under rule {rule!r} ({need}): never exit"
    out = simulate(traces, tau, consecutive, min_tokens)
    return Calibration(tau, rule, alpha, delta, n, feasible and not math.isinf(tau), float(bound[g]), out.agreement,
                       out.tokens_saved, note)


@dataclass
class CalibrateConfig(ExitRuleOptions):
    """Pick τ on the val split (never the test split): the smallest τ meeting the agreement target."""

    collect: str = field(default="runs/exit-collect", metadata={"help": "an `exit collect` run folder"})
    probe: str = field(default="runs/exit-probe", metadata={"help": "an `exit train` run folder or probe file"})
    out: str = field(default="", metadata={"help": "JSON path (default: PROBE/calibration.json)"})

    @property
    def path(self) -> Path:
        """Where the calibration is written."""
        return Path(self.out) if self.out else Path(self.probe) / "calibration.json"


def run_calibrate(cfg: CalibrateConfig) -> dict:
    """τ for the probe of `cfg.probe` on the val split of `cfg.collect`, written to `cfg.path`; returns it."""
    from ..core.io import atomic_write_json
    from ..probes.base import load_probe
    from .collect import load_collected
    from .evaluate import probe_traces

    col = load_collected(cfg.collect)
    probe = load_probe(cfg.probe)
    cal = calibrate(probe_traces(col, col.split("val"), probe, cfg.mode), cfg.target_agreement, cfg.rule, cfg.delta,
                    cfg.consecutive, cfg.min_tokens)
    d = {**cal.to_dict(), "consecutive": cfg.consecutive, "min_tokens": cfg.min_tokens, "mode": cfg.mode}
    atomic_write_json(cfg.path, d)
    return d
