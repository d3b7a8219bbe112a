"""Values checked at the door: each config field declares what it accepts, and one function checks them all.

A field declares its valid values in its metadata (`core.options.option(..., gt=0)`):
`min` / `max` (inclusive), `gt` / `lt` (exclusive), `choices` (a collection), `finite=False` to allow NaN/inf,
`also` (sentinel values accepted outside the range, e.g. -1 for "the calibrated default"), `csv=True` for a string
field that holds comma-separated numbers (each one is checked), `nonempty` (a string or list that must not be empty;
the value is the hint shown, e.g. "pass --prompt 'The capital of France is'"), and `sep` (a string field holding
`sep`-separated names: `choices` and `nonempty` apply to each name).
Every float (and every float inside a list or tuple) must be finite unless the field says otherwise. Fields whose
name is in `NAMED` take that rule when they declare none: the shared names (learning rates, step counts, batch sizes,
thresholds) are declared once here instead of in every wing. `check_values(cfg)` walks a (nested) config dataclass
and raises one ValueError naming the option, the value and the valid range; the CLI runs it on every job's config
before anything is loaded or written.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterable, Mapping

RULE_KEYS = ("min", "max", "gt", "lt", "choices", "finite", "also", "csv", "nonempty", "sep")

# Rules shared by every config that has a field of this name (a field's own metadata wins).
NAMED: dict[str, dict[str, Any]] = {
    "lr": {"gt": 0}, "lora_lr": {"gt": 0}, "steer_lr": {"gt": 0},
    "steps": {"min": 1}, "lora_steps": {"min": 1},
    "batch_size": {"min": 1}, "lora_batch": {"min": 1},
    "lora_r": {"min": 1},
    "max_new_tokens": {"min": 1},
    "threads": {"min": 0},  # 0 (or None): leave torch's setting
    "tau": {"min": 0, "max": 1},
    "weight_decay": {"min": 0},
    "n_pairs": {"min": 1},
}


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def _rule(f: dataclasses.Field) -> dict[str, Any]:
    own = {k: f.metadata[k] for k in RULE_KEYS if k in f.metadata}
    return own if own else dict(NAMED.get(f.name, {}))


def _numbers(value: Any, csv: bool = False) -> Iterable[float | int]:
    if csv and isinstance(value, str):
        try:
            return [float(x) for x in value.split(",") if x.strip()]
        except ValueError:
            return []  # not numbers at all: the field's own parser says so
    if isinstance(value, bool):
        return []
    if isinstance(value, (int, float)):
        return [value]
    if isinstance(value, (list, tuple)):
        return [v for v in value if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return []


def _bounds(rule: Mapping[str, Any]) -> str:
    lo = f"> {rule['gt']}" if "gt" in rule else f"≥ {rule['min']}" if "min" in rule else ""
    hi = f"< {rule['lt']}" if "lt" in rule else f"≤ {rule['max']}" if "max" in rule else ""
    if "min" in rule and "max" in rule:
        return f"between {rule['min']} and {rule['max']}"
    return " and ".join(x for x in (lo, hi) if x)


def _empty(value: Any, sep: str | None = None) -> bool:
    """None, a blank string, a `sep`-separated string of blank names, or a list of only such values."""
    if value is None:
        return True
    if isinstance(value, str):
        return not any(x.strip() for x in (value.split(sep) if sep else [value]))
    if isinstance(value, (list, tuple)):
        return all(_empty(x, sep) for x in value)
    return False


def check_field(name: str, value: Any, rule: Mapping[str, Any], help: str = "") -> None:
    """Refuse `value` for option `name` if it breaks `rule`; the message names the option, the value and the range."""
    what = f" ({help})" if help else ""
    if rule.get("nonempty") and _empty(value, rule.get("sep")):
        hint = rule["nonempty"] if isinstance(rule["nonempty"], str) else f"give a value{what}"
        raise ValueError(f"{_option(name)} {value!r} is empty: {hint}")
    if value is None:
        return
    if "choices" in rule:
        items = ([x.strip() for x in value.split(rule["sep"]) if x.strip()] if rule.get("sep") and isinstance(value, str)
                 else list(value) if isinstance(value, (list, tuple)) else [value])
        bad = [x for x in items if x not in rule["choices"]]
        if bad:
            shown = f"{value!r}" if len(items) == 1 else f"{value!r} (the value {bad[0]!r})"
            raise ValueError(f"{_option(name)} {shown} is not one of {', '.join(map(str, rule['choices']))}{what}")
    for v in _numbers(value, bool(rule.get("csv"))):
        if v in rule.get("also", ()):
            continue
        if isinstance(v, float) and not math.isfinite(v) and rule.get("finite", True):
            raise ValueError(f"{_option(name)} {value!r}: {v} is not a finite number{what}; give a finite value")
        bad = (("gt" in rule and not v > rule["gt"]) or ("min" in rule and not v >= rule["min"])
               or ("lt" in rule and not v < rule["lt"]) or ("max" in rule and not v <= rule["max"]))
        if bad:
            shown = value if not isinstance(value, (list, tuple)) else f"{','.join(map(str, value))} (the value {v})"
            also = f" (or {', '.join(map(str, rule['also']))})" if rule.get("also") else ""
            raise ValueError(f"{_option(name)} {shown} is out of range: it must be {_bounds(rule)}{also}{what}")


def check_values(cfg: Any) -> None:
    """Check every field of the (nested) config dataclass `cfg` against what it declares; the first bad value raises."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name, None)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            check_values(value)
            continue
        check_field(f.name, value, _rule(f), f.metadata.get("help", ""))
