"""`SteeringVector`: one direction per layer, made from contrastive pairs, an SAE or a probe; applied with hooks.

Layer `i` is probescope's layer: the residual stream after block `i` (0-based), HF's `hidden_states[i + 1]`.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import torch
from torch import nn

from ..core.hooks import check_layers, d_model, unwrap
from ..core.io import atomic_write_json, load_tensors, read_json, save_tensors
from .apply import Mode, Positions, SteeringHandle, apply_directions
from .train import TrainConfig, aggregate, check_pairs, pair_activations

FORMAT = "probescope.steering/1"
TENSORS, META = "steering.safetensors", "steering.json"


@dataclass
class SteeringVector:
    """Per-layer steering directions (`directions[layer]` is `[d_model]`, float32) plus where they came from."""

    directions: dict[int, torch.Tensor]
    model_id: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.directions:
            raise ValueError("a steering vector needs at least one layer's direction")
        dims = {tuple(v.shape) for v in self.directions.values()}
        if len(dims) != 1 or len(next(iter(dims))) != 1:
            raise ValueError(f"every direction must be a 1-D tensor of the same width, got shapes {sorted(dims)}")
        self.directions = {int(k): v.detach().float().cpu() for k, v in sorted(self.directions.items())}

    # ----- basic facts --------------------------------------------------------------------------------------
    @property
    def layers(self) -> list[int]:
        return list(self.directions)

    @property
    def d_model(self) -> int:
        return int(next(iter(self.directions.values())).shape[0])

    def norms(self) -> dict[int, float]:
        return {k: float(v.norm()) for k, v in self.directions.items()}

    def scaled(self, factor: float) -> "SteeringVector":
        """A copy with every direction multiplied by `factor`."""
        return SteeringVector({k: v * factor for k, v in self.directions.items()}, self.model_id, dict(self.meta))

    def cosine(self, other: "SteeringVector | torch.Tensor", layer: int | None = None) -> float:
        """Cosine similarity with another vector (or a raw `[d]` tensor) at `layer` (default: the first shared)."""
        layer = self.layers[0] if layer is None else layer
        o = (other if isinstance(other, torch.Tensor) else other.directions[layer]).detach()
        return float(torch.nn.functional.cosine_similarity(self.directions[layer].double(), o.double().flatten(), dim=0))

    # ----- making --------------------------------------------------------------------------------------------
    @classmethod
    def train(
        cls,
        model: nn.Module,
        tokenizer: Any,
        pairs: Sequence[Any],
        layers: int | Sequence[int],
        method: str = "mean_diff",
        read: str = "last",
        batch_size: int = 8,
        config: TrainConfig | None = None,
    ) -> "SteeringVector":
        """Steering vector from contrastive (positive, negative) pairs at `layers`.

        `method`: "mean_diff" (mean of positive − negative), "pca" (first principal component of the
        differences) or "probe" (logistic-regression direction). `read`: "last" token (default, like the
        steering-vectors library) or "span" (mean over the tokens where the two texts differ).
        """
        from ..core.models.registry import model_id

        cfg = config or TrainConfig(method=method, read=read, batch_size=batch_size)
        cfg.validate()
        pairs = check_pairs(pairs)
        layer_ids = check_layers(model, [layers] if isinstance(layers, int) else list(layers))
        t0 = time.perf_counter()
        pos, neg = pair_activations(model, tokenizer, pairs, layer_ids, cfg.read, cfg.batch_size, cfg.max_length)
        dirs = {lay: aggregate(pos[lay], neg[lay], cfg.method) for lay in layer_ids}
        if cfg.normalize:
            dirs = {k: v / v.norm().clamp_min(1e-30) for k, v in dirs.items()}
        cfg_model = getattr(unwrap(model), "config", None)
        meta = {"source": "pairs", "model_type": getattr(cfg_model, "model_type", None), "method": cfg.method, "read": cfg.read, "n_pairs": len(pairs),
                "batch_size": cfg.batch_size, "normalize": cfg.normalize,
                "train_seconds": round(time.perf_counter() - t0, 4),
                "pair_separation": {lay: _separation(pos[lay], neg[lay], dirs[lay]) for lay in layer_ids}}
        return cls(dirs, model_id(model), meta)

    @classmethod
    def from_sae(
        cls,
        sae: Any,
        latents: int | Sequence[int] | Mapping[int, float],
        layer: int | None = None,
        scale: float = 1.0,
        model_id: str | None = None,
    ) -> "SteeringVector":
        """Sum of SAE decoder rows `W_dec[latent]` (weighted when `latents` is a {latent: weight} dict), times `scale`.

        `sae`: an object with `W_dec` `[n_latents, d]` (probescope.sae or alike) or the raw tensor. The layer comes
        from `layer`, else the site the SAE writes (`cfg.hook_out`, else `cfg.hook_in`: it must be a residual site,
        `resid_post.L`, or another toolkit's name for it), else its `layer` / `cfg.layer` / `hook_layer` attribute.
        """
        w = sae if isinstance(sae, torch.Tensor) else getattr(sae, "W_dec", None)
        if w is None:
            raise TypeError(f"{type(sae).__name__} has no W_dec: pass an SAE with decoder rows W_dec [n_latents, d] "
                            "or that tensor itself")
        w = torch.as_tensor(w).detach().float().cpu()
        if w.dim() != 2:
            raise ValueError(f"W_dec must be [n_latents, d], got shape {tuple(w.shape)}")
        weights = dict(latents) if isinstance(latents, Mapping) else (
            {int(latents): 1.0} if isinstance(latents, int) else {int(i): 1.0 for i in latents})
        if not weights:
            raise ValueError("no latents given: pass a latent index, a list of them, or {latent: weight}")
        bad = [i for i in weights if not 0 <= i < w.shape[0]]
        if bad:
            raise ValueError(f"latents {bad} are out of range: this SAE has {w.shape[0]} latents (0..{w.shape[0] - 1})")
        vec = sum(float(c) * w[i] for i, c in weights.items()) * scale
        layer = _attr_layer(sae, layer if layer is not None else _sae_layer(sae), "SAE")
        meta = {"source": "sae", "sae_site": f"resid_post.{layer}", "latents": {str(k): float(v) for k, v in weights.items()}, "scale": scale}
        return cls({layer: vec}, model_id or getattr(sae, "model_id", None), meta)

    @classmethod
    def from_probe(
        cls,
        probe: Any,
        layer: int | None = None,
        scale: float = 1.0,
        class_index: int | None = None,
        model_id: str | None = None,
    ) -> "SteeringVector":
        """Unit direction of a linear probe, times `scale`.

        `probe`: an object with `.direction` (property or method; probescope's LinearProbe), `.weight`,
        `.head.weight` or `.coef_`, or the raw tensor. A `[1, d]` weight gives its row; `[2, d]` gives row 1 − row 0;
        more classes need `class_index`. The layer comes from `layer` or `probe.layer`.
        """
        w = probe
        if not isinstance(w, torch.Tensor):
            for get in (lambda p: p.direction, lambda p: p.weight, lambda p: p.head.weight, lambda p: p.coef_):
                try:
                    w = get(probe)
                    break
                except AttributeError:
                    continue
            else:
                raise TypeError(f"{type(probe).__name__} has no direction, weight, head.weight or coef_: pass a linear "
                                "probe or its weight tensor")
            if callable(w) and not isinstance(w, torch.Tensor):
                w = w()
        w = torch.as_tensor(w).detach().double().cpu()
        if w.dim() == 2:
            if class_index is not None:
                w = w[class_index]
            elif w.shape[0] == 1:
                w = w[0]
            elif w.shape[0] == 2:
                w = w[1] - w[0]
            else:
                raise ValueError(f"this probe has {w.shape[0]} classes: pass class_index= to pick the direction")
        if w.dim() != 1 or float(w.norm()) == 0.0:
            raise ValueError(f"probe direction must be a non-zero [d] vector, got shape {tuple(w.shape)}")
        layer = _attr_layer(probe, layer, "probe")
        meta = {"source": "probe", "probe_kind": type(probe).__name__, "scale": scale}
        return cls({layer: (w / w.norm() * scale).float()}, model_id or getattr(probe, "model_id", None), meta)

    # ----- using ---------------------------------------------------------------------------------------------
    def check_model(self, model: Any) -> None:
        """Raise unless `model` (an id or a loaded model) is the one the vector was made on (`probe eval`'s rule:
        compare model ids; a vector without a model id applies anywhere its width fits)."""
        from ..core.models.registry import model_id as _mid

        mid = model if isinstance(model, str) else _mid(model)
        if self.model_id and mid != self.model_id:
            raise ValueError(f"this steering vector was made on model '{self.model_id}', not '{mid}': load "
                             f"'{self.model_id}', or make a vector on '{mid}' (`probescope steer make --model {mid}`)")

    @contextmanager
    def apply(
        self,
        model: nn.Module,
        multiplier: float = 1.0,
        positions: Positions | torch.Tensor = "all",
        mode: Mode = "add",
        layers: Sequence[int] | None = None,
    ) -> Iterator[SteeringHandle]:
        """Steer every forward of `model` inside the context: `with vec.apply(model, multiplier=4): model.generate(...)`.

        `mode`: "add" (h + m·v), "ablate" (remove the direction of v from h) or "ablate_add" (remove, then add m·v).
        `positions`: "all", "prompt" (the prompt forward of generate), "generated" (each new token), or a [B, T]
        bool mask for plain forwards. Hooks are removed on exit, errors included.
        """
        d = d_model(model)
        if d != self.d_model:
            raise ValueError(f"this vector has width {self.d_model} but the model's residual width is {d}: "
                             f"it was made for {self.model_id or 'another model'}")
        self.check_model(model)
        with apply_directions(model, self.directions, multiplier, positions, mode, layers) as handle:
            yield handle

    # ----- files ---------------------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write `path/steering.safetensors` + `path/steering.json` atomically; returns the folder."""
        path = Path(path)
        if path.suffix == ".safetensors":
            path = path.parent
        tensors = {f"layer.{k}": v for k, v in self.directions.items()}
        save_tensors(path / TENSORS, tensors, metadata={"format": FORMAT, "model_id": str(self.model_id)}, finite=True)
        atomic_write_json(path / META, {"format": FORMAT, "model_id": self.model_id, "layers": self.layers,
                                        "sites": [f"resid_post.{L}" for L in self.layers], "d_model": self.d_model, "norms": self.norms(), "meta": self.meta})
        return path

    @classmethod
    def load(cls, path: str | Path) -> "SteeringVector":
        """Read a vector written by `save` (the folder or its .safetensors file)."""
        path = Path(path)
        folder = path.parent if path.suffix in (".safetensors", ".json") else path
        if not (folder / TENSORS).exists():
            raise FileNotFoundError(f"{folder / TENSORS} does not exist: point to a folder written by "
                                    "SteeringVector.save or `probescope steer make`")
        tensors = load_tensors(folder / TENSORS)
        info = read_json(folder / META) if (folder / META).exists() else {}
        dirs = {int(k.split(".", 1)[1]): v for k, v in tensors.items() if k.startswith("layer.")}
        return cls(dirs, info.get("model_id"), info.get("meta", {}))

    def export_gguf(self, path: str | Path, model_hint: str | None = None, n_layers: int | None = None,
                    multiplier: float = 1.0) -> Path:
        """llama.cpp control-vector GGUF; `direction.N` is layer N (see `probescope.steering.gguf_export`)."""
        from .gguf_export import export_gguf

        return export_gguf(self, path, model_hint=model_hint, n_layers=n_layers, multiplier=multiplier)


def _sae_layer(sae: Any) -> int | None:
    """The block whose output an SAE writes, from its site string (None when it names none)."""
    from ..core.sites import foreign_site, parse_site

    cfg = getattr(sae, "cfg", None)
    name = (getattr(cfg, "hook_out", "") or getattr(cfg, "hook_in", "") or getattr(sae, "hook_name", "")
            or getattr(cfg, "hook_name", "")) if not isinstance(sae, torch.Tensor) else ""
    if not name or not isinstance(name, str):
        return None
    site = foreign_site(name)
    if not site:
        raise ValueError(f"the SAE's site {name!r} is not a site probescope knows: pass layer=<block index>")
    s = parse_site(site)
    if s.kind == "resid_pre" and s.layer and s.layer > 0:
        return s.layer - 1  # the residual entering block L is the one leaving block L-1
    if s.kind != "resid_post":
        raise ValueError(f"the SAE writes {site}, but steering vectors add to the residual stream (resid_post.L): "
                         "use an SAE trained on resid_post, or pass layer=<block index> to add its decoder rows there")
    return s.layer


def _attr_layer(obj: Any, layer: int | None, what: str) -> int:
    if layer is not None:
        return int(layer)
    for get in (lambda o: o.layer, lambda o: o.cfg.layer, lambda o: o.hook_layer, lambda o: o.cfg.hook_layer):
        try:
            val = get(obj)
        except AttributeError:
            continue
        if isinstance(val, int) and not isinstance(val, bool):
            return val
    raise ValueError(f"this {what} does not say which layer it reads: pass layer=<block index>")


def _separation(pos: torch.Tensor, neg: torch.Tensor, v: torch.Tensor) -> float:
    """Fraction of pairs whose positive text projects further along v than its negative (1.0 = all)."""
    return float(((pos - neg) @ v > 0).float().mean())
