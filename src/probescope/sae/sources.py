"""Where training activations come from: a tensor, an activation store, or a model run on texts on the fly.

Every source yields *global* batches `(x, y)` (y is None for autoencoders) in an order fixed by a seed, and
can start at any batch index (`skip`), which is what a resumed run needs: batch i is the same whether the
run was interrupted or not. DDP ranks draw the same global batch and each keeps its slice.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterator, Protocol, Sequence

import torch
from torch import Tensor

Batch = tuple[Tensor, "Tensor | None"]


class ActivationSource(Protocol):
    d_in: int
    d_out: int
    hook_in: str
    hook_out: str
    model: str

    def batches(self, batch_size: int, seed: int = 0, skip: int = 0) -> Iterator[Batch]:
        """Endless global batches (epochs repeat with new orders), starting at batch index `skip`."""
        ...


def _tensor_hash(*ts: "Tensor | None") -> str:
    import hashlib

    h = hashlib.sha256()
    for t in ts:
        if t is not None:
            h.update(str((tuple(t.shape), str(t.dtype))).encode())
            h.update(t.detach().contiguous().cpu().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def source_fingerprint(source: Any) -> dict[str, Any]:
    """What identifies the data of a source (a resumed run must read the same data)."""
    fp = getattr(source, "fingerprint", None)
    if callable(fp):
        return fp()
    return {"kind": type(source).__name__, "model": getattr(source, "model", ""), "hook_in": getattr(source, "hook_in", "")}


class TensorSource:
    """Activations already in memory: `x` [N, d_in] (and `y` [N, d_out] for transcoders)."""

    def __init__(self, x: Tensor, y: Tensor | None = None, hook_in: str = "", hook_out: str = "", model: str = ""):
        if x.dim() != 2:
            raise ValueError(f"x has shape {tuple(x.shape)}: pass a [tokens, d] matrix (flatten [B, T, d] first)")
        if y is not None and y.shape[0] != x.shape[0]:
            raise ValueError(f"x has {x.shape[0]} rows and y {y.shape[0]}: they must pair up")
        self.x, self.y = x, y
        self.d_in = x.shape[1]
        self.d_out = x.shape[1] if y is None else y.shape[1]
        self.hook_in, self.hook_out, self.model = hook_in, hook_out or hook_in, model

    def fingerprint(self) -> dict[str, Any]:
        return {"kind": "tensor", "data": _tensor_hash(self.x, self.y), "hook_in": self.hook_in, "hook_out": self.hook_out}

    def batches(self, batch_size: int, seed: int = 0, skip: int = 0) -> Iterator[Batch]:
        n = self.x.shape[0]
        per_epoch = n // batch_size
        if per_epoch == 0:
            raise ValueError(f"the source has {n} tokens, fewer than one batch of {batch_size}: lower --batch-size")
        i = skip
        while True:
            epoch, j = divmod(i, per_epoch)
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
            while j < per_epoch:
                sel = perm[j * batch_size : (j + 1) * batch_size]
                yield self.x[sel].float(), (None if self.y is None else self.y[sel].float())
                j += 1
                i += 1


class StoreSource:
    """A probescope activation store (one residual layer). Skipping re-reads shards, computes nothing."""

    def __init__(self, path: str | Path, layer: int | None = None, shuffle_buffer: int = 1 << 18):
        from ..core.store import ActivationStore

        self.store = ActivationStore(path)
        if layer is None:
            if len(self.store.layers) != 1:
                raise ValueError(f"the store {path} has layers {self.store.layers}: pick one with --layer")
            layer = self.store.layers[0]
        if layer not in self.store.layers:
            raise ValueError(f"layer {layer} is not in the store {path} (it has {self.store.layers}): pass --layer")
        self.layer = layer
        self.shuffle_buffer = shuffle_buffer
        self.d_in = self.d_out = self.store.d_model
        self.hook_in = self.hook_out = f"resid_post.{layer}"
        self.model = str(self.store.manifest.get("model", ""))

    def fingerprint(self) -> dict[str, Any]:
        st = self.store.settings
        return {"kind": "store", "model": st.model, "layer": self.layer, "data_hash": st.data_hash,
                "context_len": st.context_len, "n_contexts": st.n_contexts, "dtype": st.dtype,
                "committed_shards": len(self.store.done_shards()), "shuffle_buffer": self.shuffle_buffer}

    def batches(self, batch_size: int, seed: int = 0, skip: int = 0) -> Iterator[Batch]:
        it = self.store.batches(self.layer, batch_size, seed=seed, shuffle_buffer=self.shuffle_buffer, loop=True)
        for i, x in enumerate(it):
            if i >= skip:
                yield x, None


class ModelSource:
    """Run the model on fixed-length contexts cut from `texts` and train on its activations as they come.

    Contexts are permuted per epoch from the seed and captured in chunks of about four batches, whose
    tokens are shuffled with a generator seeded by (seed, epoch, chunk): batch i never depends on how the
    run got there, so skipping costs no forward passes. BOS tokens are dropped (their activations are outliers).
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        texts: Sequence[str],
        hook_in: str | int,
        hook_out: str | int | None = None,
        context_len: int = 128,
        max_contexts: int | None = None,
        capture_batch: int = 16,
    ):
        from ..core.models.registry import model_id
        from ..core.store import make_contexts
        from ..core.sites import check_forward_order

        self.lm, self.tokenizer = model, tokenizer
        hin, hout = check_forward_order(model, hook_in, hook_out if hook_out is not None else hook_in)
        self.hook_in, self.hook_out = str(hin), str(hout)
        self.contexts = make_contexts(tokenizer, list(texts), context_len, max_contexts)
        bos = tokenizer.bos_token_id
        self.drop_first = bos is not None and bool((self.contexts[:, 0] == bos).all())
        self.capture_batch = capture_batch
        self.model = model_id(model)
        probe = self._capture(self.contexts[:1])
        self.d_in = probe[0].shape[-1]
        self.d_out = self.d_in if probe[1] is None else probe[1].shape[-1]
        keep = self._keep(self.contexts[:1]).sum().item()
        self.tokens_per_context = int(keep)

    def fingerprint(self) -> dict[str, Any]:
        return {"kind": "model", "model": self.model, "hook_in": self.hook_in, "hook_out": self.hook_out,
                "contexts": _tensor_hash(self.contexts)}

    def _keep(self, ids: Tensor) -> Tensor:
        keep = torch.ones_like(ids, dtype=torch.bool)
        if self.drop_first:
            keep[:, 0] = False
        return keep

    def _capture(self, ids: Tensor) -> tuple[Tensor, Tensor | None]:
        from ..core.sites import read_sites

        xs, ys = [], []
        hooks = [self.hook_in] if self.hook_out == self.hook_in else [self.hook_in, self.hook_out]
        for s in range(0, ids.shape[0], self.capture_batch):
            b = ids[s : s + self.capture_batch]
            acts = {str(k): v for k, v in read_sites(self.lm, b, torch.ones_like(b), hooks).items()}
            keep = self._keep(b).to(acts[self.hook_in].device)
            xs.append(acts[self.hook_in][keep].float().cpu())
            if self.hook_out != self.hook_in:
                ys.append(acts[self.hook_out][keep].float().cpu())
        return torch.cat(xs), (torch.cat(ys) if ys else None)

    def batches(self, batch_size: int, seed: int = 0, skip: int = 0) -> Iterator[Batch]:
        n_ctx = self.contexts.shape[0]
        ctx_per_chunk = max(1, math.ceil(4 * batch_size / max(1, self.tokens_per_context)))
        ctx_per_chunk = min(ctx_per_chunk, n_ctx)
        per_chunk = ctx_per_chunk * self.tokens_per_context // batch_size
        if per_chunk == 0:
            raise ValueError(
                f"{n_ctx} contexts give {n_ctx * self.tokens_per_context} tokens, fewer than one batch of "
                f"{batch_size}: bring more text or lower --batch-size"
            )
        chunks_per_epoch = n_ctx // ctx_per_chunk
        i = skip
        while True:
            chunk_global, j = divmod(i, per_chunk)
            epoch, chunk = divmod(chunk_global, chunks_per_epoch)
            perm = torch.randperm(n_ctx, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
            ids = self.contexts[perm[chunk * ctx_per_chunk : (chunk + 1) * ctx_per_chunk]]
            x, y = self._capture(ids)
            g = torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 100_003 + chunk)
            order = torch.randperm(x.shape[0], generator=g)
            while j < per_chunk:
                sel = order[j * batch_size : (j + 1) * batch_size]
                yield x[sel], (None if y is None else y[sel])
                j += 1
                i += 1
