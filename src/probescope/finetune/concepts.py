"""Interpretability during training: which SAE concepts each update teaches, and filters that steer learning.

`ConceptLens` attributes each optimizer step's batch to SAE latents from the SAME backward pass the
optimizer uses (a tensor hook on the residual stream at one layer; no second backward):

    effect_f = Σ_tokens (∂L/∂x · d_f) · a_f(x)

with x the residual stream after block `layer`, d_f latent f's decoder row (raw units) and a_f its
activation. It also tracks the drift of each latent's mean activation on a fixed probe batch since
step 0. `LearningFilter` acts on what flows through a layer while training: `suppress`/`amplify(α)`
scale the gradient's component in the span of chosen directions, `ablate` projects them out of the
activations (CAFT), `steer(c)` adds a vector (preventative steering). All hooks go through
`probescope.core.hooks.residual_hooks`, so they work the same on a plain model, a PEFT LoRA model, inside a
plain loop or a `transformers.Trainer` (see `ConceptCallback`).
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..core.hooks import add_vector, check_layers, d_model, filter_gradient, orthonormal, project_out, residual_hooks
from ..core.sites import tap_grad

# ----------------------------------------------------------------------------------------------------------
# Directions
# ----------------------------------------------------------------------------------------------------------


def sae_directions(sae: Any, latents: Sequence[int]) -> torch.Tensor:
    """Decoder rows `[k, d]` of the chosen SAE latents (raw units)."""
    latents = list(latents)
    if not latents:
        raise ValueError("no latents given: pass at least one latent index")
    n = sae.W_dec.shape[0]
    bad = [i for i in latents if not 0 <= i < n]
    if bad:
        raise ValueError(f"latents {bad} are out of range: this SAE has {n} latents (0..{n - 1})")
    return (sae.W_dec[latents] / getattr(sae, "out_scale", 1.0)).detach().float()


def pca_directions(base: torch.Tensor, tuned: torch.Tensor, k: int = 1) -> torch.Tensor:
    """Top-`k` principal directions `[k, d]` of the activation change `tuned − base` (paired rows `[N, d]`)."""
    if base.shape != tuned.shape:
        raise ValueError(f"base {tuple(base.shape)} and tuned {tuple(tuned.shape)} activations must be paired rows of one shape")
    diff = (tuned - base).double()
    _, _, v = torch.linalg.svd(diff, full_matrices=False)  # uncentred: the mean shift is a direction too
    return v[:k].float()


def as_directions(directions: Any, width: int) -> torch.Tensor:
    """Rows `[k, d]` from a tensor, a steering vector / probe with `.direction()`/`.vector`, checked against `width`."""
    if hasattr(directions, "direction") and callable(directions.direction):
        directions = directions.direction()
    elif hasattr(directions, "vector"):
        directions = directions.vector
    t = torch.as_tensor(directions).detach().float()
    t = t.reshape(-1, t.shape[-1])
    if t.shape[-1] != width:
        raise ValueError(f"directions have width {t.shape[-1]} but the model's residual stream is {width} wide")
    if not torch.isfinite(t).all():
        raise ValueError("directions contain NaN/inf")
    return t


# ----------------------------------------------------------------------------------------------------------
# Learning filters
# ----------------------------------------------------------------------------------------------------------

MODES = ("suppress", "amplify", "ablate", "steer")


@dataclass
class LearningFilter:
    """Shape what a layer learns: `suppress` (α=0) / `amplify` (gradient component in span(Q) × α), `ablate`
    (x − QQᵀx in the forward), `steer` (x + c·v in the forward). Use `with filt.attach(model): train()`."""

    directions: Any
    mode: str = "suppress"
    layer: int = 0
    alpha: float = 0.0
    coef: float | None = 1.0  # steer: None = not fitted yet (`steer=auto`; see fit_steer_coef)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"filter mode '{self.mode}' is unknown: use one of {', '.join(MODES)}")
        if self.mode == "suppress":
            self.alpha = 0.0

    def edit(self, model: nn.Module):
        """The residual-stream edit this filter makes at its layer."""
        dirs = as_directions(self.directions, d_model(model))
        if self.mode == "ablate":
            return project_out(dirs)
        if self.mode == "steer":
            if self.coef is None:
                raise ValueError("this steer filter's coefficient is 'auto' and not fitted: call fit_steer_coef(model, filt, batches)")
            return add_vector(self.coef * dirs.sum(0))
        q = orthonormal(dirs)
        scale = self.alpha - 1.0

        def grad_fn(g: torch.Tensor) -> torch.Tensor:
            qq = q.to(g.dtype).to(g.device)
            return g + scale * (g @ qq.T) @ qq

        return filter_gradient(grad_fn)

    def attach(self, model: nn.Module):
        """Context manager: the filter acts on every forward/backward inside; removed on exit."""
        (layer,) = check_layers(model, [self.layer])
        return residual_hooks(model, {layer: self.edit(model)})


def parse_filter(spec: str, layer: int, sae: Any = None) -> LearningFilter:
    """'suppress:12,40' / 'amplify=2:12' / 'ablate:12' / 'steer=4:12' (latent ids of `sae`) → LearningFilter.

    Latents may carry weights, `ID*W` (e.g. 'steer=8:12*2.1,40*0.5'): the filter then acts on ONE concept
    direction, the weighted sum Σ W_f d_f of their decoder rows (a latent without `*W` weighs 1). Without weights
    each latent is its own direction (suppress/amplify/ablate act on their span; steer adds their sum).
    `steer=auto` leaves the coefficient to `fit_steer_coef`."""
    try:
        head, ids = spec.split(":", 1)
        mode, _, val = head.partition("=")
        pairs = [part.split("*", 1) if "*" in part else (part, "1") for part in ids.split(",") if part.strip()]
        latents = [int(i) for i, _ in pairs]
        weights = [float(w) for _, w in pairs]
    except ValueError as e:
        raise ValueError(f"filter '{spec}' is malformed: use MODE[=VALUE]:LATENT[*WEIGHT],... e.g. suppress:12,40 or steer=8:12*2.1,40*0.5") from e
    if sae is None:
        raise ValueError(f"filter '{spec}' names SAE latents: pass an SAE (--lens PATH)")
    dirs = sae_directions(sae, latents)
    if "*" in ids:
        dirs = (dirs * torch.tensor(weights)[:, None]).sum(0, keepdim=True)
    if mode == "steer" and val == "auto":
        return LearningFilter(dirs, mode=mode, layer=layer, coef=None)
    try:
        v = float(val) if val else None
    except ValueError as e:
        raise ValueError(f"filter '{spec}': value '{val}' is not a number (steer also takes 'auto')") from e
    return LearningFilter(dirs, mode=mode, layer=layer, alpha=v if (mode == "amplify" and v is not None) else 0.0,
                          coef=v if (mode == "steer" and v is not None) else 1.0)


STEER_GRID = (0.0, 0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 10.0, 12.0, 16.0, 24.0)


@torch.no_grad()
def fit_steer_coef(model: nn.Module, filt: LearningFilter, batches: Sequence[Any], grid: Sequence[float] = STEER_GRID) -> list[tuple[float, float]]:
    """Preventative steering: set `filt.coef` to the grid value at which the steered model fits the training
    `batches` (finetune `Batch`es) best, i.e. lowest mean next-token loss on their trained tokens. Steering then
    supplies as much of the concept as it can, so the update has the least of it left to learn. Returns the
    (coef, loss) curve; `filt.coef` is set in place."""
    from .runner import masked_lm_loss

    if filt.mode != "steer":
        raise ValueError(f"fit_steer_coef fits steer filters, not '{filt.mode}'")
    if not batches:
        raise ValueError("fit_steer_coef needs at least one batch of training examples")
    was = model.training
    model.eval()
    curve = []
    try:
        for c in grid:
            trial = LearningFilter(filt.directions, "steer", layer=filt.layer, coef=float(c))
            total = n = 0.0
            with trial.attach(model):
                for b in batches:
                    loss, k = masked_lm_loss(model, b)
                    total, n = total + float(loss), n + k
            curve.append((float(c), total / max(n, 1)))
    finally:
        model.train(was)
    filt.coef = min(curve, key=lambda t: t[1])[0]
    return curve


def filter_spec(mode: str, latents: Sequence[int], weights: Sequence[float] | None = None, value: float | str | None = None) -> str:
    """The `--filter` string for `parse_filter` (inverse of it): e.g. filter_spec('steer', [12, 40], [2.1, .5], 8);
    `value='auto'` for a fitted steer coefficient."""
    head = mode if value is None else f"{mode}={value}" if isinstance(value, str) else f"{mode}={value:g}"
    if weights is None:
        return head + ":" + ",".join(str(int(i)) for i in latents)
    return head + ":" + ",".join(f"{int(i)}*{w:.4g}" for i, w in zip(latents, weights))


# ----------------------------------------------------------------------------------------------------------
# The lens
# ----------------------------------------------------------------------------------------------------------


@dataclass
class Timeline:
    """Per recorded step: attribution `effects [S, M]`, drift of mean activation `drift [S, M]` (NaN where
    not measured), and the step numbers."""

    steps: list[int] = field(default_factory=list)
    effects: list[torch.Tensor] = field(default_factory=list)
    drift_steps: list[int] = field(default_factory=list)
    drift: list[torch.Tensor] = field(default_factory=list)

    def effect_matrix(self) -> torch.Tensor:
        return torch.stack(self.effects) if self.effects else torch.zeros(0, 0)

    def drift_matrix(self) -> torch.Tensor:
        return torch.stack(self.drift) if self.drift else torch.zeros(0, 0)

    def top(self, k: int = 10, by: str = "effect") -> list[tuple[int, float]]:
        """Latents with the largest total |effect| (or final |drift|), with the signed value."""
        if by == "drift":
            if not self.drift:
                return []
            v = self.drift[-1]
        else:
            if not self.effects:
                return []
            v = self.effect_matrix().sum(0)
        idx = v.abs().argsort(descending=True)[:k]
        return [(int(i), float(v[i])) for i in idx]


def load_timeline(folder: str | Path) -> Timeline:
    """Read back the `timeline.safetensors` a lens saved into a run folder (e.g. of `probescope train`)."""
    from ..core.io import load_tensors

    path = Path(folder) / "timeline.safetensors"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: point at the run folder of a training run with --lens")
    t = load_tensors(path)
    tl = Timeline(steps=t["effect_steps"].tolist(), effects=list(t["effects"].unbind(0)) if t["effects"].numel() else [])
    if "drift" in t:
        tl.drift_steps, tl.drift = t["drift_steps"].tolist(), list(t["drift"].unbind(0))
    return tl


class ConceptLens:
    """Attribute training updates to SAE latents at one layer; see the module docstring.

    `with lens.attach(model): ... loss.backward(); lens.step(); optimizer.step()`. Gradient-accumulation
    micro-batches add up until `step()` records them. `probe_inputs` (token ids `[B, T]`, optionally with
    `probe_mask`) is the fixed batch for the drift, measured every `drift_every` steps.
    """

    def __init__(
        self,
        model: nn.Module,
        sae: Any,
        layer: int,
        every: int = 1,
        probe_inputs: torch.Tensor | None = None,
        probe_mask: torch.Tensor | None = None,
        drift_every: int = 10,
        labels: Callable[[int], str] | None = None,
    ):
        (self.layer,) = check_layers(model, [layer])
        width = d_model(model)
        if sae.W_dec.shape[-1] != width:
            raise ValueError(f"the SAE's width {sae.W_dec.shape[-1]} does not match the model's residual stream ({width})")
        self.model, self.sae, self.every = model, sae, max(1, every)
        self.probe_inputs, self.probe_mask, self.drift_every = probe_inputs, probe_mask, max(1, drift_every)
        self.labels = labels
        self.timeline = Timeline()
        self._acc: torch.Tensor | None = None
        self._n_steps = 0
        self._stack: ExitStack | None = None
        self._base_drift: torch.Tensor | None = None
        self._measuring = False
        self.time_s = 0.0

    # -- hooks ---------------------------------------------------------------------------------------------
    def _on_forward(self, hidden: torch.Tensor) -> None:
        if self._measuring or not hidden.requires_grad or (self._n_steps % self.every):
            return
        x = hidden.detach()

        def on_grad(g: torch.Tensor) -> None:
            import time

            t = time.perf_counter()
            with torch.no_grad():
                eff = self.attribute(x, g)
            self._acc = eff if self._acc is None else self._acc + eff
            self.time_s += time.perf_counter() - t

        tap_grad(hidden, on_grad)

    @torch.no_grad()
    def attribute(self, x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """effect_f = Σ_tokens (grad · d_f) · a_f(x) for every latent f → `[M]` (sparse: touches active latents only)."""
        sae = self.sae
        xs = x.reshape(-1, x.shape[-1]).to(sae.W_dec.dtype)
        gs = grad.reshape(-1, grad.shape[-1]).to(sae.W_dec.dtype)
        lat = sae.encode(xs)
        w = sae.W_dec / getattr(sae, "out_scale", 1.0)
        m = w.shape[0]
        if lat.indices is None:
            return ((gs @ w.T) * lat.values).sum(0)
        dots = torch.einsum("nd,nkd->nk", gs, w[lat.indices])
        return torch.zeros(m, dtype=dots.dtype, device=dots.device).index_add_(0, lat.indices.flatten(), (dots * lat.values).flatten())

    def attach(self, model: nn.Module | None = None):
        """Context manager registering the lens's read hook; drift baseline measured on entry."""
        return residual_hooks(model or self.model, {self.layer: self._on_forward})

    # -- recording -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def mean_activation(self) -> torch.Tensor | None:
        """Mean activation of each latent on the fixed probe batch `[M]` (one forward, no grad)."""
        if self.probe_inputs is None:
            return None
        from ..core.capture import capture

        was = self.model.training
        self.model.eval()
        self._measuring = True
        try:
            mask = self.probe_mask if self.probe_mask is not None else torch.ones_like(self.probe_inputs)
            cap = capture(self.model, {"input_ids": self.probe_inputs, "attention_mask": mask}, [self.layer])
            x = cap.acts[self.layer][mask.bool()]
            return self.sae.encode(x).dense().mean(0).float().cpu()
        finally:
            self._measuring = False
            self.model.train(was)

    def step(self) -> None:
        """Close one optimizer step: record the accumulated attribution (and the drift when due)."""
        if self._base_drift is None and self.probe_inputs is not None:
            self._base_drift = self.mean_activation()
            self.timeline.drift_steps.append(0)
            self.timeline.drift.append(torch.zeros_like(self._base_drift))
        if self._acc is not None:
            self.timeline.steps.append(self._n_steps)
            self.timeline.effects.append(self._acc.float().cpu())
        self._acc = None
        self._n_steps += 1
        if self._base_drift is not None and self._n_steps % self.drift_every == 0:
            self.timeline.drift_steps.append(self._n_steps)
            self.timeline.drift.append(self.mean_activation() - self._base_drift)

    def label(self, latent: int) -> str:
        if self.labels is not None:
            try:
                return self.labels(latent)
            except Exception:
                pass
        return f"latent {latent}"

    def save(self, folder: str | Path, top_k: int = 40) -> dict[str, Any]:
        """Write `timeline.safetensors` (effects, drift) and `timeline.json` (top latents with labels, series)."""
        from ..core.io import atomic_write_json, save_tensors

        folder = Path(folder)
        tl = self.timeline
        tensors = {"effects": tl.effect_matrix(), "effect_steps": torch.tensor(tl.steps, dtype=torch.long)}
        if tl.drift:
            tensors.update(drift=tl.drift_matrix(), drift_steps=torch.tensor(tl.drift_steps, dtype=torch.long))
        save_tensors(folder / "timeline.safetensors", tensors)
        E = tl.effect_matrix()
        top = tl.top(top_k)
        summary = {
            "layer": self.layer, "steps": tl.steps, "lens_time_s": self.time_s,
            "top_effect": [{"latent": i, "total_effect": v, "label": self.label(i),
                            "series": E[:, i].cumsum(0).tolist() if len(E) else []} for i, v in top],
            "top_drift": [{"latent": i, "drift": v, "label": self.label(i),
                           "series": tl.drift_matrix()[:, i].tolist()} for i, v in tl.top(top_k, by="drift")],
            "drift_steps": tl.drift_steps,
        }
        atomic_write_json(folder / "timeline.json", summary)
        return summary

    def plot_specs(self, summary: dict[str, Any]) -> list[dict[str, Any]]:
        """Report figures: cumulative attribution and drift of the top latents over steps."""
        specs = []
        if summary["top_effect"]:
            specs.append({"type": "line", "title": f"Concept timeline: cumulative attribution (layer {self.layer})",
                          "x_label": "step", "y_label": "Σ effect",
                          "series": [{"name": f"{t['latent']}: {t['label']}"[:28], "x": summary["steps"], "y": t["series"]}
                                     for t in summary["top_effect"][:8]]})
        if summary["top_drift"]:
            specs.append({"type": "line", "title": "Drift of mean latent activation on the probe batch",
                          "x_label": "step", "y_label": "Δ mean activation",
                          "series": [{"name": f"{t['latent']}: {t['label']}"[:28], "x": summary["drift_steps"], "y": t["series"]}
                                     for t in summary["top_drift"][:8]]})
        return specs


class ConceptCallback:
    """`transformers.TrainerCallback` adapter: attaches lens and filters for the whole training run and
    closes a lens step at every optimizer step. Pass it in `Trainer(callbacks=[...])`."""

    def __new__(cls, *args: Any, **kw: Any):
        from transformers import TrainerCallback

        class _Callback(TrainerCallback):
            def __init__(self, lens: ConceptLens | None = None, filters: Sequence[LearningFilter] = (), model: nn.Module | None = None):
                self.lens, self.filters, self.model = lens, list(filters), model
                self._stack: ExitStack | None = None

            def on_train_begin(self, args, state, control, model=None, **kw):
                m = self.model or model
                self._stack = ExitStack()
                for f in self.filters:
                    self._stack.enter_context(f.attach(m))
                if self.lens is not None:
                    self._stack.enter_context(self.lens.attach(m))

            def on_pre_optimizer_step(self, args, state, control, **kw):
                if self.lens is not None:
                    self.lens.step()

            def on_train_end(self, args, state, control, **kw):
                if self._stack is not None:
                    self._stack.close()
                    self._stack = None

        return _Callback(*args, **kw)
