"""Which weight matrices an edit touches: MLP linear layers named by block, or any linear module by path.

Names (L a block index; negative counts from the end):

| name | module | site it reads / writes |
| --- | --- | --- |
| `mlp.L.up_proj` (alias `up`) | the MLP's up projection (gpt2: `c_fc`) | reads `mlp_in.L` |
| `mlp.L.gate_proj` (alias `gate`) | the MLP's gate projection (llama, gemma) | reads `mlp_in.L` |
| `mlp.L.down_proj` (alias `down`) | the MLP's down projection (gpt2: `mlp.c_proj`) | writes `mlp_out.L` |
| a module path, e.g. `model.layers.3.mlp.down_proj` | any `nn.Linear` (or gpt2 `Conv1D`) | — |

Every saved artefact (factors, edits) records the canonical name, the module path and the site of each
matrix, so it can be checked against the model it is applied to. A weight is always seen as [d_out, d_in]
(gpt2's Conv1D stores [in, out]: it is transposed on read and write).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from ..core.sites import n_layers, site_module, unwrap

ALIASES = {
    "up": ("up_proj", "c_fc", "fc1", "dense_h_to_4h", "fc_in"),
    "gate": ("gate_proj",),
    "down": ("down_proj", "c_proj", "fc2", "dense_4h_to_h", "fc_out"),
}
INPUT_SIDE = {"up_proj", "gate_proj", "c_fc", "fc1", "dense_h_to_4h", "fc_in"}
_MLP_NAME = re.compile(r"^mlp\.(-?\d+)\.([A-Za-z_][A-Za-z0-9_]*)$")


@dataclass
class Target:
    """One weight matrix: canonical `name`, `path` from the model root, the `site` it reads/writes ('' if none)."""

    name: str
    path: str
    site: str
    module: nn.Module
    transposed: bool = False  # gpt2 Conv1D: weight stored [in, out]

    @property
    def weight(self) -> torch.Tensor:
        """The weight as [d_out, d_in] (a view of the parameter)."""
        w = self.module.weight
        return w.T if self.transposed else w

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.weight.shape)  # type: ignore[return-value]

    def set_weight(self, new: torch.Tensor) -> None:
        """Copy `new` ([d_out, d_in]) into the parameter in place."""
        with torch.no_grad():
            self.weight.copy_(new.to(self.module.weight.dtype))

    def record(self) -> dict:
        return {"name": self.name, "path": self.path, "site": self.site, "shape": list(self.shape)}


def _is_linear(m: nn.Module) -> tuple[bool, bool]:
    """(is a linear layer, stores the weight transposed)."""
    if isinstance(m, nn.Linear):
        return True, False
    if type(m).__name__ == "Conv1D" and hasattr(m, "weight") and getattr(m.weight, "dim", lambda: 0)() == 2:
        return True, True
    return False, False


def _path_of(model: nn.Module, module: nn.Module) -> str:
    for name, m in unwrap(model).named_modules():
        if m is module:
            return name
    raise ValueError(f"module {type(module).__name__} is not part of the model")


def resolve_target(model: nn.Module, spec: str) -> Target:
    """`mlp.L.down_proj` / `mlp.L.down` or a module path → a Target (or a ValueError naming the fix)."""
    spec = str(spec).strip()
    m = _MLP_NAME.match(spec)
    if m:
        n = n_layers(model)
        layer = int(m.group(1))
        if not -n <= layer < n:
            raise ValueError(f"matrix {spec!r}: layer {layer} is out of range: this model has {n} layers (0..{n - 1})")
        layer %= n
        mlp = site_module(model, f"mlp_in.{layer}")
        kids = dict(mlp.named_children())
        want = m.group(2)
        names = [want] if want in kids else [c for c in ALIASES.get(want, ()) if c in kids]
        if want == "down" and "c_proj" in kids:
            names = ["c_proj"]
        if not names:
            raise ValueError(f"matrix {spec!r}: the MLP of block {layer} has no {want!r} (its children: "
                             f"{', '.join(kids)}); use one of up, gate, down or a child name")
        child = names[0]
        module = kids[child]
        ok, transposed = _is_linear(module)
        if not ok:
            raise TypeError(f"matrix {spec!r} is {type(module).__name__}, not a linear layer: K-FAC edits "
                            "apply to nn.Linear (or gpt2 Conv1D) weights; pick up, gate or down")
        side = "mlp_in" if child in INPUT_SIDE else "mlp_out"
        return Target(f"mlp.{layer}.{child}", _path_of(model, module), f"{side}.{layer}", module, transposed)
    modules = dict(unwrap(model).named_modules())
    if spec not in modules:
        raise ValueError(f"matrix {spec!r} is not understood: write mlp.L.up|gate|down (e.g. mlp.3.down) or a "
                         f"module path of the model (e.g. {next((k for k in modules if k.endswith('proj')), 'lm_head')})")
    module = modules[spec]
    ok, transposed = _is_linear(module)
    if not ok:
        raise TypeError(f"module {spec!r} is {type(module).__name__}, not a linear layer: K-FAC edits apply to "
                        "nn.Linear (or gpt2 Conv1D) weights")
    return Target(spec, spec, "", module, transposed)


def resolve_targets(model: nn.Module, specs: "str | Sequence[str]") -> list[Target]:
    """Several targets from a comma-separated string or a list; duplicates refused."""
    if isinstance(specs, str):
        specs = [s for s in specs.split(",") if s.strip()]
    specs = list(specs)
    if not specs:
        raise ValueError("no matrices requested: pass e.g. mlp.3.down or mlp_matrices(model, layers=[3])")
    out = [resolve_target(model, s) for s in specs]
    names = [t.name for t in out]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ValueError(f"matrix {sorted(dup)[0]!r} is requested twice")
    return out


def mlp_matrices(model: nn.Module, layers: "int | Sequence[int] | str", matrices: "str | Sequence[str]" = "up,gate,down") -> list[str]:
    """Canonical names (mlp.L.up_proj, ...) of the given MLP matrices of the given blocks: layers '22-29' or
    [22, 23]; matrices 'up,gate,down'.

    A matrix the family lacks (gpt2 has no gate) is skipped when it was asked for in the default list."""
    n = n_layers(model)
    if isinstance(layers, str):
        from ..core.layers import layer_spec

        layers = layer_spec(layers, n)
    elif isinstance(layers, int):
        layers = [layers]
    if isinstance(matrices, str):
        matrices = [m.strip() for m in matrices.split(",") if m.strip()]
    names = []
    for layer in layers:
        if not -n <= int(layer) < n:
            raise ValueError(f"layer {layer} is out of range: this model has {n} layers (0..{n - 1})")
        kids = dict(site_module(model, f"mlp_in.{int(layer) % n}").named_children())
        for mat in matrices:
            if mat in ALIASES and not any(c in kids for c in ALIASES[mat]) and mat == "gate":
                continue
            names.append(resolve_target(model, f"mlp.{int(layer) % n}.{mat}").name)
    return names
