"""ICL → vector: function vectors (Todd et al. 2024) and mean-difference task vectors, added zero-shot.

Function vector, as published: (1) the mean output of every attention head at the last token of clean N-shot
prompts (`attn_head.L.H`: the head's slice of o_proj's input through its o_proj columns — on grouped-query
models such as SmolLM2, 9 query / 3 key-value heads, this is per *query* head, so no size mismatch arises);
(2) each head's average indirect effect (AIE): put its mean output at the last token of *corrupted* prompts —
the same shots with their labels shuffled, so the prompt shows no input → output mapping — and measure the rise of
the correct answer's first-token probability, averaged over prompts. Cells are batched: every forward stacks
copies of the corrupted prompts and patches a different head in each copy (the way `patching.activation_patching`
batches its cells; that function patches a clean run's own activation at aligned positions, while the AIE
patches a *mean* activation at the last token only, so the search has its own small loop on `site_hooks`);
(3) the function vector is the sum of the top-k heads' mean outputs, added at the last token of a zero-shot
prompt at one layer chosen by a sweep on dev queries.

Task vector (the simpler one): mean last-token residual after block L on N-shot prompts minus on 0-shot prompts,
added at that layer. Both are added at the last token with a scale; (layer, scale ∈ {1, 2, 4}) are chosen by a
sweep on dev queries (zero-shot first-token accuracy, ties by the answer log-prob).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from .icl_tasks import IclTask, encode_left, first_token, icl_prompt


@dataclass
class IclSet:
    """N-shot prompts (clean and label-shuffled) for queries of one task, with the answers' first tokens."""

    queries: list[str]
    answers: list[int]
    clean: list[str]
    corrupt: list[str]
    zero: list[str]


def make_set(tok: Any, task: IclTask, n_prompts: int, n_shots: int, seed: int = 0,
             exclude: Sequence[str] = ()) -> IclSet:
    """N-shot prompts for `n_prompts` random queries of `task` (not in `exclude`), shots from all its pairs."""
    rng = random.Random(seed)
    pairs = [p for p in task.pairs if p[0] not in exclude]
    rng.shuffle(pairs)
    qs = pairs[:n_prompts]
    if len(qs) < 2:
        raise ValueError(f"task {task.name!r} has too few examples left for {n_prompts} prompts")
    return build_set(tok, task, qs, task.pairs, n_shots, rng)


def build_set(tok: Any, task: IclTask, queries: Sequence[tuple[str, str]], shot_pool: Sequence[tuple[str, str]],
              n_shots: int, rng: random.Random) -> IclSet:
    """Clean and label-shuffled N-shot prompts for the given (query, answer) pairs, shots drawn (per query) from
    `shot_pool` minus the query itself."""
    clean, corrupt = [], []
    for x, _ in queries:
        others = [p for p in shot_pool if p[0] != x]
        if n_shots > len(others):
            raise ValueError(f"{n_shots} shots asked but only {len(others)} examples of {task.name!r} to draw them "
                             "from: use fewer shots or more examples")
        shots = rng.sample(others, n_shots)
        ys = [y for _, y in shots]
        perm = ys[:]
        for _ in range(10):  # a derangement where possible: no shot keeps its own label
            rng.shuffle(perm)
            if all(a != b for a, b in zip(perm, ys)) or len(ys) < 2:
                break
        clean.append(icl_prompt(shots, x))
        corrupt.append(icl_prompt([(s[0], y) for s, y in zip(shots, perm)], x))
    return IclSet([x for x, _ in queries], [first_token(tok, y) for _, y in queries], clean, corrupt,
                  [icl_prompt([], x) for x, _ in queries])


@torch.no_grad()
def head_means(model: Any, ids: torch.Tensor, mask: torch.Tensor, layers: Sequence[int]) -> torch.Tensor:
    """[len(layers), heads, d]: each head's output at the last token, averaged over the prompts."""
    from ..core.sites import n_heads, site_hooks
    from .icl import _positions

    H = n_heads(model)
    got: dict[tuple[int, int], torch.Tensor] = {}

    def reader(i: int, h: int):
        def fn(x: torch.Tensor) -> None:
            got[(i, h)] = x[:, -1].float().mean(0).cpu()
        return fn

    device = next(model.parameters()).device
    with site_hooks(model, {f"attn_head.{L}.{h}": reader(i, h) for i, L in enumerate(layers) for h in range(H)}):
        m = mask.to(device)
        model(input_ids=ids.to(device), attention_mask=m, position_ids=_positions(m), use_cache=False)
    return torch.stack([torch.stack([got[(i, h)] for h in range(H)]) for i in range(len(layers))])


