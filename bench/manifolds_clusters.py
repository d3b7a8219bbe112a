"""Unsupervised days and months (issue #32): an SAE trained on a calendar-rich corpus, its latents clustered by
decoder direction (Engels et al.) and by co-fire direction, and each cluster's days/months content measured.

    python bench/manifolds_clusters.py [--quick] --json bench/results/manifolds_clusters.json [--model smollm2-135m]

1. The corpus: `manifolds.concepts.concept_corpus(12000, seed=0)` (paragraphs of day, month, hour and number
   template sentences) interleaved four to one with the default corpus (stdlib docstrings), written as JSONL.
2. The SAE: `probescope sae train --layer L --data calendar.jsonl --tokens T --expansion 8 --k 32 --context-len 64`
   (TopK; cached under ~/.cache/probescope/bench/, resumed if there), labelled with `probescope sae latents`.
3. `manifold clusters` on it, on `--contexts` × 64 tokens of the same corpus: the decoder rows joined at cosine ≥
   0.5 (Engels et al.'s graph, single linkage), and the co-fire directions (`--directions cofire`) merged by
   average linkage while the mean cosine is ≥ 0.75 (`--linkage average --threshold 0.75`; single linkage chains
   them into one group of thousands).
4. Per cluster, from the same contexts: the share of its latents' activation that falls on day names (month
   names), the share of all day (month) tokens it fires on, the days (months) its latents prefer, and the order of
   those preferences around the cluster's fitted circle. No labels are used to form the clusters; they are used
   here only to say which clusters are the days and the months.
--quick: 150,000 training tokens and 128 contexts (minutes); full: 400,000 tokens and 256 contexts.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from _common import machine, parser, write_json

CACHE = Path.home() / ".cache" / "probescope" / "bench"


def calendar_jsonl(path: Path) -> Path:
    """The calendar corpus (see the module doc), written once."""
    from probescope.core.data.corpus import default_corpus
    from probescope.manifolds.concepts import concept_corpus

    if path.exists():
        return path
    c, d = concept_corpus(12000, seed=0), list(default_corpus())
    out, j = [], 0
    for i, p in enumerate(c):
        out.append(p)
        if i % 4 == 3 and j < len(d):
            out.append(d[j])
            j += 1
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps({"text": t}) + "\n" for t in out))
    tmp.replace(path)
    return path


def cluster_content(codes, words: list[str], groups: list[list[int]], names: list[str], W=None) -> list[dict]:
    """Per group: purity (the share of its latents' total activation that falls on tokens that are one of
    `names`), recall (the share of those tokens where one of its latents fires), the name each latent prefers (the
    most of its activation among the name tokens, with that share), how many names are preferred by some latent, and
    the preferred names in the order of the latents' angles in the group's top-2 PCA plane of `W` rows (when
    given)."""
    import numpy as np

    from probescope.manifolds.geometry import pca

    is_name = np.array([w in names for w in words])
    idx = {n: i for i, n in enumerate(names)}
    val = np.array([idx.get(w, -1) for w in words])
    out = []
    for g in groups:
        A = codes[:, g]
        on = A[is_name]  # [name tokens, group]
        mass = np.stack([on[val[is_name] == v].sum(0) for v in range(len(names))])  # [names, group]
        prefs = [(names[int(mass[:, c].argmax())], round(float(mass[:, c].max() / mass[:, c].sum()), 3))
                 if mass[:, c].sum() > 0 else (None, 0.0) for c in range(len(g))]
        total = float(A.sum())
        row = {"size": len(g), "purity": round(float(on.sum()) / total, 3) if total > 0 else 0.0,
               "recall": round(float((on > 0).any(1).mean()), 3) if is_name.any() else 0.0,
               "preferred": prefs, "names_covered": len({p for p, _ in prefs if p})}
        if W is not None and len(g) >= 3:
            U = W[g] / np.linalg.norm(W[g], axis=1, keepdims=True)
            mu, V, _ = pca(U, 2)
            Z = (U - mu) @ V.T
            order = np.argsort(np.arctan2(Z[:, 1], Z[:, 0]))
            row["around_the_circle"] = [prefs[i][0] for i in order]
        out.append(row)
    return out


def value_circle(codes, W, words: list[str], group: list[int], names: list[str], n_perm: int = 200,
                 seed: int = 0) -> dict:
    """Does the group hold the values on a circle in their order? Its reconstruction Σⱼ aⱼ·W[j] on the name tokens,
    averaged per name: the circle R² through those means in the names' order (`geometry.circle_plane_r2`, top-5
    PCA axes), beside the same fit with the names' order permuted (95th percentile of `n_perm` orders)."""
    import numpy as np

    from probescope.manifolds.geometry import circle_plane_r2

    idx = {n: i for i, n in enumerate(names)}
    rows = [t for t, w in enumerate(words) if w in idx]
    vals = np.array([idx[words[t]] for t in rows])
    R = codes[np.ix_(rows, group)] @ W[group]
    present = [v for v in range(len(names)) if (vals == v).any()]
    M = np.stack([R[vals == v].mean(0) for v in present])
    P, k = len(names), min(5, len(present) - 1)
    r2 = circle_plane_r2(M, np.array(present), P, k)[0]
    rng = np.random.default_rng(seed)
    perm = [circle_plane_r2(M, rng.permutation(np.array(present)), P, k)[0] for _ in range(n_perm)]
    return {"values": len(present), "circle_r2": round(float(r2), 4),
            "order_permuted_p95": round(float(np.percentile(perm, 95)), 4)}


