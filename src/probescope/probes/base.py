"""The probe base class: shared fit / predict / every-prefix / save-load logic and the registry of kinds.

A kind subclasses `Probe` and fills four hooks:
  `setup(x, mask, y)`   statistics from the training data (standardisation, latent choice), once per fit;
  `build(n_out)`        fresh parameters (called under a fixed seed, again for every CV fold);
  `prepare(x, mask)`    per-example tensors the trainer batches over (pooled vectors, or the sequence);
  `logits(*prepared)`   `[N, n_out]` logits; and `prefix_logits(x, mask)` -> `[N, T, n_out]` in one pass.
"""

from __future__ import annotations

from pathlib import Path

from typing import Any, ClassVar, Sequence

import torch
from torch import nn

from ..core.threads import torch_threads  # noqa: F401  (re-exported)
from ..core.io import atomic_write_json, load_tensors, read_json, save_tensors
from .data import Acts, as_seq, encode_labels, infer_classes

FORMAT_VERSION = 1
KINDS: dict[str, type["Probe"]] = {}


def register(kind: str):
    """Class decorator: add a probe kind to the registry under `kind`."""

    def deco(cls: type["Probe"]) -> type["Probe"]:
        cls.kind = kind
        KINDS[kind] = cls
        return cls

    return deco


def make_probe(kind: str, **kwargs: Any) -> "Probe":
    """A new, untrained probe of a registered kind (`linear`, `attention`, `mlp`, `sparse`, ...)."""
    if kind not in KINDS:
        raise ValueError(f"unknown probe kind {kind!r}; kinds: {', '.join(sorted(KINDS))}")
    return KINDS[kind](**kwargs)


