"""Dataclass configs for sparse autoencoders and their training; the fields double as CLI options."""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Any


def arch_names() -> tuple[str, ...]:
    """Names of the registered architectures (`sae.core.register_arch`), built-ins and any added since."""
    from .core import ARCHS

    return tuple(ARCHS)


def __getattr__(name: str) -> Any:  # ARCH_NAMES stays importable, now read from the registry
    if name == "ARCH_NAMES":
        return arch_names()
    raise AttributeError(name)


from ..core.options import DeviceOptions, RunOptions  # noqa: E402
from ..core.options import option as _opt  # noqa: E402


_TYPES = {"int": (numbers.Integral,), "float": (numbers.Real,), "str": (str,), "bool": (bool,)}


def check_field_types(obj: Any, where: str = "") -> None:
    """Raise a ValueError naming the field (and `where`) when a value has the wrong type, e.g. "k": "32"."""
    for f in dataclasses.fields(obj):
        want = _TYPES.get(str(f.type))
        v = getattr(obj, f.name)
        if want is None:
            continue
        ok = isinstance(v, want) and not (isinstance(v, bool) and bool not in want)
        if ok and isinstance(v, numbers.Real) and not isinstance(v, numbers.Integral) and not math.isfinite(v):
            raise ValueError(f"{where}{f.name}={v!r}: use a finite number")
        if not ok:
            raise ValueError(f"{where}{f.name}={v!r} is a {type(v).__name__}, not a{'n' if f.type == 'int' else ''} "
                             f"{f.type}: write it as {f.type} (e.g. {f.name}={f.default!r})")


@dataclass
class SAEConfig:
    """Shape and architecture of one sparse autoencoder (or transcoder).

    `hook_in`/`hook_out` name hook points ("resid_post.10", "mlp_in.3", "mlp_out.3"); an SAE reads and
    predicts the same point, a transcoder reads `hook_in` and predicts `hook_out`.
    """

    d_in: int
    arch: str = "topk"
    expansion: int = 16
    n_latents: int = 0  # 0: d_in * expansion
    k: int = 32  # top-k width; also the mean L0 target of batchtopk and jumprelu
    d_out: int = 0  # 0: d_in
    hook_in: str = ""
    hook_out: str = ""  # "": same as hook_in (an autoencoder)
    model: str = ""
    normalize_input: bool = False  # scale inputs to E|x|^2 = d_in while training; folded in at save
    normalize_decoder: bool = True  # unit-norm decoder rows
    l1_coef: float = 0.05  # relu: weight of the decoder-norm weighted L1 penalty
    l0_coef: float = 0.01  # jumprelu: weight of (L0 / k - 1)^2
    jumprelu_bandwidth: float = 0.05  # width of the straight-through rectangle for the thresholds
    jumprelu_init_threshold: float = 0.1
    threshold_ema: float = 0.99  # batchtopk: EMA decay of the smallest kept activation
    enc_init_scale: float = 0.7  # encoder rows start at this norm (decoder transpose x scale; see docs/sae.md)

    def __post_init__(self) -> None:
        check_field_types(self)
        names = arch_names()
        if self.arch not in names:
            raise ValueError(f"arch={self.arch!r} is unknown: use one of {', '.join(names)} (or register one with "
                             "probescope.sae.core.register_arch)")
        if self.d_in <= 0:
            raise ValueError(f"d_in={self.d_in}: the input width must be positive")
        if not self.n_latents:
            if self.expansion <= 0:
                raise ValueError(f"expansion={self.expansion}: use a positive expansion factor or set n_latents")
            self.n_latents = self.d_in * self.expansion
        if not self.d_out:
            self.d_out = self.d_in
        if not self.hook_out:
            self.hook_out = self.hook_in
        if not self.enc_init_scale > 0:
            raise ValueError(f"enc_init_scale={self.enc_init_scale}: use a positive scale (0.7 by default)")
        if self.k <= 0 or self.k > self.n_latents:
            raise ValueError(f"k={self.k} must lie in 1..n_latents ({self.n_latents})")
        if self.n_latents < 0 or self.d_out < 0:
            raise ValueError(f"n_latents={self.n_latents}, d_out={self.d_out}: widths cannot be negative")
        for name in ("l1_coef", "l0_coef"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)}: a penalty weight cannot be negative (use 0 or more)")
        if not self.jumprelu_bandwidth > 0:
            raise ValueError(f"jumprelu_bandwidth={self.jumprelu_bandwidth}: use a positive width (0.05 by default)")
        if not 0.0 <= self.threshold_ema < 1.0:
            raise ValueError(f"threshold_ema={self.threshold_ema}: use a decay in [0, 1) (0.99 by default)")

    @property
    def transcoder(self) -> bool:
        """True when the output hook point (or width) differs from the input's."""
        return self.hook_out != self.hook_in or self.d_out != self.d_in

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SAEConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class TrainConfig(RunOptions, DeviceOptions):
    """How to train: token budget, batch, optimiser, checkpoints. Seeds fix init and data order. `seed`, `threads`
    and `device` are the shared options (`core/options.py`); `threads` 0 here means 1 thread for a small problem
    (batch x latents under 2^22), else torch's setting."""

    tokens: int = _opt(2_000_000, "tokens to train on", min=1)
    batch_size: int = _opt(4096, "global batch, split across torchrun processes", min=1)
    lr: float = _opt(0.0, min=0, help="0: sparsify's rule, 5e-3/sqrt(n_latents/2^14) for the sign optimisers, 2e-4/... for adam")
    optimizer: str = _opt("sf-signum", "sf-signum (schedule-free sign-SGD, sparsify's default) | signum | adam",
                          choices=("sf-signum", "signum", "adam"))
    warmup_steps: int = _opt(0, "linear warm-up steps", min=0)
    lr_decay: bool = _opt(True, "linear decay to 0 over the last 20% of steps (not for sf-signum: it averages)",
                          flag="--lr-decay/--no-lr-decay")
    auxk_coef: float = _opt(1 / 32, "weight of the AuxK loss that revives dead latents", min=0)
    dead_tokens: int = _opt(1_000_000, "a latent is dead after this many tokens without firing", min=1)
    b_dec_init: str = _opt("median", "decoder bias at init: median | mean | zero", choices=("median", "mean", "zero"))
    sparse_kernels: bool = _opt(True, "top-k only: sparse encoder backward + embedding-bag decoder (--dense: plain "
                                      "dense kernels)", flag="--sparse/--dense")
    fast_select: str = _opt("auto", "auto: the fastest kernel path measured once on this machine (cached; "
                                    "PROBESCOPE_AUTOTUNE=0: the CPU-flag rule) | on | off: force the bf16 top-k select",
                            choices=("auto", "on", "off"))
    checkpoint_every: int = _opt(0, "steps; 0: about 10 per run", min=0)
    log_every: int = _opt(10, "steps between logged metrics", min=1)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_field_types(self)
        if self.tokens < self.batch_size:
            raise ValueError(f"tokens={self.tokens} is less than one batch of {self.batch_size}: raise --tokens or "
                             "lower --batch-size")

    def fingerprint(self) -> dict[str, Any]:
        """The settings that change the trained SAE: a resumed run must match these exactly."""
        skip = {"checkpoint_every", "log_every", "device", "threads"}
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in skip}

    @property
    def steps(self) -> int:
        return max(1, self.tokens // self.batch_size)