@dataclass
class HeadSearch:
    """AIE per (layer, head) and the mean head outputs they come from."""

    layers: list[int]
    aie: np.ndarray  # [layers, heads]
    means: torch.Tensor  # [layers, heads, d]
    clean_prob: float
    corrupt_prob: float
    seconds: float
    forwards: int
    exact: np.ndarray | None = None  # [layers, heads]: measured exactly (False: attribution estimate only)

    def top(self, k: int) -> list[tuple[int, int, float]]:
        flat = np.argsort(-self.aie.ravel())[:k]
        H = self.aie.shape[1]
        return [(self.layers[i // H], int(i % H), float(self.aie.ravel()[i])) for i in flat]

    def function_vector(self, k: int) -> torch.Tensor:
        H = self.aie.shape[1]
        idx = np.argsort(-self.aie.ravel())[:k]
        return torch.stack([self.means[i // H, i % H] for i in idx]).sum(0)


@torch.no_grad()
def head_search(model: Any, clean_ids: torch.Tensor, clean_mask: torch.Tensor, corrupt_ids: torch.Tensor,
                corrupt_mask: torch.Tensor, answers: Sequence[int], layers: Sequence[int] | None = None,
                batch_size: int = 64, screen: int | None = None) -> HeadSearch:
    """Average indirect effect of every head: its clean mean output at the last token put into the corrupted
    prompts; effect = mean rise of p(answer's first token). Batched: each forward patches one head per copy.

    `screen=k`: first rank all heads by the first-order (attribution) estimate of that effect — one forward and
    one backward — then measure exactly only the k best; the others keep their estimate (marked in `exact`)."""
    from ..core.sites import n_heads, n_layers, site_hooks
    from .icl import _positions, last_logprobs

    t0 = time.perf_counter()
    nl, H = n_layers(model), n_heads(model)
    layers = list(range(nl)) if layers is None else [int(x) % nl for x in layers]
    means = head_means(model, clean_ids, clean_mask, layers)
    P = corrupt_ids.shape[0]
    ans = torch.tensor(list(answers))
    r = torch.arange(P)
    p_clean = float(last_logprobs(model, clean_ids, clean_mask)[r, ans].exp().mean())
    p_corr = last_logprobs(model, corrupt_ids, corrupt_mask)[r, ans].exp()
    device = next(model.parameters()).device
    fw = 3
    cells = [(i, h) for i in range(len(layers)) for h in range(H)]
    aie = np.zeros(len(cells))
    exact = np.ones(len(cells), bool)
    if screen is not None and screen < len(cells):
        est = attribution_aie(model, corrupt_ids, corrupt_mask, ans, layers, means)
        aie[:] = est.ravel()
        exact[:] = False
        keep = np.argsort(-est.ravel())[:screen]
        exact[keep] = True
        fw += 1
    todo = [c for c, e in zip(cells, exact) if e]
    index = {c: n for n, c in enumerate(cells)}
    per = max(1, batch_size // P)
    device = next(model.parameters()).device
    for s in range(0, len(todo), per):
        chunk = todo[s:s + per]
        by_site: dict[str, list[tuple[int, torch.Tensor]]] = {}
        for j, (i, h) in enumerate(chunk):
            by_site.setdefault(f"attn_head.{layers[i]}.{h}", []).append((j, means[i, h]))

        def patch(items):
            def fn(x: torch.Tensor) -> torch.Tensor:
                x = x.clone()
                for j, mu in items:
                    x[j * P:(j + 1) * P, -1] = mu.to(x.dtype).to(x.device)
                return x
            return fn

        ids, mask = corrupt_ids.repeat(len(chunk), 1), corrupt_mask.repeat(len(chunk), 1).to(device)
        with site_hooks(model, {k: patch(v) for k, v in by_site.items()}):
            logits = model(input_ids=ids.to(device), attention_mask=mask, position_ids=_positions(mask),
                           use_cache=False).logits[:, -1]
        fw += 1
        p = torch.softmax(logits.float(), -1).cpu()[torch.arange(ids.shape[0]), ans.repeat(len(chunk))]
        vals = (p.reshape(len(chunk), P) - p_corr[None]).mean(1).numpy()
        for c, v in zip(chunk, vals):
            aie[index[c]] = v
    return HeadSearch(layers, aie.reshape(len(layers), H), means, p_clean, float(p_corr.mean()),
                      time.perf_counter() - t0, fw, exact.reshape(len(layers), H))


def attribution_aie(model: Any, ids: torch.Tensor, mask: torch.Tensor, ans: torch.Tensor, layers: Sequence[int],
                    means: torch.Tensor) -> np.ndarray:
    """First-order estimate of each head's AIE: (mean − corrupted head output at the last token) · ∂p/∂head,
    averaged over prompts, from one forward and one backward on the corrupted prompts."""
    from ..core.sites import n_heads, site_hooks
    from .icl import _positions

    H = n_heads(model)
    got: dict[tuple[int, int], torch.Tensor] = {}

    def leaf(x: torch.Tensor) -> torch.Tensor | None:
        return None if x.requires_grad else x.detach().requires_grad_(True)

    def keep(i: int, h: int):
        def fn(x: torch.Tensor) -> None:
            got[(i, h)] = x
        return fn

    device = next(model.parameters()).device
    m = mask.to(device)
    hooks = {"embed": leaf, **{f"attn_head.{L}.{h}": keep(i, h) for i, L in enumerate(layers) for h in range(H)}}
    with torch.enable_grad(), site_hooks(model, hooks):
        logits = model(input_ids=ids.to(device), attention_mask=m, position_ids=_positions(m), use_cache=False).logits
        p = torch.softmax(logits[:, -1].float(), -1)[torch.arange(ids.shape[0]), ans.to(device)].sum()
        keys = list(got)
        grads = torch.autograd.grad(p, [got[k] for k in keys], allow_unused=True)
    out = np.zeros((len(layers), H))
    for (i, h), g in zip(keys, grads):
        if g is None:
            continue
        delta = means[i, h].to(g.device)[None] - got[(i, h)][:, -1].detach()
        out[i, h] = float((delta * g[:, -1]).sum(-1).mean())
    return out


@torch.no_grad()
def zero_shot_scores(model: Any, tok: Any, prompts: Sequence[str], answers: Sequence[int], layer: int | None = None,
                     vector: torch.Tensor | None = None, batch_size: int = 64) -> dict:
    """First-token accuracy and mean answer log-prob, with `vector` added at the last token after block `layer`."""
    from .icl import last_logprobs

    ids, mask = encode_left(tok, list(prompts))
    lp = last_logprobs(model, ids, mask, layer=layer if vector is not None else None, vector=vector,
                       strengths=torch.ones(ids.shape[0]), batch_size=batch_size)
    a = torch.tensor(list(answers))
    return {"accuracy": float((lp.argmax(-1) == a).float().mean()),
            "answer_logprob": float(lp[torch.arange(len(a)), a].mean()),
            "prompt_tokens": float(mask.sum(1).float().mean())}


SCALES = (1.0, 2.0, 4.0)


def sweep_layer(model: Any, tok: Any, dev: IclSet, vectors: dict[int, torch.Tensor], batch_size: int = 64,
                scales: Sequence[float] = SCALES) -> tuple[tuple[int, float], dict[str, dict]]:
    """The (layer, scale) whose vector gives the best zero-shot dev accuracy (ties: higher answer log-prob)."""
    res = {(L, k): zero_shot_scores(model, tok, dev.zero, dev.answers, L, v * k, batch_size)
           for L, v in vectors.items() for k in scales}
    best = max(res, key=lambda c: (res[c]["accuracy"], res[c]["answer_logprob"]))
    return best, {f"L{L}x{k:g}": r for (L, k), r in res.items()}


@dataclass
class IclVectors:
    """A few-shot prompt converted to vectors: the function vector (top-k heads) and the mean-difference task
    vector, each with the (layer, scale) chosen on the dev prompts, and the seconds each took to make."""

    fv: torch.Tensor
    fv_layer: int
    fv_scale: float
    tv: torch.Tensor
    tv_layer: int
    tv_scale: float
    search: HeadSearch
    fv_sweep: dict
    tv_sweep: dict
    fv_seconds: float
    tv_seconds: float


def icl_vectors(model: Any, tok: Any, dev: IclSet, top_k: int = 10, batch_size: int = 64,
                search_layers: Sequence[int] | None = None, screen: int | None = None) -> IclVectors:
    """Function vector and task vector from the N-shot prompts of `dev` (their answers give the heads' AIE and the
    layer × scale sweep). Heads are searched in the first ⅔ of the layers unless `search_layers` is given; `screen`
    (default 3·top_k; 0: every head) heads are measured exactly after the attribution screen."""
    from ..core.sites import n_layers
    from .icl import last_resid

    nl = n_layers(model)
    t0 = time.perf_counter()
    layers = list(search_layers) if search_layers else list(range(0, max(1, (2 * nl) // 3)))
    ci, cm = encode_left(tok, dev.clean)
    xi, xm = encode_left(tok, dev.corrupt)
    hs = head_search(model, ci, cm, xi, xm, dev.answers, layers, batch_size,
                     screen=3 * top_k if screen is None else (screen or None))
    fv = hs.function_vector(top_k)
    cands = sorted({max(0, int(round(nl * f))) for f in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)})
    (fv_layer, fv_scale), fv_sweep = sweep_layer(model, tok, dev, {L: fv for L in cands}, batch_size)
    t1 = time.perf_counter()
    z = last_resid(model, *encode_left(tok, dev.zero), cands)
    c = last_resid(model, ci, cm, cands)
    tvs = {L: c[L].mean(0) - z[L].mean(0) for L in cands}
    (tv_layer, tv_scale), tv_sweep = sweep_layer(model, tok, dev, tvs, batch_size)
    t2 = time.perf_counter()
    return IclVectors(fv, fv_layer, fv_scale, tvs[tv_layer], tv_layer, tv_scale, hs, fv_sweep, tv_sweep,
                      t1 - t0, t2 - t1)


def compare_vectors(model: Any, tok: Any, task: IclTask, cfg: Any) -> dict:
    """Zero-shot accuracy with the function vector and with the task vector vs N-shot vs none, on held-out queries.
    `cfg` needs n_queries, n_dev, vector_shots, fv_top_k, batch_size, seed (IclConfig has them)."""
    n = cfg.vector_shots
    dev = make_set(tok, task, cfg.n_dev, n, seed=cfg.seed + 1)
    test = make_set(tok, task, cfg.n_queries, n, seed=cfg.seed, exclude=dev.queries)
    v = icl_vectors(model, tok, dev, cfg.fv_top_k, cfg.batch_size, getattr(cfg, "fv_layers", None),
                    getattr(cfg, "fv_screen", 3 * cfg.fv_top_k))
    hs, fv = v.search, v.fv
    base = zero_shot_scores(model, tok, test.zero, test.answers, batch_size=cfg.batch_size)
    shots = zero_shot_scores(model, tok, test.clean, test.answers, batch_size=cfg.batch_size)
    with_fv = zero_shot_scores(model, tok, test.zero, test.answers, v.fv_layer, fv * v.fv_scale, cfg.batch_size)
    with_tv = zero_shot_scores(model, tok, test.zero, test.answers, v.tv_layer, v.tv * v.tv_scale, cfg.batch_size)
    gain = shots["accuracy"] - base["accuracy"]

    def rec(x):
        return (x["accuracy"] - base["accuracy"]) / gain if gain > 0 else None

    return {"acc_none": base["accuracy"], "acc_nshot": shots["accuracy"], "acc_fv": with_fv["accuracy"],
            "acc_tv": with_tv["accuracy"], "recovery_fv": rec(with_fv), "recovery_tv": rec(with_tv),
            "fv_layer": v.fv_layer, "tv_layer": v.tv_layer, "fv_scale": v.fv_scale, "tv_scale": v.tv_scale,
            "fv_norm": float(fv.norm()),
            "top_heads": [f"L{L}.H{h} ({e:+.3f})" for L, h, e in hs.top(cfg.fv_top_k)],
            "search_seconds": hs.seconds, "heads_measured_exactly": int(hs.exact.sum()) if hs.exact is not None
            else len(hs.aie.ravel()), "heads_searched": int(hs.aie.size), "search_forwards": hs.forwards,
            "clean_prob": hs.clean_prob, "corrupt_prob": hs.corrupt_prob,
            "nshot_prompt_tokens": shots["prompt_tokens"], "zero_prompt_tokens": base["prompt_tokens"],
            "fv_layer_sweep": {L: r["accuracy"] for L, r in v.fv_sweep.items()},
            "tv_layer_sweep": {L: r["accuracy"] for L, r in v.tv_sweep.items()}}
