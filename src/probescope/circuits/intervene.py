"""Interventions that test a graph: set, scale or zero transcoder features at (layer, position, feature) and read
the logits, in four settings:

- `direct`: the replacement model of the graph (attention patterns and norm scales frozen at the prompt, error
  terms constant) with every other feature held at its value on the prompt: only direct paths exist, so a
  feature's change moves a demeaned logit by exactly the graph's edge (the graph's own claim, checked);
- `frozen`: the same, but every later feature is re-encoded from its (changed) MLP input by its transcoder;
- `free`: the replacement model with attention and norms recomputed (errors still constant);
- `model`: the real model (real MLPs); the change of a feature's activation enters as that change × its decoder
  row at `mlp_out.L`, where the feature is read by the transcoder from the live `mlp_in.L`.

Diagnostics between them (which half of the frozen world an edge's sign depends on): `attn_frozen` and
`norms_frozen` (the replacement model, features re-encoded, only attention patterns or only norm scales frozen) and
`model_frozen` (the real MLPs with attention and norms frozen).

Every hook goes through `core.sites` (`site_hooks`, `linearized`).

    from probescope.circuits import intervene, check_edges
    r = intervene(model, ids, transcoders, [(12, 5, 301, 0.0)], mode="frozen")
    check_edges(model, graph, transcoders, n=20)   # predicted vs measured effects of the top edges into the top logit
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import torch
from torch import Tensor, nn

from ..core.sites import linearized, run_model, site_hooks
from ..sae.core import SAE
from .config import ALL_MODES, MODES
from .graph import Graph
from .replacement import ReplacementModel, no_param_grads

OPS = ("set", "scale")
FROZEN_HALF = {"direct": "all", "frozen": "all", "attn_frozen": "attention", "norms_frozen": "norms", "free": None,
               "model": None, "model_frozen": "all"}  # what `linearized` freezes in each setting (None: nothing)
REAL = ("model", "model_frozen")  # settings with the real MLPs


def check_mode(mode: str) -> str:
    """`mode` when it is one of the settings (`config.ALL_MODES`), else an error naming them."""
    if mode not in ALL_MODES:
        raise ValueError(f"mode={mode!r}: use one of {', '.join(ALL_MODES)}")
    return mode


@dataclass(frozen=True)
class Intervention:
    """Feature `feature` of layer `layer`'s transcoder at token `pos`: set to `value` (op "set"; 0 zeroes it) or
    multiplied by `value` (op "scale")."""

    layer: int
    pos: int
    feature: int
    value: float
    op: str = "set"


def parse_intervention(text: str) -> Intervention:
    """'L,P,F=V' sets feature F of layer L at position P to V ('=0' zeroes it); 'L,P,F*V' scales it by V."""
    m = re.fullmatch(r"\s*(-?\d+)\s*,\s*(-?\d+)\s*,\s*(-?\d+)\s*([=*])\s*([^\s]+)\s*", text)
    if m is None:
        raise ValueError(f"intervention {text!r}: write LAYER,POS,FEATURE=VALUE (set; =0 zeroes) or "
                         "LAYER,POS,FEATURE*FACTOR (scale), e.g. '12,5,301=0'")
    try:
        value = float(m.group(5))
    except ValueError:
        raise ValueError(f"intervention {text!r}: {m.group(5)!r} is not a number") from None
    return Intervention(int(m.group(1)), int(m.group(2)), int(m.group(3)), value,
                        "set" if m.group(4) == "=" else "scale")


def _as_interventions(items: Iterable[Any], n_layers: int, n_pos: int, tcs: Sequence[SAE]) -> list[Intervention]:
    out = []
    for it in items:
        if isinstance(it, str):
            it = parse_intervention(it)
        elif not isinstance(it, Intervention):
            t = tuple(it)
            if len(t) not in (4, 5):
                raise ValueError(f"intervention {it!r}: give (layer, position, feature, value[, 'set'|'scale'])")
            it = Intervention(int(t[0]), int(t[1]), int(t[2]), float(t[3]), *(t[4:]))
        if it.op not in OPS:
            raise ValueError(f"intervention {it}: op={it.op!r}; use one of {', '.join(OPS)}")
        if not 0 <= it.layer < n_layers:
            raise ValueError(f"intervention {it}: layer={it.layer} is outside the model's 0..{n_layers - 1}")
        if not 0 <= it.pos < n_pos:
            raise ValueError(f"intervention {it}: pos={it.pos} is outside the prompt's 0..{n_pos - 1}")
        m = tcs[it.layer].n_latents
        if not 0 <= it.feature < m:
            raise ValueError(f"intervention {it}: feature={it.feature} is outside layer {it.layer}'s 0..{m - 1}")
        if not math.isfinite(it.value):
            raise ValueError(f"intervention {it}: value={it.value} is not finite; pass a finite number")
        out.append(it)
    return out


def _apply(acts: Tensor, items: Sequence[Intervention]) -> Tensor:
    """`acts` [T, M] with the interventions of one layer applied (a copy)."""
    acts = acts.clone()
    for it in items:
        if it.op == "set":
            acts[it.pos, it.feature] = it.value
        else:
            acts[it.pos, it.feature] = acts[it.pos, it.feature] * it.value
    return acts


@dataclass
class InterventionResult:
    """Logits at the last position with the interventions ([V]) and without them, in the same setting."""

    mode: str
    logits: Tensor
    clean_logits: Tensor
    interventions: list[Intervention]

    def demeaned_change(self) -> Tensor:
        """Change of every demeaned logit (logit − mean logit) [V]: what a graph's logit node measures."""
        return (self.logits - self.logits.mean()) - (self.clean_logits - self.clean_logits.mean())


