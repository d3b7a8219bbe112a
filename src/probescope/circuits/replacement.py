"""The local replacement model of one prompt: the model linearised there (attention patterns and norm scales
frozen, `core.sites.linearized`) with every MLP output replaced by its transcoder's output plus an error term
(true MLP output − transcoder output, a constant of the prompt).

One clean forward collects what the graph's nodes are: active features (layer, position, feature, activation),
one error vector per (layer, position), the token embeddings, and the logits at the last position. Inside the
replacement model the MLP outputs are constants — plus, for a transcoder with a skip connection, its linear skip
term of the live MLP input — so the residual stream is linear in everything added to it:
`forward(...)` runs it with vectors added at MLP outputs or embeddings (the exactness oracle), and
`AttributionForward` keeps one batched forward's graph for the backward passes that fill the adjacency matrix.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn

from ..core.sites import (find_blocks, linearized, n_layers, read_sites, run_model, site_hooks, site_module,
                          stop_forward, unwrap, watch_modules)
from ..sae.core import SAE
from .transcoders import skip_of


@contextmanager
def no_param_grads(model: nn.Module) -> Iterator[None]:
    """Parameters out of autograd inside (backward passes then only reach the tensors asked for)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, f in flags:
            p.requires_grad_(f)


@contextmanager
def constant_mlps(mlps: Sequence[nn.Module]) -> Iterator[None]:
    """Inside, each module of `mlps` returns zeros shaped like its input instead of computing anything (its input
    hooks still run): for forwards whose `mlp_out` edits replace the MLP output by a constant, so that the MLP's own
    product — three times attention's cost in a llama block — is not computed only to be thrown away."""
    saved = [m.__dict__.get("forward") for m in mlps]

    def zeros(*args, **kwargs) -> Tensor:
        x = args[0] if args else kwargs["hidden_states"]
        return torch.zeros_like(x)

    try:
        for m in mlps:
            m.forward = zeros
        yield
    finally:
        for m, f in zip(mlps, saved):
            if f is None:
                del m.forward
            else:
                m.forward = f


@dataclass
class Targets:
    """Logit targets: token ids, their probabilities and the demeaned unembedding columns [n, d]."""

    tokens: Tensor
    probs: Tensor
    vectors: Tensor


def salient_logits(logits: Tensor, unembed: Tensor, max_n_logits: int = 10, desired_prob: float = 0.95) -> Targets:
    """The most probable tokens until their probabilities sum to `desired_prob` (at most `max_n_logits`), each
    with its unembedding row minus the mean row (the direction of its demeaned logit)."""
    probs = torch.softmax(logits.float(), -1)
    top_p, top_i = probs.topk(min(max_n_logits, probs.numel()))
    cut = int(torch.searchsorted(top_p.cumsum(0), torch.tensor(desired_prob))) + 1
    top_p, top_i = top_p[:cut], top_i[:cut]
    u = unembed.float()
    return Targets(top_i, top_p, u[top_i] - u.mean(0, keepdim=True))


