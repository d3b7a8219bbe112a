"""Offline simulation of exit policies on collected data, and the choice of the threshold τ.

Per problem, a `Trace` holds the checkpoints a live run would check (cut, confidence, answer at the cut) for
one signal: the probe (its top probability, from `predict_prefixes`, equal to the streaming `step` path) or the
forced answer (its top letter probability: DEER-style). The policy (`ExitPolicy`, `probescope.exit.policy`) exits at
the first checkpoint whose confidence is >= τ for `consecutive` checks in a row with cut >= `min_tokens`, else it
reasons in full: `simulate` and `calibrate` replay it with the same code live decoding runs.

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

The result is written beside the probe (`calibration_path`: PROBE/calibration.json, or NAME.calibration.json beside
NAME.probe.safetensors) with what binds it to the probe: the probe's fingerprint (`probe_fingerprint`), its model and
its answer kind. `load_calibration` reads it back and refuses a missing file, a file of another probe, model or
answer kind, each with the command that fixes it; `exit run` and the demo take τ only from there or from `--tau`.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..core.options import Checked, option
from .drift import confidence_range
from .policy import ExitPolicy, Outcome, Trace

RULES = ("crc", "ucb", "empirical")
MODES = ("probe", "forced")
__all__ = ["Calibration", "ExitRuleOptions", "CalibrateConfig", "Outcome", "Trace", "calibrate", "calibration_path",
           "exit_index", "load_calibration", "loss_matrix", "probe_fingerprint", "run_calibrate", "simulate"]


def check_exit_options(rule: str, mode: str, target_agreement: float) -> None:
    """Raise a clear error for an unknown calibration rule or answer mode, or a target outside (0, 1] (the rules of
    `ExitRuleOptions`' fields, for the API functions that take them as arguments)."""
    from ..core.checks import check_field

    rules = {f.name: f.metadata for f in fields(ExitRuleOptions)}
    for name, value in (("rule", rule), ("mode", mode), ("target_agreement", target_agreement)):
        check_field(name, value, rules[name], rules[name]["help"])


@dataclass(kw_only=True)
class ExitRuleOptions(Checked):
    """The exit rule's options shared by `exit calibrate` and `exit eval` (keyword-only, checked on creation), and
    whether a probe of another model id is accepted."""

    target_agreement: float = option(0.99, "agreement with full reasoning to keep (1 - budget)", flag="--target",
                                     gt=0, max=1)
    rule: str = option("crc", "crc | ucb | empirical (see docs/early_exit.md)", choices=RULES)
    delta: float = option(0.05, "failure probability of the ucb rule", gt=0, lt=1)
    consecutive: int = option(1, "checks in a row at or above τ before exiting", min=1)
    min_tokens: int = option(0, "reasoning tokens before the first exit", min=0)
    mode: str = option("probe", "answer at the exit: probe (its own prediction) | forced", choices=MODES)
    allow_other_model: bool = option(False, "accept a probe recorded for another model than the collect's (the same "
                                            "model under another name)")


def exit_index(conf: np.ndarray, cuts: np.ndarray, taus: np.ndarray, consecutive: int = 1, min_tokens: int = 0) -> np.ndarray:
    """For each τ in `taus`, the first checkpoint index where the policy fires (len(conf) when it never does)."""
    return ExitPolicy(consecutive=consecutive, min_tokens=min_tokens).first_exit(conf, cuts, taus)


def simulate(traces: Sequence[Trace], tau: float, consecutive: int = 1, min_tokens: int = 0) -> Outcome:
    """The threshold policy at `tau` on every trace (`ExitPolicy.replay_all`)."""
    return ExitPolicy(tau=tau, consecutive=consecutive, min_tokens=min_tokens).replay_all(traces)


def loss_matrix(traces: Sequence[Trace], taus: np.ndarray, consecutive: int = 1, min_tokens: int = 0) -> np.ndarray:
    """ℓ[i, g] = 1 when problem i's exit at τ_g disagrees with its full reasoning."""
    policy = ExitPolicy(consecutive=consecutive, min_tokens=min_tokens)
    out = np.zeros((len(traces), len(taus)))
    for i, t in enumerate(traces):
        k = policy.first_exit(t.conf, t.cuts, taus)
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
    """τ and how it was chosen; `groups`: per family group (original / held-out / file) the agreement at τ and its
    guarantee; `mix`: the val problems per group (`mix_text` says it); `confidence_range`: the drift check's range."""

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
    mix: dict = field(default_factory=dict)
    mix_text: str = ""
    groups: dict = field(default_factory=dict)
    confidence_range: dict | None = None

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d["tau"] = None if math.isinf(self.tau) else self.tau
        return d


# family groups in the order they are reported, and how a sentence names a problem of one
GROUP_ORDER = ("original", "held-out", "file", "unlabelled")
GROUP_WORDS = {"original": "original-family", "held-out": "held-out-family", "file": "from the --data file",
               "unlabelled": "unlabelled"}
GROUP_PROBLEM = {"original": "original-family problem", "held-out": "held-out-family problem",
                 "file": "problem like the --data file's", "unlabelled": "problem like these"}


def risk_bounds(k: Any, n: int, rule: str, delta: float) -> np.ndarray:
    """The rule's bound on the disagreement rate from `k` (monotone) disagreements among `n` problems, per τ."""
    k = np.atleast_1d(np.asarray(k, dtype=float))
    if rule == "crc":
        return (k + 1) / (n + 1)
    if rule == "ucb":
        return np.array([clopper_pearson_upper(int(v), n, delta) for v in k])
    return k / max(1, n)


def problems_needed(rule: str, alpha: float, delta: float) -> int | None:
    """The fewest problems with which `rule` can certify α (no disagreement at all); None: it never can."""
    if alpha <= 0:
        return None
    if rule == "crc":
        return math.ceil(1 / alpha - 1 - 1e-9)
    if rule == "ucb":
        return math.ceil(math.log(delta) / math.log(1 - alpha)) if alpha < 1 else 1
    return 1


def _need_text(rule: str, alpha: float, delta: float) -> str:
    need = problems_needed(rule, alpha, delta)
    return {"empirical": "fewer disagreements"}.get(rule, "alpha > 0" if need is None else f"n >= {need}")


def group_report(traces: Sequence[Trace], taus: np.ndarray, mono: np.ndarray, g: int, rule: str, alpha: float,
                 delta: float, policy: ExitPolicy) -> dict[str, dict]:
    """Per family group of the traces: its problems, the agreement and tokens saved at τ = taus[g], the rule's bound
    within the group at that τ, the group's own τ (the smallest its problems alone certify) and, in words, what is
    guaranteed for a new problem of the group."""
    names = [t.group or "unlabelled" for t in traces]
    out = {}
    for name in sorted(set(names), key=lambda x: GROUP_ORDER.index(x) if x in GROUP_ORDER else len(GROUP_ORDER)):
        idx = [i for i, x in enumerate(names) if x == name]
        n_g = len(idx)
        bounds = risk_bounds(mono[idx].sum(0), n_g, rule, delta)
        ok = bounds <= alpha + 1e-12
        own = float(taus[int(np.argmax(ok))]) if ok.any() else math.inf
        bound = float(bounds[g])
        o = policy.replay_all([traces[i] for i in idx])
        certified = rule != "empirical" and bound <= alpha + 1e-12
        word = GROUP_PROBLEM.get(name, f"{name} problem")
        own_s = "∞ (never exits)" if math.isinf(own) else f"{own:.4g}"
        if rule == "empirical":
            said = (f"no guarantee (rule 'empirical'): {o.agreement:.3f} agreement on these {n_g} problems; use --rule "
                    "crc for one")
        elif certified:
            said = ((f"expected disagreement ≤ {alpha:.3g} on a new {word} (conformal risk control: τ is at or "
                     f"above the τ its {n_g} problems certify alone, {own_s})") if rule == "crc" else
                    (f"disagreement rate ≤ {alpha:.3g} on the group with probability ≥ {1 - delta:.3g} over the "
                     f"calibration draw (τ is at or above the τ its {n_g} problems certify alone, {own_s})"))
        else:
            need = problems_needed(rule, alpha, delta)
            k_g = int(mono[idx, g].sum())
            why = (f"{n_g} problems are too few: rule {rule!r} certifies α = {alpha:.3g} from {need}"
                   if need is not None and n_g < need else
                   f"{k_g} disagreement{'s' if k_g != 1 else ''} among its {n_g} problems at this τ; the group alone "
                   f"certifies α from τ ≥ {own_s}")
            said = (f"not certified for {'an' if word[0] in 'aeiou' else 'a'} {word} at this τ (the bound within the "
                    f"group is {bound:.4f}): {why}")
        out[name] = {"n": n_g, "agreement": round(o.agreement, 4), "tokens_saved": round(o.tokens_saved, 4),
                     "disagreements": int(sum(a != f for a, f in zip(o.answers, o.finals))),
                     "risk_bound": round(bound, 6), "certified": certified,
                     "own_tau": None if math.isinf(own) else own, "guarantee": said}
    return out


def mix_sentence(mix: dict[str, int]) -> str:
    """The calibration problems per family group, in words (and what is missing for a guarantee that travels)."""
    n = sum(mix.values())
    parts = " + ".join(f"{v} {GROUP_WORDS.get(k, k)}" for k, v in mix.items())
    text = f"{n} val problems" + (f": {parts}" if mix and set(mix) != {"unlabelled"} else "")
    if "original" in mix and "held-out" not in mix:
        text += (" (no held-out-family problems: the guarantee covers the original families only; `probescope exit "
                 "collect --n-val-held-out N` adds them)")
    return text


def calibrate(traces: Sequence[Trace], target_agreement: float = 0.99, rule: str = "crc", delta: float = 0.05,
              consecutive: int = 1, min_tokens: int = 0) -> Calibration:
    """The smallest τ meeting the agreement target under `rule` (see the module doc) on all the traces together;
    per family group (`Trace.group`) the agreement and guarantee at that τ, and the range of the confidences live
    decoding checks (up to each problem's exit at τ) for the drift check. Raises on test rows."""
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
    bound = risk_bounds(mono.sum(0), n, rule, delta)
    ok = bound <= alpha + 1e-12
    g = int(np.argmax(ok)) if ok.any() else len(taus) - 1
    feasible = bool(ok.any())
    tau = float(taus[g])
    note = ""
    if math.isinf(tau):
        note = (f"no finite τ meets the target with {n} problems under rule {rule!r} ({_need_text(rule, alpha, delta)}): "
                "never exit")
    policy = ExitPolicy(tau=tau, consecutive=consecutive, min_tokens=min_tokens)
    out = policy.replay_all(traces)
    mix: dict[str, int] = {}
    for t in traces:
        mix[t.group or "unlabelled"] = mix.get(t.group or "unlabelled", 0) + 1
    mix = {k: mix[k] for k in sorted(mix, key=lambda x: GROUP_ORDER.index(x) if x in GROUP_ORDER else 99)}
    groups = group_report(traces, taus, mono, g, rule, alpha, delta, policy) if set(mix) != {"unlabelled"} else {}
    seen = [t.conf[: int(policy.first_exit(t.conf, t.cuts)[0]) + 1] for t in traces]  # the checks live decoding makes
    return Calibration(tau, rule, alpha, delta, n, feasible and not math.isinf(tau), float(bound[g]), out.agreement,
                       out.tokens_saved, note, mix, mix_sentence(mix), groups, confidence_range(seen))


@dataclass
class CalibrateConfig(ExitRuleOptions):
    """Pick τ on the val split (never the test split): the smallest τ meeting the agreement target."""

    collect: str = option("runs/exit-collect", "an `exit collect` run folder")
    probe: str = option("runs/exit-probe", "an `exit train` run folder or probe file")
    out: str = option("", "JSON path (default: PROBE/calibration.json)")

    @property
    def path(self) -> Path:
        """Where the calibration is written."""
        return Path(self.out) if self.out else calibration_path(self.probe)


def run_calibrate(cfg: CalibrateConfig) -> dict:
    """τ for the probe of `cfg.probe` on the val split of `cfg.collect`, written to `cfg.path`; returns it."""
    from ..core.io import atomic_write_json
    from ..probes.base import load_probe
    from .collect import check_probe_fits, is_free, load_collected
    from .evaluate import probe_traces

    if cfg.path.is_dir():  # refused before anything is computed or written (a temp file would go beside it)
        import errno

        raise IsADirectoryError(errno.EISDIR, "the calibration is a file, but this path is a folder", str(cfg.path))
    col = load_collected(cfg.collect)
    probe = load_probe(cfg.probe)
    check_probe_fits(col, probe, allow_other_model=cfg.allow_other_model)
    cal = calibrate(probe_traces(col, col.split("val"), probe, cfg.mode), cfg.target_agreement, cfg.rule, cfg.delta,
                    cfg.consecutive, cfg.min_tokens)
    d = {**cal.to_dict(), "consecutive": cfg.consecutive, "min_tokens": cfg.min_tokens,
         "mode": "forced" if is_free(col) else cfg.mode, **calibration_binding(probe, "free" if is_free(col) else "mcq"),
         "collect": str(cfg.collect)}
    atomic_write_json(cfg.path, d)
    return d


def probe_fingerprint(probe: Any) -> str:
    """sha256 of the probe's weights (names, shapes, dtypes, values) and its layer and classes: the same after a
    save and load, different for a retrained probe."""
    h = hashlib.sha256()
    h.update(json.dumps({"layer": probe.layer, "classes": [str(c) for c in probe.classes]}).encode())
    for name, t in sorted(probe.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def calibration_binding(probe: Any, answers: str) -> dict:
    """What a calibration file records about the probe it was made for."""
    return {"probe_sha256": probe_fingerprint(probe), "model_id": probe.model_id, "answers": answers,
            "classes": [str(c) for c in probe.classes]}


def calibration_path(probe_path: str | Path) -> Path:
    """The calibration JSON of a probe: a folder's calibration.json, or NAME.calibration.json beside
    NAME.probe.safetensors (the shipped probes)."""
    path = Path(probe_path)
    if path.is_dir() or not path.suffix or path.name in ("probe.safetensors", "probe.json"):
        return (path if path.is_dir() or not path.suffix else path.parent) / "calibration.json"
    return path.parent / path.name.replace(".probe.safetensors", ".calibration.json").replace(".safetensors",
                                                                                              ".calibration.json")


def load_calibration(probe_path: str | Path, probe: Any, answers: str | None = None) -> dict:
    """The calibration of the probe at `probe_path` (loaded as `probe`), checked against it; `tau` as a float
    (math.inf when calibration found no τ: never exit). `answers`: the answer kind the caller will run ("mcq" or
    "free"; default: from the probe's classes). Files that predate these checks (no fingerprint) are read as they
    are; a file that says `threshold` instead of `tau` is read too."""
    from ..core.io import read_json
    from .free import answers_kind

    path = calibration_path(probe_path)
    fix = f"`probescope exit calibrate --collect COLLECT --probe {probe_path}` (COLLECT: an `exit collect` run of the " \
          "probe's model)"
    if not path.exists():
        raise ValueError(f"{path} does not exist: the probe {str(probe_path)!r} has no calibration. Write it with "
                         f"{fix}, or give a threshold yourself with --tau (API: ExitPolicy(tau=...))")
    d = dict(read_json(path))
    if "tau" not in d and "threshold" in d:
        d["tau"] = d.pop("threshold")
    if "tau" not in d:
        raise ValueError(f"{path} has no tau: it is not a calibration file; write one with {fix}")
    d["tau"] = math.inf if d["tau"] is None else float(d["tau"])
    sha = d.get("probe_sha256")
    if sha is not None and sha != probe_fingerprint(probe):
        raise ValueError(f"{path} was made for another probe (its fingerprint differs from {str(probe_path)!r}: "
                         f"retrained since?): recalibrate with {fix}")
    if d.get("model_id") is not None and probe.model_id is not None and d["model_id"] != probe.model_id:
        raise ValueError(f"{path} was made for a probe of model {d['model_id']!r}, but the probe {str(probe_path)!r} "
                         f"is of {probe.model_id!r}: recalibrate with {fix}")
    kind = answers or answers_kind(probe)
    names = {"mcq": "option letters", "free": "free-form answers"}
    saved = d.get("answers") or ("free" if d.get("classes") == ["changes", "stable"] else None)
    if saved is not None and saved != kind:
        raise ValueError(f"{path} calibrates {names.get(saved, saved)}, but this run reads {names[kind]}: use the "
                         f"calibration of a {'answer-stability' if kind == 'free' else 'letter'} probe, or recalibrate "
                         f"with {fix}")
    d.setdefault("answers", kind)
    return d
