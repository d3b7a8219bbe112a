"""Sparse kernels for top-k SAEs: the encoder's backward and the decoder touch only the k active latents.

For a batch of N tokens with k active latents each (`indices`, `values`: [N, k]) the dense work per step is
the encoder's forward matmul; everything else is O(N·k·d):

* `topk_encode`: matmul (bf16 on AMX CPUs / CUDA when `fast=True`, then exact fp32 values of the chosen
  latents), relu, top-k. Backward: grad of W_enc = Sᵀ·x with S the sparse [N, M] matrix of the selected
  gradients (a sparse-dense matmul), grad of the bias a bincount, grad of the input an embedding bag.
* `sparse_decode`: x̂ = Σ_j values[n, j] · W_dec[indices[n, j]] (embedding bag); backward: grad of the
  values are k dot products per token, grad of W_dec = Sᵀ·grad_out.
* `dense_decode`: the plain fallback (scatter into [N, M], matmul), kept for tests and other devices.
"""

from __future__ import annotations

import functools
import os
from typing import NamedTuple

import numpy as np

import torch
import torch.nn.functional as F
from torch import Tensor


@functools.lru_cache(maxsize=None)
def cpu_has_amx() -> bool:
    """True when this CPU multiplies bf16 matrices fast (AMX tiles)."""
    try:
        return bool(torch._C._cpu._is_amx_tile_supported())
    except Exception:  # older torch
        try:
            return "amx_bf16" in open("/proc/cpuinfo").read()
        except OSError:
            return False


def want_fast_select(mode: str, device: torch.device) -> bool:
    """Resolve `fast_select` ("auto" | "on" | "off") for a device."""
    if mode == "on":
        return True
    if mode == "off":
        return False
    return device.type == "cuda" or (device.type == "cpu" and cpu_has_amx())


@functools.lru_cache(maxsize=None)
def cpu_isa() -> dict[str, bool]:
    """The CPU flags that decide the fast path: AVX2, AVX-512, avx512_bf16, AMX."""
    try:
        flags = next((ln.split(":", 1)[1].split() for ln in open("/proc/cpuinfo") if ln.startswith("flags")), [])
    except OSError:
        flags = []
    return {k: k in flags for k in ("avx2", "avx512f", "avx512_bf16", "amx_tile")} | {"amx_tile": cpu_has_amx()}


def kernel_path(sparse: bool, fast_select: str, device: torch.device, arch: str = "topk") -> tuple[str, str]:
    """(path, why): the kernels a training run uses on this machine, in one line each."""
    if arch not in ("topk", "batchtopk") or not sparse:
        why = "--dense asked for" if not sparse else f"{arch} has no sparse kernels"
        return "dense fp32", why
    fast = want_fast_select(fast_select, device)
    if fast_select == "on":
        return "sparse + bf16 top-k select", "--fast-select on"
    if fast_select == "off":
        return "sparse fp32", "--fast-select off"
    if device.type == "cuda":
        return "sparse + bf16 top-k select", "CUDA: bf16 matmul is several times fp32"
    isa = cpu_isa()
    if fast:
        return "sparse + bf16 top-k select", "this CPU has AMX: bf16 matmul is several times fp32"
    if isa.get("avx512_bf16"):
        why = "avx512_bf16 without AMX: bf16 matmul ~2.6x fp32 here but the bf16 cast costs most of it"
    else:
        why = "no AMX or avx512_bf16: bf16 matmul is not faster than fp32 on this CPU"
    return "sparse fp32", why + " (--fast-select on overrides)"


def _bag_offsets(n: int, k: int, device: torch.device) -> tuple[Tensor, Tensor]:
    offsets = torch.arange(0, n * k, k, device=device)
    offset2bag = torch.arange(n, device=device).repeat_interleave(k)
    return offsets, offset2bag