def main() -> None:
    ap = parser(__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--layer", type=int, default=11)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tokens", type=int, default=0, help="SAE training tokens (default 150,000 quick, 400,000 full)")
    ap.add_argument("--contexts", type=int, default=0, help="contexts of 64 tokens read (default 128 quick, 256 full)")
    ap.add_argument("--sae", default="", help="use this SAE folder instead of training one")
    ap.add_argument("--out", default="runs/bench-manifold-clusters")
    args = ap.parse_args()
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from probescope import load_model
    from probescope.core.store import make_contexts
    from probescope.manifolds import ClustersConfig, run_clusters
    from probescope.manifolds.clusters import cofire_directions
    from probescope.manifolds.concepts import DAYS, MONTHS
    from probescope.manifolds.sae_clusters import sae_codes
    from probescope.sae.config import TrainConfig
    from probescope.sae.formats import WEIGHTS, load_sae
    from probescope.sae.run import SaeLatentsConfig, SaeTrainConfig, run_sae_latents, run_sae_train
    from probescope.core.data.corpus import corpus_texts

    q = args.quick
    tokens = args.tokens or (150_000 if q else 400_000)
    n_ctx = args.contexts or (128 if q else 256)
    data = calendar_jsonl(CACHE / "calendar.jsonl")
    model, tok = load_model(args.model)
    res: dict = {"bench": "manifolds_clusters", "model": args.model, "quick": q, "machine": machine(),
                 "threads": args.threads, "corpus": "concept_corpus(12000, seed=0) interleaved 4:1 with the default "
                                                    "corpus", "site": f"resid_post.{args.layer}"}
    sae_dir = Path(args.sae) if args.sae else CACHE / f"calendar_sae_{args.model}_L{args.layer}_k32_x8_{tokens}"
    t, c = time.perf_counter(), time.process_time()
    if not (sae_dir / WEIGHTS).exists() and not args.sae:
        run_sae_train(SaeTrainConfig(model=args.model, data=str(data), layer=args.layer, expansion=8, k=32,
                                     context_len=64, out=str(sae_dir), train=TrainConfig(tokens=tokens,
                                                                                         threads=args.threads)),
                      model, tok)
    res["sae"] = {"folder": str(sae_dir), "tokens": tokens, "expansion": 8, "k": 32,
                  "train_seconds": round(time.perf_counter() - t, 1), "train_cpu_seconds": round(time.process_time() - c, 1)}
    if not (sae_dir / "latents.json").exists():
        run_sae_latents(SaeLatentsConfig(model=args.model, sae=str(sae_dir), data=str(data), contexts=n_ctx), model, tok)
    sae = load_sae(str(sae_dir))
    res["sae"]["n_latents"] = int(sae.W_dec.shape[0])
    ids = make_contexts(tok, corpus_texts(str(data)), 64, max_contexts=n_ctx)
    codes = sae_codes(sae, model, ids, 8)
    words = [tok.decode([int(i)]).strip() for i in ids.reshape(-1)]
    W = sae.W_dec.detach().double().numpy()
    res["tokens_read"] = len(words)
    res["day_tokens"] = int(sum(w in DAYS for w in words))
    res["month_tokens"] = int(sum(w in MONTHS for w in words))
    settings = {"decoder": ("single", 0.5, 2), "cofire": ("average", 0.75, 3)}
    for directions, (link, th, min_size) in settings.items():
        t = time.perf_counter()
        r = run_clusters(ClustersConfig(sae=str(sae_dir), model=args.model, site=f"resid_post.{args.layer}",
                                        data=str(data), directions=directions, linkage=link, threshold=th,
                                        min_size=min_size, contexts=n_ctx, top=400, threads=args.threads,
                                        out=f"{args.out}/{directions}"), model, tok)
        groups = [c["latents"] for c in r["clusters"]]
        G = W
        if directions == "cofire":
            D, lat = cofire_directions(codes, W, 3)
            G = np.zeros_like(W)
            G[lat] = D
        days = cluster_content(codes, words, groups, DAYS, G)
        months = cluster_content(codes, words, groups, MONTHS, G)
        rows = []
        for i, cl in enumerate(r["clusters"]):
            rows.append({"rank": i, "size": cl["size"], "mean_cosine": round(cl["mean_cosine"], 3),
                         "random_cosine_mean": round(cl["random_cosine_mean"], 3),
                         "mixture": cl.get("mixture"), "random_mixture_mean": cl.get("random_mixture_mean"),
                         "separability": cl.get("separability"),
                         "random_separability_mean": cl.get("random_separability_mean"),
                         "circle_r2": cl["circle_r2"], "order_permuted_p95": cl.get("order_permuted_p95"),
                         "random_cluster_p95": cl.get("random_cluster_p95"), "shape": cl["shape"],
                         "labels": (cl["labels"] or [])[:12], "days": days[i], "months": months[i]})
        best = {}
        for concept in ("days", "months"):  # the cluster that best matches the concept's tokens (F1 of purity, recall)
            f1 = [(2 * x[concept]["purity"] * x[concept]["recall"] / (x[concept]["purity"] + x[concept]["recall"])
                   if x[concept]["purity"] + x[concept]["recall"] else 0.0) for x in rows]
            for x, f in zip(rows, f1):
                x[concept]["f1"] = round(f, 3)
            b = int(np.argmax(f1)) if rows else None
            best[concept] = b if b is not None and f1[b] >= 0.5 and rows[b]["size"] >= 3 else None
            if best[concept] is not None:
                rows[b][concept]["value_circle"] = value_circle(codes, W, words, groups[b],
                                                                DAYS if concept == "days" else MONTHS)
        res[directions] = {"linkage": link, "threshold": th, "min_size": min_size, "n_clusters": len(rows),
                           "verdict": r["verdict"], "seconds": round(time.perf_counter() - t, 1), "best": best,
                           "clusters": rows}
        for concept in ("days", "months"):
            b = best[concept]
            if b is None:
                top = max((x[concept]["f1"] for x in rows), default=0.0)
                print(f"{directions}: no {concept} cluster (no cluster of ≥ 3 latents matches the {concept} tokens "
                      f"with F1 ≥ 0.5; best {top:.2f})", flush=True)
                continue
            x = rows[b]
            print(f"{directions}: {concept} = cluster {b}, {x['size']} latents, cosine {x['mean_cosine']:.2f} (random "
                  f"{x['random_cosine_mean']:.2f}), purity {x[concept]['purity']:.2f}, recall {x[concept]['recall']:.2f}, mixture "
                  f"{x['mixture']} (random {x['random_mixture_mean']}),"
                  f" {x[concept]['names_covered']} values covered; circle R² {x['circle_r2']} (perm p95 "
                  f"{x['order_permuted_p95']}, random p95 {x['random_cluster_p95']}); around the circle: "
                  f"{x[concept].get('around_the_circle')}; its reconstruction's per-value means on a circle in value order: "
                  f"{x[concept]['value_circle']}", flush=True)
    write_json(args.json_path, res)


if __name__ == "__main__":
    main()
