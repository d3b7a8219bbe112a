"""`attribute(model, tokenizer, prompt, transcoders)`: the attribution graph of one prompt.

Logit rows first (one backward pass per batch of targets), then feature rows in order of their estimated
influence on the logits (re-estimated every `update_interval` batches from the rows computed so far), up to
`max_feature_nodes`; each batch injects its targets' directions as gradients at the residual stream and reads
every source's direct effect from one backward pass.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from ..core.models.registry import model_id
from ..core.progress import progress
from ..sae.core import SAE
from .graph import Graph
from .replacement import AttributionForward, ReplacementModel
from .transcoders import check_transcoders, load_transcoders


def normalized_rows(rows: Tensor) -> Tensor:
    """|rows| with each row divided by its sum (clamped at 1e-8), float32: a row's share of its target's inputs. A
    row's normalisation depends on that row alone, so `attribute` normalises each batch of rows once, as it lands."""
    a = rows.abs().float()
    return a / a.sum(1, keepdim=True).clamp_min(1e-8)


def partial_influence(normed: Tensor, logit_p: Tensor, row_to_node: Tensor, max_iter: int = 256) -> Tensor:
    """Influence on the logits of every column node, from the (row-normalised, `normalized_rows`) rows computed so
    far (row i is node `row_to_node[i]`); nodes without a row pass nothing on. float32, as circuit-tracer."""
    n_cols = normed.shape[1]
    prod = torch.zeros(n_cols, dtype=normed.dtype)
    prod[n_cols - len(logit_p):] = logit_p.to(normed.dtype)
    # influence passes on only through nodes that have rows: iterate on the square block between them (rows ×
    # rows), then spread the summed weights over every column once — w·(A + A² + …) with A's columns cut to the rows
    q = prod[row_to_node]
    between = normed[:, row_to_node]
    acc = torch.zeros_like(q)
    for _ in range(max_iter):
        if not bool(q.any()):
            return acc @ normed
        acc += q
        q = q @ between
    raise ValueError("partial influence did not converge: the rows form a cycle")


def tokenize(tokenizer: Any, prompt: str | Sequence[int] | Tensor, max_len: int) -> Tensor:
    """[1, T] ids of `prompt` (text, ids, or a tensor), checked: not empty, at most `max_len` tokens."""
    if isinstance(prompt, str):
        if not prompt.strip():
            raise ValueError("prompt='' is empty: pass the text whose next token the graph explains, "
                             "e.g. --prompt 'The capital of France is'")
        ids = tokenizer(prompt, return_tensors="pt").input_ids
    else:
        ids = torch.as_tensor(prompt, dtype=torch.long).reshape(1, -1)
    if ids.shape[1] == 0:
        raise ValueError("the prompt has no tokens: pass a non-empty prompt")
    if ids.shape[1] > max_len:
        raise ValueError(f"the prompt has {ids.shape[1]} tokens, more than max_tokens={max_len}: shorten it or raise "
                         "--max-tokens (the graph's rows grow with every token)")
    return ids