def gather_dot(rows: Tensor, table: Tensor, indices: Tensor) -> Tensor:
    """out[n, j] = rows[n] · table[indices[n, j]], without materialising the [N, k, d] gather."""
    n, k = indices.shape
    if n == 0:
        return rows.new_zeros(n, k)
    offsets, o2b = _bag_offsets(n, k, indices.device)
    try:
        out = torch.ops.aten._embedding_bag_per_sample_weights_backward(
            rows.contiguous(), table, indices.reshape(-1), offsets, o2b, 0, -1
        )
        return out.view(n, k)
    except (RuntimeError, AttributeError):  # pragma: no cover - op missing on some backends
        return torch.einsum("nkd,nd->nk", table[indices], rows)


class _Pattern(NamedTuple):
    tokens: Tensor  # [N·k] row of each (row, slot) pair, grouped by latent
    offsets: Tensor  # [n_rows] start of each latent's group in `tokens`
    order: Tensor  # [N·k] permutation of the flattened (row, slot) pairs


class PatternCache:
    """The latent-grouping of one forward's indices, shared by the encoder's and decoder's backward."""

    def __init__(self) -> None:
        self.pattern: _Pattern | None = None

    def get(self, indices: Tensor, n_rows: int) -> _Pattern:
        if self.pattern is None:
            self.pattern = _pattern(indices, n_rows)
        return self.pattern


def _pattern(indices: Tensor, n_rows: int) -> _Pattern:
    """Group the (row, slot) pairs of `indices` [N, k] by latent."""
    flat = indices.reshape(-1)
    if flat.device.type == "cpu":
        # numpy's sort: torch's parallel argsort is slow on a busy CPU; deterministic either way
        order = torch.from_numpy(np.argsort(flat.numpy(), kind="stable"))
    else:
        order = torch.argsort(flat, stable=True)
    counts = torch.bincount(flat, minlength=n_rows)
    offsets = torch.zeros(n_rows, dtype=torch.long, device=flat.device)
    offsets[1:] = counts.cumsum(0)[:-1]
    return _Pattern(torch.div(order, indices.shape[1], rounding_mode="floor"), offsets, order)


def sparse_t_matmul(indices: Tensor, values: Tensor, rhs: Tensor, n_rows: int, cache: PatternCache | None = None) -> Tensor:
    """Sᵀ @ rhs where S is [N, n_rows] with S[n, indices[n, j]] = values[n, j]; result [n_rows, d].

    Done as an embedding bag over the rows of `rhs`, one bag per latent: O(N·k·d), nothing materialised.
    """
    if os.environ.get("PROBESCOPE_SAE_INDEX_ADD") == "1":
        out = rhs.new_zeros(n_rows, rhs.shape[1])
        out.index_add_(0, indices.reshape(-1), (values.unsqueeze(-1) * rhs.unsqueeze(1)).reshape(-1, rhs.shape[1]))
        return out
    pat = cache.get(indices, n_rows) if cache is not None else _pattern(indices, n_rows)
    w = values.reshape(-1)[pat.order].to(rhs.dtype)
    return F.embedding_bag(pat.tokens, rhs.contiguous(), pat.offsets, per_sample_weights=w, mode="sum")


def _select(x: Tensor, weight: Tensor, bias: Tensor, k: int, fast: bool, center: Tensor | None) -> tuple[Tensor, Tensor]:
    if fast:
        # bf16 picks the latents, fp32 gives their values. Select on centred inputs: with a large mean,
        # x·w and the bias cancel and bf16 would lose the difference.
        dt = torch.bfloat16
        if center is not None:
            xs, bs = x - center, bias + weight @ center
        else:
            xs, bs = x, bias
        pre = F.linear(xs.to(dt), weight.to(dt), bs.to(dt))
        idx = pre.topk(k, dim=-1, sorted=False).indices
        del pre
        vals = gather_dot(x, weight, idx) + bias[idx]
        return vals, idx
    # the [N, M] pre-activations live only until top-k: write them into one reused buffer. A fresh 150 MB
    # tensor per step costs page faults (the kernel zeroes every page) worth ~15% of a CPU step.
    pre = torch.addmm(bias, x, weight.t(), out=_scratch((x.shape[0], weight.shape[0]), x.dtype, x.device))
    vals, idx = pre.topk(k, dim=-1, sorted=False)
    return vals, idx


_SCRATCH: dict[tuple, Tensor] = {}


