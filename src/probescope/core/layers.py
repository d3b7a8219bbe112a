"""Layer specs as users write them ('22-29', '-8--1', '3,5') turned into block indices, checked against the model:
an index outside -n..n-1 is refused by name, never wrapped."""

from __future__ import annotations

import re

SPEC_HELP = "write a range like 22-29 or -8--1, or a list like 3,5"


def spec_parts(spec: str) -> list[tuple[int, int | None]]:
    """'22-29,3' → [(22, 29), (3, None)]; a malformed spec is refused (no model needed)."""
    parts = [p.strip() for p in str(spec).split(",") if p.strip()]
    out = []
    for p in parts:
        m = re.fullmatch(r"(-?\d+)(?:-(-?\d+))?", p)
        if not m:
            raise ValueError(f"layers {spec!r}: {SPEC_HELP}")
        out.append((int(m.group(1)), None if m.group(2) is None else int(m.group(2))))
    if not out:
        raise ValueError(f"layers {spec!r}: no layer given; {SPEC_HELP}")
    return out


def layer_spec(spec: str, n: int) -> list[int]:
    """Block indices of `spec` on a model of `n` blocks (negative counts from the end); out of range is an error."""
    def index(i: int) -> int:
        if not -n <= i < n:
            raise ValueError(f"layers {spec!r}: layer {i} is out of range: this model has {n} layers (0..{n - 1}, "
                             f"or -{n}..-1 from the end)")
        return i % n

    out: list[int] = []
    for a, b in spec_parts(spec):
        lo, hi = index(a), index(a if b is None else b)
        if hi < lo:
            raise ValueError(f"layers {spec!r}: the range {a}-{b} runs backwards ({lo} to {hi}); {SPEC_HELP}")
        out += [i for i in range(lo, hi + 1) if i not in out]
    return out