def attribute(
    model: nn.Module,
    tokenizer: Any,
    prompt: str | Sequence[int] | Tensor,
    transcoders: "Sequence[SAE] | str",
    *,
    max_feature_nodes: int | None = None,
    max_n_logits: int = 10,
    desired_logit_prob: float = 0.95,
    batch_size: int = 32,
    update_interval: int = 4,
    zero_bos: bool = True,
    bos_error: bool = False,
    max_tokens: int = 64,
    quiet: bool | None = None,
) -> Graph:
    """The unpruned attribution graph of `prompt`'s next token through `transcoders` (one per layer, or a folder).

    `max_feature_nodes` (None: every active feature) caps the feature nodes, taken in order of influence. At a
    leading BOS (`zero_bos`) there are no feature nodes and, as in circuit-tracer, no error nodes: its MLP output is a
    constant of every prompt; `bos_error=True` makes it error nodes instead."""
    if max_feature_nodes is not None and (isinstance(max_feature_nodes, bool) or int(max_feature_nodes) <= 0):
        raise ValueError(f"max_feature_nodes={max_feature_nodes}: use a positive number of feature nodes "
                         "(or None for all active features)")
    if not 1 <= max_n_logits or not 0.0 < desired_logit_prob <= 1.0:
        raise ValueError(f"max_n_logits={max_n_logits}, desired_logit_prob={desired_logit_prob}: use ≥ 1 logits "
                         "and a probability in (0, 1]")
    if batch_size < 1 or update_interval < 1:
        raise ValueError(f"batch_size={batch_size}, update_interval={update_interval}: both must be ≥ 1")
    where = "transcoders"
    if isinstance(transcoders, (str, bytes)) or hasattr(transcoders, "__fspath__"):
        where = str(transcoders)
        transcoders = load_transcoders(transcoders)
    tcs = check_transcoders(model, transcoders, where)
    ids = tokenize(tokenizer, prompt, max_tokens)
    t0 = time.perf_counter()
    rm = ReplacementModel(model, tcs, ids, zero_bos=zero_bos, bos_token_id=getattr(tokenizer, "bos_token_id", None),
                          bos_error=bos_error)
    tg = rm.targets(max_n_logits, desired_logit_prob)
    n_feat, L, T = rm.n_features, rm.L, rm.T
    n_logits = len(tg.tokens)
    logit_off = n_feat + (L + 1) * T
    n_cols = logit_off + n_logits
    n_sel = n_feat if max_feature_nodes is None else min(int(max_feature_nodes), n_feat)
    batch = max(1, min(batch_size, n_sel))
    rows = torch.zeros(n_sel + n_logits, n_cols)
    normed = torch.zeros(n_sel + n_logits, n_cols) if n_sel < n_feat else None  # for the influence ordering
    row_to_node = torch.zeros(n_sel + n_logits, dtype=torch.long)
    with progress(n_logits + n_sel, "attribute", unit="row", quiet=quiet) as bar:
        # the logit rows (≤ max_n_logits) from a forward of their own size: a backward pass costs what its batch is
        lb = max(1, min(batch_size, n_logits))
        fwd = AttributionForward(rm, lb)
        for i in range(0, n_logits, lb):
            j = min(i + lb, n_logits)
            m = j - i
            rows[i:j] = fwd.rows(torch.full((m,), L), torch.full((m,), T - 1), tg.vectors[i:j], n_cols)
            if normed is not None:
                normed[i:j] = normalized_rows(rows[i:j])
            row_to_node[i:j] = torch.arange(i, j) + logit_off
            bar.advance(m)
        del fwd
        fwd = AttributionForward(rm, batch) if n_sel else None
        st, visited = n_logits, torch.zeros(n_feat, dtype=torch.bool)
        while st - n_logits < n_sel:
            left = n_sel - (st - n_logits)
            if n_sel == n_feat:
                pending = (~visited).nonzero().flatten()
            else:
                inf = partial_influence(normed[:st], tg.probs, row_to_node[:st])
                rank = inf[:n_feat].argsort(descending=True)
                pending = rank[~visited[rank]][:min(update_interval * batch, left)]
                # the chunk is visited whole before the influence is recomputed, so its order is free: by layer, each
                # batch's backward pass stops near its own deepest target instead of the chunk's (same rows)
                pending = pending[rm.active[pending, 0].argsort(stable=True)]
            for k in range(0, len(pending), batch):
                idx = pending[k:k + batch]
                r = fwd.rows(rm.active[idx, 0], rm.active[idx, 1], rm.encoder_rows[idx], n_cols)
                rows[st:st + len(idx)] = r
                if normed is not None:
                    normed[st:st + len(idx)] = normalized_rows(r)
                row_to_node[st:st + len(idx)] = idx
                visited[idx] = True
                st += len(idx)
                bar.advance(len(idx))
    selected = visited.nonzero().flatten()
    if n_sel < n_feat:
        rows = rows[:, torch.cat([selected, torch.arange(n_feat, n_cols)])]
    rows = rows[row_to_node.argsort()]  # features (in node order) first, then logits
    n_nodes = rows.shape[1]
    adj = torch.zeros(n_nodes, n_nodes)
    adj[:n_sel] = rows[:n_sel]
    adj[n_nodes - n_logits:] = rows[n_sel:]
    del fwd
    toks = [tokenizer.decode([int(t)]) for t in ids[0]]
    graph = Graph(prompt=prompt if isinstance(prompt, str) else tokenizer.decode(ids[0]), input_tokens=ids[0].clone(),
                  active_features=rm.active, activation_values=rm.values, selected_features=selected,
                  logit_tokens=tg.tokens, logit_probabilities=tg.probs, adjacency=adj, n_layers=L,
                  token_strings=toks, logit_strings=[tokenizer.decode([int(t)]) for t in tg.tokens],
                  model=model_id(model), transcoders=where, seconds=time.perf_counter() - t0)
    return graph