def _scratch(shape: tuple[int, int], dtype: torch.dtype, device: torch.device) -> Tensor:
    """One reusable buffer per (shape, dtype, device) for values that die within a call (pre-activations).
    CPU only: CUDA's caching allocator already reuses memory, and one buffer there would serialise streams."""
    if device.type != "cpu":
        return torch.empty(shape, dtype=dtype, device=device)
    key = (shape, dtype, device)
    buf = _SCRATCH.get(key)
    if buf is None:
        _SCRATCH.clear()  # one live shape at a time: a new batch size replaces the old buffer
        buf = _SCRATCH[key] = torch.empty(shape, dtype=dtype, device=device)
    return buf


class _TopKEncode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor, k: int, fast: bool, center: Tensor | None, cache):  # type: ignore[override]
        vals, idx = _select(x, weight, bias, k, fast, center)
        ctx.cache = cache
        vals = vals.clamp_min(0)
        ctx.save_for_backward(x, weight, idx, vals)
        ctx.mark_non_differentiable(idx)
        return vals, idx

    @staticmethod
    def backward(ctx, grad_vals: Tensor, _grad_idx: Tensor):  # type: ignore[override]
        x, weight, idx, vals = ctx.saved_tensors
        g = grad_vals * (vals > 0).to(grad_vals.dtype)  # relu
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = F.embedding_bag(idx, weight, per_sample_weights=g.to(weight.dtype), mode="sum")
        if ctx.needs_input_grad[1]:
            gw = sparse_t_matmul(idx, g, x, weight.shape[0], ctx.cache)
        if ctx.needs_input_grad[2]:
            gb = torch.bincount(idx.reshape(-1), weights=g.reshape(-1), minlength=weight.shape[0]).to(weight.dtype)
        return gx, gw, gb, None, None, None, None


def topk_encode(
    x: Tensor, weight: Tensor, bias: Tensor, k: int, fast: bool = False, center: Tensor | None = None,
    cache: PatternCache | None = None,
) -> tuple[Tensor, Tensor]:
    """(values, indices) of the k largest relu(x @ weightᵀ + bias) per row, with a sparse backward.

    `fast`: choose the latents with a bf16 matmul (on `x − center`, for precision), then compute their
    values exactly in fp32.
    """
    return _TopKEncode.apply(x, weight, bias, k, fast, None if center is None else center.detach(), cache)


def dense_topk_encode(x: Tensor, weight: Tensor, bias: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Reference implementation (plain autograd) of `topk_encode`."""
    vals, idx = F.linear(x, weight, bias).topk(k, dim=-1, sorted=False)
    return vals.clamp_min(0), idx


class _SparseDecode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, vals: Tensor, idx: Tensor, weight: Tensor, cache):  # type: ignore[override]
        ctx.save_for_backward(vals, idx, weight)
        ctx.cache = cache
        return F.embedding_bag(idx, weight, per_sample_weights=vals.to(weight.dtype), mode="sum")

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        vals, idx, weight = ctx.saved_tensors
        gv = gw = None
        grad_out = grad_out.contiguous()
        if ctx.needs_input_grad[0]:
            gv = gather_dot(grad_out, weight, idx).to(vals.dtype)
        if ctx.needs_input_grad[2]:
            gw = sparse_t_matmul(idx, vals, grad_out, weight.shape[0], ctx.cache)
        return gv, None, gw, None


def sparse_decode(vals: Tensor, idx: Tensor, weight: Tensor, cache: PatternCache | None = None) -> Tensor:
    """Σ_j vals[n, j] · weight[idx[n, j]] for each row n (no bias), with a sparse backward.

    `cache`: the `PatternCache` passed to `topk_encode` for the same indices (saves one sort).
    """
    return _SparseDecode.apply(vals, idx, weight, cache)


def dense_decode(vals: Tensor, idx: Tensor, weight: Tensor) -> Tensor:
    """Plain fallback of `sparse_decode`: scatter into a dense [N, M] matrix and multiply."""
    dense = vals.new_zeros(vals.shape[0], weight.shape[0]).scatter(1, idx, vals)
    return dense @ weight