class ReplacementModel:
    """`model` linearised at `input_ids` ([1, T]) with `transcoders[L]` (checked, folded) replacing MLP L."""

    def __init__(self, model: nn.Module, transcoders: Sequence[SAE], input_ids: Tensor, zero_bos: bool = True,
                 bos_token_id: int | None = None, bos_error: bool = False):
        self.model = model
        self.tcs = list(transcoders)
        self.ids = input_ids
        self.L = n_layers(model)
        self.T = int(input_ids.shape[1])
        self.final_norm = find_blocks(model).final_norm
        if self.final_norm is None:
            raise ValueError("this model has no final norm module probescope can find: circuit tracing needs one")
        head = unwrap(model).get_output_embeddings()
        self.unembed = head.weight.detach()
        sites = ["embed", *[f"mlp_in.{i}" for i in range(self.L)], *[f"mlp_out.{i}" for i in range(self.L)], "logits"]
        self.mlps = [site_module(model, f"mlp_out.{i}") for i in range(self.L)]
        # an MLP that returns one tensor of its input's shape can be skipped where its output is replaced anyway
        plain: dict[int, bool] = {}

        def watch(i: int, a: tuple, o: object) -> None:
            plain[i] = isinstance(o, Tensor) and bool(a) and isinstance(a[0], Tensor) and o.shape == a[0].shape

        with watch_modules(self.mlps, watch), no_param_grads(model), linearized(model, input_ids) as rec:
            self.recorded = rec
            acts = {str(k): v[0] for k, v in read_sites(model, input_ids, None, sites).items()}
        self.plain_mlps = [plain.get(i, False) for i in range(self.L)]
        self.tokens = acts["embed"].float()  # [T, d]
        self.logits = acts["logits"][-1].float()  # [V] at the last position
        self.mlp_in = torch.stack([acts[f"mlp_in.{i}"] for i in range(self.L)]).float()  # [L, T, d]
        self.mlp_out = torch.stack([acts[f"mlp_out.{i}"] for i in range(self.L)]).float()
        drop_first = zero_bos and bos_token_id is not None and int(input_ids[0, 0]) == int(bos_token_id)
        feats, vals, recon = [], [], []
        self.skips = [skip_of(tc) for tc in self.tcs]  # W_skip [d, d] or None per layer
        # the skip term on the prompt: in the replacement model it is recomputed from the live MLP input (circuit-
        # tracer's `skip + (acts − skip).detach()`), so paths through it are part of every edge
        self.skip0 = torch.stack([self.mlp_in[i] @ w.T if w is not None else torch.zeros_like(self.mlp_in[i])
                                  for i, w in enumerate(self.skips)])  # [L, T, d]
        for layer, tc in enumerate(self.tcs):
            with torch.no_grad():
                dense = tc.encode(self.mlp_in[layer]).dense()  # [T, M]
                if drop_first:
                    dense[0] = 0
                recon.append(dense @ tc.W_dec + tc.b_dec + self.skip0[layer])
            nz = dense.nonzero()  # row-major: sorted by (pos, feature)
            feats.append(torch.cat([torch.full((nz.shape[0], 1), layer), nz], 1))
            vals.append(dense[nz[:, 0], nz[:, 1]])
        self.active = torch.cat(feats).long()  # [n, 3] (layer, pos, feature), sorted
        self.values = torch.cat(vals).float()  # [n]
        self.errors = self.mlp_out - torch.stack(recon)  # [L, T, d]: true MLP output − transcoder output
        # the error nodes' vectors: at a zeroed leading BOS, none (circuit-tracer's convention: position 0 of a BOS
        # prompt is the same for every prompt, its MLP output a constant) unless `bos_error`; the forward still
        # adds the true MLP output there, so the model is unchanged — only what the graph attributes
        self.error_nodes = self.errors.clone()
        if drop_first and not bos_error:
            self.error_nodes[:, 0] = 0
        with torch.no_grad():
            self.encoder_rows = torch.cat([self.tcs[int(l_)].W_enc[int(f)][None] for l_, _, f in self.active]) \
                if len(self.active) else torch.zeros(0, self.tokens.shape[1])
            dec = torch.cat([self.tcs[int(l_)].W_dec[int(f)][None] for l_, _, f in self.active]) \
                if len(self.active) else torch.zeros(0, self.tokens.shape[1])
            self.decoder_vecs = dec * self.values[:, None]  # a_s · W_dec[s]: what the feature adds
        self.layer_spans = [(int(s), int(e)) for s, e in zip(
            torch.searchsorted(self.active[:, 0].contiguous(), torch.arange(self.L)),
            torch.searchsorted(self.active[:, 0].contiguous(), torch.arange(self.L), right=True))]
        # per layer, the sources' vectors stacked by position: `blocks[layer]` [T, d, K + 1] holds at position t the
        # decoder vectors of the layer's active features there (padded with zeros to K, the most at any position)
        # and, last, the error vector; a batch of gradients [n, T, d] against it is one batched matmul per layer —
        # every feature's and error's column at once — and `slots[layer]` says where each feature's column lands in
        # its [n, T·(K + 1)] output (the errors' are at t·(K + 1) + K)
        d = self.tokens.shape[1]
        counts = torch.zeros(self.L, self.T, dtype=torch.long)
        if len(self.active):
            counts.index_put_((self.active[:, 0], self.active[:, 1]), torch.ones(len(self.active), dtype=torch.long),
                              accumulate=True)
        self.K = int(counts.max()) if len(self.active) else 0
        self.blocks: list[Tensor] = []
        self.slots: list[Tensor] = []
        for layer, (s, e) in enumerate(self.layer_spans):
            pos = self.active[s:e, 1]
            first = torch.searchsorted(pos.contiguous(), pos.contiguous())  # the run of each feature's position
            slot = pos * (self.K + 1) + (torch.arange(e - s) - first)
            blk = torch.zeros(self.T * (self.K + 1), d)
            blk[slot] = self.decoder_vecs[s:e]
            blk[torch.arange(self.T) * (self.K + 1) + self.K] = self.error_nodes[layer]
            self.blocks.append(blk.view(self.T, self.K + 1, d).transpose(1, 2).contiguous())
            self.slots.append(slot)
        self.err_slots = torch.arange(self.T) * (self.K + 1) + self.K

    def mlp_output(self, layer: int, mlp_in: Tensor, base: Tensor) -> Tensor:
        """MLP `layer`'s output in the replacement model: `base` (a constant, [.., T, d]) minus the prompt's skip term
        plus the skip term of the live input `mlp_in` (differentiable): the constant where there is no skip.
        Written `base + (mlp_in − prompt's mlp_in)·W_skipᵀ`, so that on the prompt itself it is `base` to the bit
        (a − s + s would round, and the linearised norms of a deep stack amplify rounding)."""
        w = self.skips[layer]
        if w is None:
            return base
        return base + (mlp_in - self.mlp_in[layer].to(mlp_in.dtype)) @ w.T.to(mlp_in.dtype)

    @property
    def n_features(self) -> int:
        return int(self.active.shape[0])

    def targets(self, max_n_logits: int = 10, desired_prob: float = 0.95) -> Targets:
        return salient_logits(self.logits, self.unembed, max_n_logits, desired_prob)

    @torch.no_grad()
    def preactivations(self, layer: int, mlp_in: Tensor) -> Tensor:
        """Encoder pre-activations of layer `layer`'s transcoder ([..., M])."""
        tc = self.tcs[layer]
        return mlp_in.float() @ tc.W_enc.T + tc._encoder_bias()

    # -- the replacement model's own forward (the oracle) ------------------------------------------------
    @torch.no_grad()
    def forward(self, mlp_add: Mapping[tuple[int, int], Tensor] | None = None,
                embed_add: Mapping[int, Tensor] | None = None) -> tuple[Tensor, Tensor]:
        """Run the replacement model with vectors added at MLP outputs ((layer, pos) → [d]) and embeddings
        (pos → [d]); feature activations stay as they were (MLP outputs are constants). Returns every MLP input
        [L, T, d] and the logits at the last position [V]."""
        outs = self.mlp_out.clone()
        for (layer, pos), v in (mlp_add or {}).items():
            outs[layer, pos] += v.float()
        emb = self.tokens.clone()
        for pos, v in (embed_add or {}).items():
            emb[pos] += v.float()
        got: dict[str, Tensor] = {}

        def put(x: Tensor, val: Tensor) -> Tensor:
            return val.to(x.dtype).expand_as(x)

        def read(name: str):
            def fn(x: Tensor) -> None:
                got[name] = x[0].float()
            return fn

        edits: dict = {"embed": lambda x: put(x, emb), "logits": read("logits")}
        for i in range(self.L):
            edits[f"mlp_in.{i}"] = read(f"mlp_in.{i}")
            edits[f"mlp_out.{i}"] = (lambda i: lambda x: put(x, self.mlp_output(i, got[f"mlp_in.{i}"], outs[i])))(i)
        with linearized(self.model, self.ids, self.recorded), site_hooks(self.model, edits):
            run_model(self.model, self.ids, None)
        return torch.stack([got[f"mlp_in.{i}"] for i in range(self.L)]), got["logits"][-1]


