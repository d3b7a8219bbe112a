"""The drift check: does live decoding see the probe confidences τ was calibrated on?

`exit calibrate` stores the range of the probe's confidence at the checks live decoding makes on the calibration
problems (each problem's checks up to where the policy exits at τ; the 5th to the 95th percentile, and the median):
`confidence_range`. A policy built from the calibration (`ExitPolicy.from_calibration`) carries it as `conf_range`,
and live decoding (`generate_with_exit`, `EarlyExit`, `exit run`) feeds every check's confidence to a `DriftWatch`.
Once at least `MIN_CHECKS` checks were made, when the median live confidence lies outside the calibration's range
(more than half of the checks beyond one end of it, where the calibration problems had 5%), it warns once, in
words (an `ExitDriftWarning`), with what to do: recalibrate on problems like yours. τ's guarantee holds for problems
like the calibration's; a probe whose confidences moved is reading problems (or a model) it was not calibrated on.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Sequence

import numpy as np

PERCENTILES = (5.0, 95.0)
MIN_CHECKS = 8  # live checks before the median is compared (a handful of checks says little)


class ExitDriftWarning(UserWarning):
    """Live probe confidences left the range τ was calibrated on (see `probescope.exit.drift`)."""


def confidence_range(confs: Sequence[np.ndarray]) -> dict[str, Any] | None:
    """The range of the confidences at the checks (one array per problem): the 5th and 95th percentiles (`lo`,
    `hi`), the median and the number of checks; None without a finite one."""
    vals = np.concatenate([np.asarray(c, dtype=float) for c in confs] + [np.zeros(0)])
    vals = vals[np.isfinite(vals)]
    if not len(vals):
        return None
    lo, hi = np.percentile(vals, PERCENTILES)
    return {"lo": round(float(lo), 6), "hi": round(float(hi), 6), "median": round(float(np.median(vals)), 6),
            "percentiles": list(PERCENTILES), "n_checks": int(len(vals))}


def check_range(rng: Any) -> tuple[float, float]:
    """(lo, hi) of a stored range (a dict with lo/hi, or a pair); raises naming the value when it is not one."""
    lo, hi = (rng.get("lo"), rng.get("hi")) if isinstance(rng, dict) else (tuple(rng) + (None, None))[:2]
    try:
        lo, hi = float(lo), float(hi)
    except (TypeError, ValueError):
        raise ValueError(f"conf_range={rng!r}: give (lo, hi), the calibration's confidence range (calibration.json's "
                         "confidence_range)") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
        raise ValueError(f"conf_range={rng!r}: lo and hi must be finite with lo <= hi")
    return lo, hi


class DriftWatch:
    """Live check confidences against the calibration's range; warns once (see the module doc)."""

    def __init__(self, rng: Any, min_checks: int = MIN_CHECKS):
        self.lo, self.hi = check_range(rng)
        self.min_checks = min_checks
        self.confs: list[float] = []
        self.message: str | None = None

    def add(self, conf: float | None) -> None:
        """One check's confidence; warns (once) when the live median leaves the range."""
        if conf is None or not math.isfinite(conf):
            return
        self.confs.append(float(conf))
        if self.message is None and len(self.confs) >= self.min_checks:
            self.message = self.verdict()
            if self.message is not None:
                warnings.warn(self.message, ExitDriftWarning, stacklevel=2)

    def verdict(self) -> str | None:
        """The warning's words when the median live confidence is outside [lo, hi], else None."""
        med = float(np.median(self.confs))
        if self.lo <= med <= self.hi:
            return None
        side, end = ("below", f"the 5th percentile {self.lo:.3f}") if med < self.lo else \
            ("above", f"the 95th percentile {self.hi:.3f}")
        share = np.mean([c < self.lo if med < self.lo else c > self.hi for c in self.confs])
        return (f"the probe's confidence has drifted from its calibration: the median at the {len(self.confs)} checks "
                f"so far, {med:.3f}, is {side} {end} of the checks τ was calibrated on ({share:.0%} of them lie "
                f"{side}, against 5% on the calibration problems), so τ's agreement guarantee may not hold for "
                "these problems. Recalibrate on problems like yours: `probescope exit collect --data YOUR_PROBLEMS "
                "--n-train 0` then `probescope exit calibrate --collect THAT_RUN --probe PROBE`")
