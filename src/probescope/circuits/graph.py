"""The attribution graph: nodes, adjacency, influence, pruning and the replacement / completeness scores.

Node order (as circuit-tracer's): selected features, error nodes (layer-major: layer 0 positions 0..T-1, ...),
token nodes (positions 0..T-1), logit nodes (most probable first). `adjacency[target, source]` is the direct
effect of source on target in the replacement model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import Tensor


@dataclass
class Graph:
    """An unpruned attribution graph of one prompt."""

    prompt: str
    input_tokens: Tensor  # [T] token ids
    active_features: Tensor  # [n_active, 3] (layer, pos, feature)
    activation_values: Tensor  # [n_active]
    selected_features: Tensor  # [n_features] indices into active_features (the graph's feature nodes)
    logit_tokens: Tensor  # [n_logits]
    logit_probabilities: Tensor  # [n_logits]
    adjacency: Tensor  # [n_nodes, n_nodes], rows = targets, columns = sources
    n_layers: int
    token_strings: list[str] = field(default_factory=list)
    logit_strings: list[str] = field(default_factory=list)
    model: str = ""
    transcoders: str = ""
    seconds: float = 0.0  # time to build it

    @property
    def n_pos(self) -> int:
        return int(self.input_tokens.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.selected_features.shape[0])

    @property
    def n_logits(self) -> int:
        return int(self.logit_tokens.shape[0])

    @property
    def error_slice(self) -> slice:
        return slice(self.n_features, self.n_features + self.n_layers * self.n_pos)

    @property
    def token_slice(self) -> slice:
        e = self.error_slice.stop
        return slice(e, e + self.n_pos)

    @property
    def n_nodes(self) -> int:
        return int(self.adjacency.shape[0])

    def logit_weights(self) -> Tensor:
        """Each logit node's probability; 0 for every other node."""
        w = torch.zeros(self.n_nodes, dtype=torch.float64)
        w[self.n_nodes - self.n_logits:] = self.logit_probabilities.double()
        return w

    def node(self, i: int) -> dict:
        """What node `i` is: {"kind": feature|error|token|logit, layer, pos, ...}."""
        if i < self.n_features:
            layer, pos, feat = (int(x) for x in self.active_features[self.selected_features[i]])
            return {"kind": "feature", "layer": layer, "pos": pos, "feature": feat,
                    "activation": float(self.activation_values[self.selected_features[i]])}
        if i < self.error_slice.stop:
            layer, pos = divmod(i - self.n_features, self.n_pos)
            return {"kind": "error", "layer": layer, "pos": pos}
        if i < self.token_slice.stop:
            pos = i - self.token_slice.start
            return {"kind": "token", "pos": pos, "token": int(self.input_tokens[pos])}
        j = i - self.token_slice.stop
        return {"kind": "logit", "pos": self.n_pos - 1, "token": int(self.logit_tokens[j]),
                "prob": float(self.logit_probabilities[j])}


def normalize_matrix(a: Tensor) -> Tensor:
    """|A| with each row divided by its sum (rows of zeros stay zero)."""
    m = a.abs().double()
    return m / m.sum(1, keepdim=True).clamp_min(1e-10)


def influence(a_norm: Tensor, weights: Tensor, max_iter: int = 1000) -> Tensor:
    """w·(A + A² + …) = w·((I − A)⁻¹ − I) for an acyclic graph (A nilpotent: the series ends after its depth)."""
    cur = weights.double() @ a_norm
    total = cur.clone()
    for _ in range(max_iter):
        if not bool(cur.any()):
            return total
        cur = cur @ a_norm
        total += cur
    raise ValueError(f"influence did not converge in {max_iter} steps: the adjacency matrix has a cycle "
                     "(an attribution graph is acyclic; was it built by probescope.circuits.attribute?)")


def node_influence(graph: Graph) -> Tensor:
    """Influence of every node on the logits, weighted by their probabilities."""
    return influence(normalize_matrix(graph.adjacency), graph.logit_weights())


def find_threshold(scores: Tensor, fraction: float) -> Tensor:
    """The score above which the largest scores carry `fraction` of the total."""
    s = scores.flatten().sort(descending=True).values
    cum = s.cumsum(0) / s.sum().clamp_min(1e-30)
    i = min(int(torch.searchsorted(cum, torch.tensor(fraction, dtype=cum.dtype))), s.numel() - 1)
    return s[i]


class Pruned(NamedTuple):
    node_mask: Tensor  # [n_nodes] bool
    edge_mask: Tensor  # [n_nodes, n_nodes] bool
    cumulative: Tensor  # [n_nodes] cumulative influence share of each node (sorted order)
    influence: Tensor  # [n_nodes]