class Intervener:
    """The four settings on one prompt (`input_ids` [1, T]); the replacement model is built once."""

    def __init__(self, model: nn.Module, transcoders: Sequence[SAE], input_ids: Tensor, zero_bos: bool = True,
                 bos_token_id: int | None = None):
        self.rm = ReplacementModel(model, transcoders, input_ids, zero_bos, bos_token_id)
        self.model, self.tcs, self.ids = model, self.rm.tcs, input_ids
        self.drop_first = zero_bos and bos_token_id is not None and int(input_ids[0, 0]) == int(bos_token_id)
        rm = self.rm
        self.clean_acts = []  # [T, M] per layer, as the graph saw them
        for layer, tc in enumerate(self.tcs):
            d = torch.zeros(rm.T, tc.n_latents)
            s, e = rm.layer_spans[layer]
            d[rm.active[s:e, 1], rm.active[s:e, 2]] = rm.values[s:e]
            self.clean_acts.append(d)
        self._clean: dict[str, Tensor] = {}

    def _encode(self, layer: int, x: Tensor) -> Tensor:
        acts = self.tcs[layer].encode(x.float()).dense()
        if self.drop_first:
            acts[0] = 0
        return acts

    @torch.no_grad()
    def _run(self, mode: str, items: Sequence[Intervention], errors: Sequence[tuple[int, int]] = (),
             tokens: Sequence[int] = ()) -> Tensor:
        """Last-position logits in setting `mode` with `items` applied, the error terms at `errors` ((layer, pos))
        removed (the real model: its MLP output there replaced by the transcoder's reconstruction) and the input
        embeddings at `tokens` (positions) zeroed."""
        rm = self.rm
        by_layer: dict[int, list[Intervention]] = {}
        for it in items:
            by_layer.setdefault(it.layer, []).append(it)
        err_pos: dict[int, list[int]] = {}
        for layer, pos in errors:
            err_pos.setdefault(layer, []).append(pos)
        seen: dict[int, Tensor] = {}
        got: list[Tensor] = []

        def read(i: int):
            def fn(x: Tensor) -> None:
                seen[i] = x[0]
            return fn

        def replace(i: int):
            tc = self.tcs[i]

            def fn(x: Tensor) -> Tensor:
                if mode in REAL:
                    if i not in by_layer and i not in err_pos:
                        return None
                    live = seen.pop(i)
                    y = x.float()
                    if i in err_pos:  # the MLP's output at those positions: the transcoder's reconstruction
                        from .transcoders import transcode

                        recon = transcode(tc, live.float())
                        y = y.clone()
                        y[0, err_pos[i]] = recon[err_pos[i]].to(y.dtype)
                    if i in by_layer:
                        old = self._encode(i, live)
                        y = y + ((_apply(old, by_layer[i]) - old) @ tc.W_dec)[None]
                    return y.to(x.dtype)
                live = seen.pop(i) if i in seen else None
                acts = self.clean_acts[i] if mode == "direct" else self._encode(i, live)
                acts = _apply(acts, by_layer.get(i, ()))
                err = rm.errors[i]
                if i in err_pos:
                    err = err.clone()
                    err[err_pos[i]] = 0
                out = acts @ tc.W_dec + tc.b_dec + err + rm.skip0[i]
                if live is not None:  # a skip connection reads the live input (direct: attention frozen, linear)
                    out = rm.mlp_output(i, live.float(), out)
                return out[None].to(x.dtype).expand_as(x)
            return fn

        edits: dict = {"logits": lambda x: got.append(x[0, -1].float())}
        if tokens:
            def no_tokens(x: Tensor) -> Tensor:
                x = x.clone()
                x[:, list(tokens)] = 0
                return x

            edits["embed"] = no_tokens
        for i in range(rm.L):
            if mode != "direct" or rm.skips[i] is not None:
                edits[f"mlp_in.{i}"] = read(i)
            edits[f"mlp_out.{i}"] = replace(i)
        with no_param_grads(self.model):
            if FROZEN_HALF[mode] is not None:
                with linearized(self.model, self.ids, rm.recorded, FROZEN_HALF[mode]), site_hooks(self.model, edits):
                    run_model(self.model, self.ids, None)
            else:
                with site_hooks(self.model, edits):
                    run_model(self.model, self.ids, None)
        return got[-1]

    def run(self, interventions: Iterable[Any], mode: str = "frozen", zero_errors: Sequence[tuple[int, int]] = (),
            zero_tokens: Sequence[int] = ()) -> InterventionResult:
        """The interventions in setting `mode`; also removes the error terms at `zero_errors` ((layer, pos)) and
        zeroes the input embeddings at `zero_tokens` (positions): what ablating an error or a token node does."""
        check_mode(mode)
        items = _as_interventions(interventions, self.rm.L, self.rm.T, self.tcs)
        for layer, pos in zero_errors:
            if not (0 <= layer < self.rm.L and 0 <= pos < self.rm.T):
                raise ValueError(f"error node (layer {layer}, position {pos}) is outside the model's 0..{self.rm.L - 1} "
                                 f"layers or the prompt's 0..{self.rm.T - 1} positions")
        for pos in zero_tokens:
            if not 0 <= pos < self.rm.T:
                raise ValueError(f"token position {pos} is outside the prompt's 0..{self.rm.T - 1}")
        if mode not in self._clean:
            self._clean[mode] = self._run(mode, [])
        return InterventionResult(mode, self._run(mode, items, list(zero_errors), list(zero_tokens)),
                                  self._clean[mode], items)