class AttributionForward:
    """One forward of `batch` copies of the prompt through the replacement model, kept for backward passes.

    Leaves: a zero tensor added at every MLP output and at the embeddings; gradients of a target reaching them
    are that target's inputs from every source (contracted with the sources' vectors in `rows`)."""

    def __init__(self, rm: ReplacementModel, batch: int):
        self.rm, self.B = rm, batch
        L, T = rm.L, rm.T
        d = rm.tokens.shape[1]
        dtype = next(rm.model.parameters()).dtype
        self.out_leaves = [torch.zeros(batch, T, d, dtype=dtype, requires_grad=True) for _ in range(L)]
        self.embed_leaf = torch.zeros(batch, T, d, dtype=dtype, requires_grad=True)
        self.mlp_in: list[Tensor | None] = [None] * L

        def keep(i: int):
            def fn(x: Tensor) -> None:
                self.mlp_in[i] = x
            return fn

        resid: list[Tensor] = []
        edits: dict = {"embed": lambda x: rm.tokens.to(x.dtype).expand_as(x) + self.embed_leaf,
                       f"resid_post.{L - 1}": lambda x: resid.append(x)}
        for i in range(L):
            edits[f"mlp_in.{i}"] = keep(i)
            edits[f"mlp_out.{i}"] = (lambda i: lambda x: rm.mlp_output(i, self.mlp_in[i], rm.mlp_out[i].to(x.dtype)
                                                                      .expand_as(x)) + self.out_leaves[i])(i)
        ids = rm.ids.expand(batch, -1)
        with no_param_grads(rm.model), torch.enable_grad(), \
                constant_mlps([m for m, p in zip(rm.mlps, rm.plain_mlps) if p]):
            with linearized(rm.model, rm.ids, rm.recorded):
                with site_hooks(rm.model, edits, stop_after=f"resid_post.{L - 1}"), stop_forward():
                    run_model(rm.model, ids, None)
                self.final = rm.final_norm(resid[0])  # the unembedding's input, norm scale frozen

    def rows(self, layers: Tensor, positions: Tensor, vectors: Tensor, n_cols: int) -> Tensor:
        """Adjacency rows of up to `B` targets: target i reads `vectors[i]` at MLP input `layers[i]` (a feature's
        encoder row) or, for layer L, at the unembedding's input (a demeaned logit direction), position
        `positions[i]`. Columns: active features, errors (layer-major), tokens (then logits, left zero)."""
        rm, n = self.rm, len(layers)
        if n > self.B:
            raise ValueError(f"{n} targets in one batch of {self.B}")
        outputs, grads = [], []
        batch_idx = torch.arange(n)
        for layer in sorted(set(int(x) for x in layers)):
            sel = (layers == layer).nonzero().flatten()
            out = self.final if layer == rm.L else self.mlp_in[layer]
            g = torch.zeros_like(out)
            g[batch_idx[sel], positions[sel]] = vectors[sel].to(g.dtype)
            outputs.append(out)
            grads.append(g)
        top = max(int(x) for x in layers)
        leaves = self.out_leaves[:min(top, rm.L)] + [self.embed_leaf]
        got = torch.autograd.grad(outputs, leaves, grads, retain_graph=True, allow_unused=True)
        row = torch.zeros(n, n_cols)
        err0, tok0 = rm.n_features, rm.n_features + rm.L * rm.T
        for layer, g in enumerate(got[:-1]):
            if g is None:
                continue
            # [T, n, d] @ [T, d, K + 1]: at each position, every source there (features, then the error)
            per = torch.bmm(g[:n].float().transpose(0, 1), rm.blocks[layer]).transpose(0, 1).reshape(n, -1)
            a, b = rm.layer_spans[layer]
            row[:, a:b] = per[:, rm.slots[layer]]
            row[:, err0 + layer * rm.T: err0 + (layer + 1) * rm.T] = per[:, rm.err_slots]
        if got[-1] is not None:
            row[:, tok0:tok0 + rm.T] = torch.einsum("btd,td->bt", got[-1][:n].float(), rm.tokens)
        return row