def prune(graph: Graph, node_threshold: float = 0.8, edge_threshold: float = 0.98) -> Pruned:
    """Keep the nodes carrying `node_threshold` of the influence on the logits (tokens and logits always), then
    the edges carrying `edge_threshold` of it; then drop features and errors left without outgoing edges and
    features without incoming ones, until nothing changes."""
    for name, v in (("node_threshold", node_threshold), ("edge_threshold", edge_threshold)):
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"{name}={v}: use a fraction in [0, 1] (defaults 0.8 nodes, 0.98 edges)")
    n_keep = graph.n_pos + graph.n_logits
    w = graph.logit_weights()
    inf = node_influence(graph)
    node_mask = inf >= find_threshold(inf, node_threshold)
    node_mask[-n_keep:] = True
    a = graph.adjacency.clone()
    a[~node_mask] = 0
    a[:, ~node_mask] = 0
    a_norm = normalize_matrix(a)
    edge_scores = a_norm * (influence(a_norm, w) + w)[:, None]
    edge_mask = edge_scores >= find_threshold(edge_scores, edge_threshold)
    nf = graph.n_features
    while True:
        old = node_mask.clone()
        edge_mask[~node_mask] = False
        edge_mask[:, ~node_mask] = False
        node_mask[:-n_keep] &= edge_mask[:, :-n_keep].any(0)
        node_mask[:nf] &= edge_mask[:nf].any(1)
        if torch.equal(old, node_mask):
            break
    s, order = inf.sort(descending=True)
    cum = torch.zeros_like(inf)
    cum[order] = s.cumsum(0) / s.sum().clamp_min(1e-30)
    return Pruned(node_mask, edge_mask, cum, inf)


def scores(graph: Graph, adjacency: Tensor | None = None) -> dict[str, float]:
    """Replacement score (token influence / (token + error influence)) and completeness (the non-error share
    of each node's inputs, weighted by its influence plus its logit weight); `adjacency` scores a pruned copy."""
    a = graph.adjacency if adjacency is None else adjacency
    w = graph.logit_weights()
    a_norm = normalize_matrix(a)
    inf = influence(a_norm, w)
    tok = float(inf[graph.token_slice].sum())
    err = float(inf[graph.error_slice].sum())
    non_error = 1 - a_norm[:, graph.error_slice].sum(1)
    out = inf + w
    return {"replacement": tok / (tok + err) if tok + err > 0 else float("nan"),
            "completeness": float((non_error * out).sum() / out.sum().clamp_min(1e-30))}


def pruned_adjacency(graph: Graph, pruned: Pruned) -> Tensor:
    """The adjacency with pruned nodes and edges set to 0."""
    a = graph.adjacency.clone()
    a[~pruned.edge_mask] = 0
    return a


def kind_slices(graph: Graph) -> dict[str, slice]:
    """The node ranges of each kind: features, errors, tokens, logits."""
    return {"feature": slice(0, graph.n_features), "error": graph.error_slice, "token": graph.token_slice,
            "logit": slice(graph.n_nodes - graph.n_logits, graph.n_nodes)}


def influence_shares(graph: Graph, adjacency: Tensor | None = None) -> dict[str, dict[str, float]]:
    """How much of the graph goes through each kind of node: `influence` (each kind's share of the total influence
    on the logits, over features, errors and tokens) and `top_logit_inputs` (each kind's share of Σ|edge| into the
    top logit: its direct inputs). `adjacency` reads a pruned copy (`pruned_adjacency`)."""
    a = graph.adjacency if adjacency is None else adjacency
    inf = influence(normalize_matrix(a), graph.logit_weights())
    ks = {k: s for k, s in kind_slices(graph).items() if k != "logit"}
    tot = sum(float(inf[s].sum()) for s in ks.values())
    row = a[graph.n_nodes - graph.n_logits].abs().double()
    rtot = float(row.sum())
    return {"influence": {k: float(inf[s].sum()) / tot if tot > 0 else 0.0 for k, s in ks.items()},
            "top_logit_inputs": {k: float(row[s].sum()) / rtot if rtot > 0 else 0.0 for k, s in ks.items()}}


def top_nodes(graph: Graph, kind: str, n: int, adjacency: Tensor | None = None) -> list[dict]:
    """The `n` nodes of `kind` (feature, error, token) with the most influence on the logits, most first: each
    `Graph.node(i)` with its `index` and `influence` (its share of the total over features, errors and tokens)."""
    ks = kind_slices(graph)
    if kind not in ks or kind == "logit":
        raise ValueError(f"kind={kind!r}: use feature, error or token")
    a = graph.adjacency if adjacency is None else adjacency
    inf = influence(normalize_matrix(a), graph.logit_weights())
    tot = float(inf[: graph.n_nodes - graph.n_logits].sum()) or 1.0
    s = ks[kind]
    vals = inf[s]
    order = vals.argsort(descending=True)[: max(0, n)]
    return [{**graph.node(s.start + int(j)), "index": s.start + int(j), "influence": float(vals[j]) / tot}
            for j in order if float(vals[j]) > 0]
