"""The SAE module: one small core shared by every architecture (and by transcoders).

Shared here, once: encoder initialised as the decoder's transpose, unit-norm decoder rows (and removal
of the gradient component along each row), `b_dec` from the geometric median of a first batch, the AuxK
loss for dead latents, optional input normalisation folded into the weights at save. Architectures only
say how pre-activations become latents and what sparsity penalty they add (`ARCHS`).
"""

from __future__ import annotations

import math
from typing import Callable, ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import SAEConfig
from .kernels import PatternCache, dense_decode, sparse_decode, topk_encode

AUXK_COEF = 1 / 32  # the one default for the AuxK coefficient (TrainConfig.auxk_coef uses it)


class Latents(NamedTuple):
    """Latent activations: `values` [N, k] with `indices` [N, k] (sparse), or dense `values` [N, M]."""

    values: Tensor
    indices: Tensor | None
    n_latents: int
    cache: PatternCache | None = None  # sparse kernels: grouping of `indices`, shared by the backward passes

    def dense(self) -> Tensor:
        """[N, M] dense activations."""
        if self.indices is None:
            return self.values
        return self.values.new_zeros(self.values.shape[0], self.n_latents).scatter(1, self.indices, self.values)

    def fired(self) -> Tensor:
        """[M] bool: which latents are non-zero on at least one row."""
        if self.indices is None:
            return (self.values > 0).any(0)
        out = torch.zeros(self.n_latents, dtype=torch.bool, device=self.values.device)
        out[self.indices[self.values > 0]] = True
        return out

    def counts(self) -> Tensor:
        """[M] number of rows on which each latent fires."""
        if self.indices is None:
            return (self.values > 0).sum(0)
        return torch.bincount(self.indices[self.values > 0], minlength=self.n_latents)

    def l0(self) -> Tensor:
        """Mean number of active latents per row."""
        return (self.values > 0).sum(-1).float().mean()


class ForwardOutput(NamedTuple):
    reconstruction: Tensor  # in the input's (raw) units
    latents: Latents
    fvu: Tensor  # fraction of variance unexplained: Σ|y − ŷ|² / Σ|y − ȳ|²
    auxk_loss: Tensor
    l0: Tensor
    sparsity_loss: Tensor  # L1 (relu) or L0-target (jumprelu) penalty; 0 for top-k kinds


# ---------------------------------------------------------------------------------------------------------
# Architectures
# ---------------------------------------------------------------------------------------------------------


class Arch:
    """How pre-activations become latents. Subclasses register themselves in `ARCHS` by `name`."""

    name: ClassVar[str] = ""

    def setup(self, sae: "SAE") -> None:
        """Add architecture-specific parameters or buffers."""

    def encode(self, sae: "SAE", x: Tensor, bias: Tensor) -> tuple[Latents, Tensor]:
        """(latents, sparsity loss) for inputs `x` already normalised; `bias` is the effective encoder bias."""
        raise NotImplementedError

    def fold_scale(self, sae: "SAE", s_in: float) -> None:
        """Latents are divided by `s_in` when normalisation is folded: rescale thresholds to match."""


ARCHS: dict[str, type[Arch]] = {}