def intervene(model: nn.Module, input_ids: Tensor, transcoders: "Sequence[SAE] | str",
              interventions: Iterable[Any], mode: str = "frozen", zero_bos: bool = True,
              bos_token_id: int | None = None) -> InterventionResult:
    """Logits of `input_ids` ([1, T]) with features set/scaled (`(layer, pos, feature, value)` sets; a 5th item
    "scale" scales; or `Intervention`s, or 'L,P,F=V' / 'L,P,F*V' strings) in setting `mode` (see module doc)."""
    from .transcoders import check_transcoders, load_transcoders

    check_mode(mode)
    if isinstance(transcoders, (str, bytes)) or hasattr(transcoders, "__fspath__"):
        transcoders = load_transcoders(transcoders)
    tcs = check_transcoders(model, transcoders, "transcoders")
    ids = torch.as_tensor(input_ids, dtype=torch.long).reshape(1, -1)
    return Intervener(model, tcs, ids, zero_bos, bos_token_id).run(interventions, mode)


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson correlation over the pairs where both are finite (NaN with fewer than 2 or a constant side)."""
    keep = [(p, m) for p, m in zip(x, y) if math.isfinite(p) and math.isfinite(m)]
    a = torch.tensor([p for p, _ in keep], dtype=torch.float64)
    b = torch.tensor([m for _, m in keep], dtype=torch.float64)
    if a.numel() < 2:
        return float("nan")
    a, b = a - a.mean(), b - b.mean()
    den = float(a.norm() * b.norm())
    return float((a * b).sum()) / den if den > 0 else float("nan")


def sign_agreement(pred: Sequence[float], meas: Sequence[float]) -> float:
    """Share of pairs whose signs agree (a zero agrees only with a zero; a non-finite measurement — a setting whose
    forward overflowed — never agrees); NaN when empty."""
    if not pred:
        return float("nan")
    return sum(1 for p, m in zip(pred, meas) if math.isfinite(m) and math.copysign(1, p) == math.copysign(1, m)
               and (p == 0) == (m == 0)) / len(pred)


def top_feature_edges(graph: Graph, n: int) -> list[int]:
    """The graph's feature nodes with the `n` largest |edges| into the top logit (most probable first)."""
    return top_edges(graph, n, "feature")