class Probe(nn.Module):
    """A classifier on a model's activations at one layer; binary or multi-class."""

    kind: ClassVar[str] = "base"
    default_optimizer: ClassVar[str] = "adamw"
    default_lr: ClassVar[float] = 1e-3
    threads: ClassVar[int | None] = 1  # torch threads for predictions (see torch_threads)

    def __init__(self) -> None:
        super().__init__()
        self.classes: list[Any] = []
        self.layer: int | None = None
        self.model_id: str | None = None
        self.d_model: int | None = None
        self.fit_info: dict[str, Any] = {}

    # ----- hooks for kinds ------------------------------------------------------------------------------
    def params(self) -> dict[str, Any]:
        """Constructor arguments, saved in the JSON config."""
        return {}

    def setup(self, x: torch.Tensor, mask: torch.Tensor, y: torch.Tensor) -> None:
        """Statistics from the training data; default: none."""

    def build(self, n_out: int) -> None:
        raise NotImplementedError

    def prepare(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    def logits(self, *prepared: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def prefix_logits(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def build_for_load(self, state: dict[str, torch.Tensor]) -> None:
        """Allocate parameters and buffers of the right shapes before loading `state`."""
        self.build(self.n_out)

    def penalized(self) -> list[nn.Parameter]:
        """Weights that weight decay applies to (not biases, not position terms)."""
        return [p for n, p in self.named_parameters() if p.dim() >= 2]

    # ----- shape and source checks ----------------------------------------------------------------------
    @property
    def n_out(self) -> int:
        return 1 if len(self.classes) == 2 else len(self.classes)

    @property
    def fitted(self) -> bool:
        return bool(self.classes)

    def _inputs(self, acts: torch.Tensor | Acts, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.fitted:
            raise RuntimeError(f"this {self.kind} probe is not trained: call fit(...) or load_probe(path) first")
        if isinstance(acts, Acts):
            if acts.model_id is not None and self.model_id is not None and acts.model_id != self.model_id:
                raise ValueError(
                    f"this probe was trained on activations of model '{self.model_id}', got activations of "
                    f"'{acts.model_id}': capture from '{self.model_id}' (layer {self.layer})"
                )
            if acts.layer is not None and self.layer is not None and acts.layer != self.layer:
                raise ValueError(
                    f"this probe was trained on layer {self.layer}, got activations of layer {acts.layer}: "
                    f"capture layer {self.layer}"
                )
        x, m = as_seq(acts, mask)
        if self.d_model is not None and x.shape[-1] != self.d_model:
            raise ValueError(
                f"this probe expects activations of width {self.d_model} (model '{self.model_id}', layer {self.layer}), "
                f"got width {x.shape[-1]}: capture from '{self.model_id}' layer {self.layer}"
            )
        return x, m

    def check_model(self, model: Any) -> None:
        """Raise unless `model` (an id or a loaded model) is the one the probe was trained on."""
        from ..core.models.registry import model_id as _mid

        mid = model if isinstance(model, str) else _mid(model)
        if self.model_id is not None and mid != self.model_id:
            raise ValueError(f"this probe was trained on model '{self.model_id}', not '{mid}': load '{self.model_id}'")

    # ----- training -------------------------------------------------------------------------------------
    def fit(
        self,
        acts: torch.Tensor | Acts,
        labels: Sequence[Any] | torch.Tensor,
        mask: torch.Tensor | None = None,
        *,
        val: tuple[torch.Tensor | Acts, Sequence[Any]] | None = None,
        config: Any = None,
        classes: Sequence[Any] | None = None,
        sample_weight: torch.Tensor | Sequence[float] | None = None,
    ) -> "Probe":
        """Train on activations `[N, T, D]` (+ mask) or `[N, D]` and their labels.

        `val`: (acts, labels) for early stopping (else a stratified slice of the training data);
        `config`: a `FitConfig` (weight decay None -> chosen by stratified k-fold CV);
        `sample_weight`: `[N]` positive weights multiplying each example's loss (e.g. `train.domain_weights`).
        """
        from .train import FitConfig, fit_probe

        cfg = config or FitConfig()
        if isinstance(acts, Acts):
            self.model_id = acts.model_id if acts.model_id is not None else self.model_id
            self.layer = acts.layer if acts.layer is not None else self.layer
        x, m = as_seq(acts, mask)
        labels_list = labels if isinstance(labels, torch.Tensor) else list(labels)  # int tensors: vectorised path
        if len(labels_list) != x.shape[0]:
            raise ValueError(f"{x.shape[0]} examples of activations but {len(labels_list)} labels: pass one label per example")
        self.classes = list(classes) if classes is not None else infer_classes(labels_list)
        y = encode_labels(labels_list, self.classes)
        self.d_model = int(x.shape[-1])
        val_t = None
        if val is not None:
            vx, vm = as_seq(val[0])
            vy = encode_labels(val[1], self.classes, n=vx.shape[0])
            val_t = (vx, vm, vy)
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(cfg.seed)
            self.setup(x, m, y)
            fit_probe(self, x, m, y, val_t, cfg, None if sample_weight is None else torch.as_tensor(sample_weight))
        self.eval()
        return self

    # ----- prediction -----------------------------------------------------------------------------------
    @torch.no_grad()
    def decision(self, acts: torch.Tensor | Acts, mask: torch.Tensor | None = None, batch_size: int = 256) -> torch.Tensor:
        """Logits `[N, n_out]` (n_out = 1 for binary)."""
        x, m = self._inputs(acts, mask)
        self.eval()
        with torch_threads(self.threads):
            outs = [self.logits(*self.prepare(x[s : s + batch_size], m[s : s + batch_size])) for s in range(0, len(x), batch_size)]
            return torch.cat(outs)

    def to_probs(self, logits: torch.Tensor) -> torch.Tensor:
        """Binary: P(classes[1]) `[...]`; multi-class: softmax `[..., C]`."""
        return torch.sigmoid(logits[..., 0]) if self.n_out == 1 else torch.softmax(logits, -1)

    def predict_proba(self, acts: torch.Tensor | Acts, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Binary: `[N]` probability of `classes[1]`; multi-class: `[N, C]`."""
        return self.to_probs(self.decision(acts, mask))

    def predict(self, acts: torch.Tensor | Acts, mask: torch.Tensor | None = None) -> list[Any]:
        """Predicted class labels."""
        p = self.predict_proba(acts, mask)
        idx = (p > 0.5).long() if p.dim() == 1 else p.argmax(-1)
        return [self.classes[i] for i in idx.tolist()]

    @torch.no_grad()
    def predict_prefixes(self, acts: torch.Tensor | Acts, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The prediction after every token, in one O(T) pass: `[N, T]` (binary) or `[N, T, C]`.

        Entry t equals `predict_proba` on the prefix of real tokens up to t; padded positions carry the last
        value; positions before a row's first real token hold the prediction of zero pooled input.
        """
        x, m = self._inputs(acts, mask)
        self.eval()
        with torch_threads(self.threads):
            return self.to_probs(self.prefix_logits(x, m))

    # ----- save / load ----------------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "kind": self.kind,
            "layer": self.layer,
            "site": (f"resid_post.{self.layer}" if isinstance(self.layer, int) else self.layer),
            "model_id": self.model_id,
            "d_model": self.d_model,
            "classes": self.classes,
            "pool": getattr(self, "pool", None),
            "params": self.params(),
            "fit": self.fit_info,
        }

    def save(self, path: str | Path) -> Path:
        """Write `probe.safetensors` and `probe.json` into folder `path` (or next to a `.safetensors` path)."""
        if not self.fitted:
            raise RuntimeError("cannot save an untrained probe: call fit(...) first")
        st, js = _paths(Path(path))
        save_tensors(st, self.state_dict(), metadata={"kind": self.kind, "model_id": str(self.model_id)})
        atomic_write_json(js, self.config())
        return st.parent


def _paths(path: Path) -> tuple[Path, Path]:
    if path.suffix in (".safetensors", ".json"):
        return path.with_suffix(".safetensors"), path.with_suffix(".json")
    return path / "probe.safetensors", path / "probe.json"


def load_probe(path: str | Path, **kwargs: Any) -> Probe:
    """Load a probe saved by `Probe.save` (a folder, or its .safetensors / .json). `kwargs` go to the
    constructor (e.g. `encoder=` for a sparse probe)."""
    st, js = _paths(Path(path))
    if not js.exists():
        raise FileNotFoundError(f"{js} does not exist: pass a folder written by probe.save(...)")
    cfg = read_json(js)
    if cfg.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{js}: probe format {cfg.get('format_version')} is not {FORMAT_VERSION}; retrain the probe")
    kind = cfg.get("kind")
    if kind not in KINDS:
        raise ValueError(f"{js}: unknown probe kind {kind!r}; kinds: {', '.join(sorted(KINDS))}")
    probe = KINDS[kind](**{**cfg.get("params", {}), **kwargs})
    probe.classes = cfg["classes"]
    probe.layer, probe.model_id, probe.d_model = cfg.get("layer"), cfg.get("model_id"), cfg.get("d_model")
    probe.fit_info = cfg.get("fit", {})
    state = load_tensors(st)
    probe.build_for_load(state)
    probe.load_state_dict(state, strict=True)
    probe.eval()
    return probe