def register_arch(cls: type[Arch]) -> type[Arch]:
    """Class decorator: make an architecture available by its `name` (a name already taken is refused)."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no `name`: set the class attribute name = '...'")
    if cls.name in ARCHS and ARCHS[cls.name] is not cls:
        raise ValueError(f"an architecture named {cls.name!r} is already registered ({ARCHS[cls.name].__name__}): "
                         "pick another name")
    ARCHS[cls.name] = cls
    return cls


@register_arch
class TopK(Arch):
    name = "topk"

    def encode(self, sae, x, bias):
        if sae.sparse_kernels:
            center = None if sae.transcoder else sae.b_dec
            vals, idx = topk_encode(x, sae.W_enc, bias, sae.cfg.k, sae.fast_select, center)
        else:
            vals, idx = F.linear(x, sae.W_enc, bias).topk(sae.cfg.k, dim=-1, sorted=False)
            vals = vals.clamp_min(0)
        return Latents(vals, idx, sae.n_latents), x.new_zeros(())


@register_arch
class BatchTopK(Arch):
    """Top k·N over the whole batch while training; at inference a fixed threshold, the EMA of the smallest
    activation kept in training batches."""

    name = "batchtopk"

    def setup(self, sae):
        sae.register_buffer("threshold", torch.tensor(-1.0))  # < 0: not estimated yet

    def encode(self, sae, x, bias):
        pre = F.relu(F.linear(x, sae.W_enc, bias))
        if sae.training or sae.threshold < 0:
            n_keep = min(sae.cfg.k * pre.shape[0], pre.numel())
            vals, flat = pre.flatten().topk(n_keep, sorted=False)
            mask = torch.zeros_like(pre, dtype=torch.bool).flatten()
            mask[flat] = True
            acts = pre * mask.view_as(pre)
            if sae.training:
                with torch.no_grad():
                    kept = vals[vals > 0]
                    if kept.numel():
                        low = kept.min()
                        ema = sae.cfg.threshold_ema
                        new = low if sae.threshold < 0 else ema * sae.threshold + (1 - ema) * low
                        sae.threshold.copy_(new)
        else:
            acts = pre * (pre > sae.threshold)
        return Latents(acts, None, sae.n_latents), x.new_zeros(())

    def fold_scale(self, sae, s_in):
        if sae.threshold >= 0:
            sae.threshold.div_(s_in)


class _JumpReLU(torch.autograd.Function):
    """z·H(z − θ); straight-through rectangle of width ε gives the gradient w.r.t. log θ."""

    @staticmethod
    def forward(ctx, pre, log_thr, bw):  # type: ignore[override]
        thr = log_thr.exp()
        ctx.save_for_backward(pre, thr)
        ctx.bw = bw
        return pre * (pre > thr)

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        pre, thr = ctx.saved_tensors
        bw = ctx.bw
        near = ((pre - thr).abs() < bw / 2).to(g.dtype)
        g_pre = g * (pre > thr)
        g_thr = -(thr / bw) * (g * near).sum(0)
        return g_pre, g_thr * thr, None  # chain rule through θ = exp(log θ)


class _Step(torch.autograd.Function):
    """H(z − θ), with straight-through gradients ±(1/ε)·rect((z − θ)/ε) w.r.t. z and θ."""

    @staticmethod
    def forward(ctx, pre, log_thr, bw):  # type: ignore[override]
        thr = log_thr.exp()
        ctx.save_for_backward(pre, thr)
        ctx.bw = bw
        return (pre > thr).to(pre.dtype)

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        pre, thr = ctx.saved_tensors
        bw = ctx.bw
        near = ((pre - thr).abs() < bw / 2).to(g.dtype)
        g_near = g * near / bw
        return g_near, -g_near.sum(0) * thr, None


@register_arch
class JumpReLU(Arch):
    """Learned per-latent thresholds; the penalty pulls the mean L0 towards `k`."""

    name = "jumprelu"

    def setup(self, sae):
        sae.log_threshold = nn.Parameter(torch.full((sae.n_latents,), math.log(sae.cfg.jumprelu_init_threshold)))

    def encode(self, sae, x, bias):
        pre = F.linear(x, sae.W_enc, bias)
        bw = sae.cfg.jumprelu_bandwidth
        acts = _JumpReLU.apply(pre, sae.log_threshold, bw)
        if sae.training:
            l0 = _Step.apply(pre, sae.log_threshold, bw).sum(-1).mean()
            loss = sae.cfg.l0_coef * (l0 / sae.cfg.k - 1) ** 2
        else:
            loss = x.new_zeros(())
        return Latents(acts, None, sae.n_latents), loss

    def fold_scale(self, sae, s_in):
        sae.log_threshold.data -= math.log(s_in)


@register_arch
class ReLU(Arch):
    """relu(pre) with an L1 penalty weighted by each latent's decoder norm."""

    name = "relu"

    def encode(self, sae, x, bias):
        acts = F.relu(F.linear(x, sae.W_enc, bias))
        scale = x.detach().std(0).pow(2).sum().sqrt().clamp_min(1e-8)  # per-token norm of centred inputs
        loss = sae.cfg.l1_coef * (acts * sae.W_dec.norm(dim=1)).sum(-1).mean() / scale
        return Latents(acts, None, sae.n_latents), loss


# ---------------------------------------------------------------------------------------------------------
# The module
# ---------------------------------------------------------------------------------------------------------