def top_edges(graph: Graph, n: int, kind: str = "feature") -> list[int]:
    """Node indices of `kind` (feature | error | token) with the `n` largest nonzero |edges| into the top logit."""
    sl = {"feature": slice(0, graph.n_features), "error": graph.error_slice, "token": graph.token_slice}[kind]
    row = graph.adjacency[graph.n_nodes - graph.n_logits, sl]
    order = row.abs().argsort(descending=True)
    return [int(i) + sl.start for i in order[:n] if float(row[i]) != 0.0]


def _summary(rows: list[dict], modes: Sequence[str]) -> dict[str, Any]:
    pred = [r["predicted"] for r in rows]
    out = {}
    for m in modes:
        meas = [r[m] for r in rows]
        out[m] = {"sign_agreement": sign_agreement(pred, meas), "pearson": pearson(pred, meas),
                  "max_abs_diff": max((abs(a - b) for a, b in zip(pred, meas) if math.isfinite(b)),
                                      default=float("nan")),
                  "n": len(rows), "nonfinite": sum(1 for b in meas if not math.isfinite(b))}
    return out


def check_edges(model: nn.Module, graph: Graph, transcoders: "Sequence[SAE] | str", n: int = 20,
                modes: Sequence[str] = MODES, zero_bos: bool = True, bos_token_id: int | None = None,
                intervener: Intervener | None = None) -> dict[str, Any]:
    """Zero each of the top-`n` features by |edge into the top logit| and compare the graph's predicted change of
    the top logit's demeaned logit (−edge) with the one measured in each setting: per edge rows, and per setting
    sign agreement, Pearson correlation and max |measured − predicted|. The same for the top-`n` error nodes (the
    error term at (layer, position) removed) and token nodes (the input embedding zeroed) under "other_nodes"; in
    the `direct` setting each change is the graph's edge exactly."""
    from .transcoders import check_transcoders, load_transcoders

    if n < 1:
        raise ValueError(f"n={n}: check at least one edge (e.g. 20)")
    for m in modes:
        check_mode(m)
    if isinstance(transcoders, (str, bytes)) or hasattr(transcoders, "__fspath__"):
        transcoders = load_transcoders(transcoders)
    tcs = check_transcoders(model, transcoders, "transcoders")
    iv = intervener or Intervener(model, tcs, graph.input_tokens[None], zero_bos, bos_token_id)
    if not torch.equal(iv.ids[0], graph.input_tokens):
        raise ValueError("the intervener was built on another prompt than the graph's")
    top_node = graph.n_nodes - graph.n_logits
    tok = int(graph.logit_tokens[0])
    rows = []
    for i in top_feature_edges(graph, n):
        layer, pos, f = (int(x) for x in graph.active_features[graph.selected_features[i]])
        row = {"layer": layer, "pos": pos, "feature": f,
               "activation": float(graph.activation_values[graph.selected_features[i]]),
               "edge": float(graph.adjacency[top_node, i]), "predicted": -float(graph.adjacency[top_node, i])}
        for m in modes:
            row[m] = float(iv.run([(layer, pos, f, 0.0)], m).demeaned_change()[tok])
        rows.append(row)
    other: dict[str, Any] = {}
    for kind in ("error", "token"):
        krows = []
        for i in top_edges(graph, n, kind):
            node = graph.node(i)
            edge = float(graph.adjacency[top_node, i])
            row = {k: node[k] for k in ("layer", "pos", "token") if k in node}
            row.update(edge=edge, predicted=-edge)
            for m in modes:
                r = (iv.run([], m, zero_errors=[(node["layer"], node["pos"])]) if kind == "error"
                     else iv.run([], m, zero_tokens=[node["pos"]]))
                row[m] = float(r.demeaned_change()[tok])
            krows.append(row)
        other[kind] = {"edges": krows, "summary": _summary(krows, modes)}
    return {"top_logit": graph.logit_strings[0] if graph.logit_strings else str(tok), "top_logit_token": tok,
            "edges": rows, "summary": _summary(rows, modes), "other_nodes": other}