def geometric_median(points: Tensor, iters: int = 50, eps: float = 1e-6) -> Tensor:
    """Weiszfeld's algorithm: the point minimising the sum of Euclidean distances to `points` ([N, d])."""
    points = points.double()
    guess = points.mean(0)
    for _ in range(iters):
        w = 1 / (points - guess).norm(dim=1).clamp_min(eps)
        new = (w[:, None] * points).sum(0) / w.sum()
        if (new - guess).norm() < eps * (1 + guess.norm()):
            guess = new
            break
        guess = new
    return guess.float()


class SAE(nn.Module):
    """Sparse autoencoder or transcoder. Weights: W_enc [M, d_in], b_enc [M], W_dec [M, d_out], b_dec [d_out].

    `forward(x, y=None, dead_mask=None)` returns a `ForwardOutput`; `y` defaults to `x` (autoencoding).
    """

    def __init__(self, cfg: SAEConfig, device: str | torch.device = "cpu", seed: int = 0):
        super().__init__()
        self.cfg = cfg
        self.arch: Arch = ARCHS[cfg.arch]()
        self.sparse_kernels = True
        self.fast_select = False
        self.latent_labels: dict[int, str] = {}  # from latents.json when loaded from a folder that has one
        m, d_in, d_out = cfg.n_latents, cfg.d_in, cfg.d_out
        gen = torch.Generator().manual_seed(seed)
        w_dec = torch.randn(m, d_out, generator=gen)
        w_dec /= w_dec.norm(dim=1, keepdim=True)
        if d_in == d_out:
            w_enc = w_dec.clone()  # encoder = decoder transpose (in [M, d] layout: the same matrix)
        else:
            w_enc = torch.randn(m, d_in, generator=gen) / math.sqrt(d_in)
        self.W_enc = nn.Parameter(w_enc * cfg.enc_init_scale)
        self.b_enc = nn.Parameter(torch.zeros(m))
        self.W_dec = nn.Parameter(w_dec)
        self.b_dec = nn.Parameter(torch.zeros(d_out))
        self.register_buffer("in_scale", torch.tensor(1.0))
        self.register_buffer("out_scale", torch.tensor(1.0))
        self.arch.setup(self)
        self.to(device)

    # -- shape ---------------------------------------------------------------------------------------------
    @property
    def n_latents(self) -> int:
        return self.cfg.n_latents

    @property
    def device(self) -> torch.device:
        return self.W_enc.device

    @property
    def transcoder(self) -> bool:
        return self.cfg.transcoder

    # -- shared initialisation and constraints ------------------------------------------------------------
    def explain(self, latent: int) -> str:
        """Short label of a latent (from `probescope sae latents`), or "latent N" when none was computed."""
        return self.latent_labels.get(int(latent), f"latent {int(latent)}")

    @torch.no_grad()
    def init_from_batch(self, x: Tensor, y: Tensor | None = None, b_dec: str = "median") -> None:
        """Set input/output scales (if `normalize_input`) and `b_dec` from a first batch."""
        x = x.float().to(self.device)
        y = x if y is None else y.float().to(self.device)
        if self.cfg.normalize_input:
            self.in_scale.fill_(math.sqrt(self.cfg.d_in) / x.norm(dim=1).mean().clamp_min(1e-8).item())
            self.out_scale.fill_(math.sqrt(self.cfg.d_out) / y.norm(dim=1).mean().clamp_min(1e-8).item())
        ys = y * self.out_scale
        if b_dec == "median":
            self.b_dec.copy_(geometric_median(ys[:4096]))
        elif b_dec == "mean":
            self.b_dec.copy_(ys.mean(0))
        else:
            self.b_dec.zero_()
        if self.transcoder:  # centre the pre-activations, as an autoencoder does by subtracting b_dec
            self.b_enc.copy_(-(x * self.in_scale).mean(0) @ self.W_enc.T)

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Rescale decoder rows to unit norm (no-op unless cfg.normalize_decoder)."""
        if self.cfg.normalize_decoder:
            self.W_dec /= self.W_dec.norm(dim=1, keepdim=True).clamp_min(torch.finfo(self.W_dec.dtype).eps)

    @torch.no_grad()
    def remove_parallel_grad(self) -> None:
        """Drop the component of W_dec's gradient along each (unit) decoder row."""
        if self.cfg.normalize_decoder and self.W_dec.grad is not None:
            par = (self.W_dec.grad * self.W_dec).sum(1, keepdim=True)
            self.W_dec.grad -= par * self.W_dec

    @torch.no_grad()
    def fold_normalization(self) -> None:
        """Fold input/output scales into the weights, so the SAE takes raw activations (scales become 1)."""
        s_in, s_out = float(self.in_scale), float(self.out_scale)
        if s_in == 1.0 and s_out == 1.0:
            return
        self.b_enc /= s_in
        self.arch.fold_scale(self, s_in)
        self.W_dec *= s_in / s_out
        self.b_dec /= s_out
        self.in_scale.fill_(1.0)
        self.out_scale.fill_(1.0)

    # -- forward -------------------------------------------------------------------------------------------
    def _encoder_bias(self) -> Tensor:
        # (x − b_dec)·W_encᵀ + b_enc  ==  x·W_encᵀ + (b_enc − W_enc·b_dec): the input never needs a grad
        if self.transcoder:
            return self.b_enc
        return self.b_enc - self.W_enc @ self.b_dec

    def encode(self, x: Tensor) -> Latents:
        """Latent activations of raw inputs `x` ([..., d_in] flattened to [N, d_in])."""
        x = x.reshape(-1, self.cfg.d_in).to(self.W_enc.dtype) * self.in_scale
        return self.arch.encode(self, x, self._encoder_bias())[0]

    def decode(self, latents: Latents) -> Tensor:
        """Reconstruction (raw output units) from latents."""
        return (self._decode(latents) + self.b_dec) / self.out_scale

    def _decode(self, lat: Latents, w_dec: Tensor | None = None) -> Tensor:
        w = self.W_dec if w_dec is None else w_dec
        if lat.indices is None:
            return lat.values @ w
        if self.sparse_kernels:
            return sparse_decode(lat.values, lat.indices, w, lat.cache if w_dec is None else None)
        return dense_decode(lat.values, lat.indices, w)

    def auxk_loss(self, x: Tensor, bias: Tensor, resid: Tensor, dead_mask: Tensor, total_var: Tensor) -> Tensor:
        """AuxK: the top k_aux ≈ d/2 dead latents reconstruct the residual left by the live ones."""
        dead = dead_mask.nonzero().flatten()
        k_full = self.cfg.d_out // 2
        k_aux = min(k_full, dead.numel())
        pre = F.linear(x, self.W_enc[dead], bias[dead])
        vals, idx = pre.topk(k_aux, dim=-1, sorted=False)
        lat = Latents(vals.clamp_min(0), idx, dead.numel())
        e_hat = self._decode(lat, self.W_dec[dead])
        scale = min(dead.numel() / k_full, 1.0)
        return scale * (e_hat - resid.detach()).pow(2).sum() / total_var

    def forward(
        self, x: Tensor, y: Tensor | None = None, dead_mask: Tensor | None = None, total_var: Tensor | None = None
    ) -> ForwardOutput:
        """Encode, decode and score a batch; `total_var` (raw units) overrides Σ|y − ȳ|² (DDP passes the global one)."""
        shape = x.shape
        x = x.reshape(-1, self.cfg.d_in).to(self.W_enc.dtype)
        if y is None:
            if self.transcoder:
                raise ValueError("a transcoder needs the target: call sae(x, y) with y from cfg.hook_out")
            y = x
        y = y.reshape(-1, self.cfg.d_out).to(self.W_enc.dtype)
        xs = x * self.in_scale
        ys = y * self.out_scale
        bias = self._encoder_bias()
        lat, sparsity = self.arch.encode(self, xs, bias)
        recon = self._decode(lat) + self.b_dec
        resid = ys - recon
        if total_var is None:
            total_var = (ys - ys.mean(0)).pow(2).sum().clamp_min(1e-12)
        else:
            total_var = total_var.to(ys) * self.out_scale**2
        fvu = resid.pow(2).sum() / total_var
        if dead_mask is not None and bool(dead_mask.any()):
            auxk = self.auxk_loss(xs, bias, resid, dead_mask, total_var)
        else:
            auxk = fvu.new_zeros(())
        out = (recon / self.out_scale).reshape(*shape[:-1], self.cfg.d_out)
        return ForwardOutput(out, lat, fvu, auxk, lat.l0(), sparsity)


ArchFactory = Callable[[], Arch]
