"""Circuit-tracing showcase on the shipped reasoner (issue #31 item 4): what do the graphs say it keys on?

    python bench/circuits_showcase.py --json bench/results/circuits_showcase.json [--transcoders DIR]
    python bench/circuits_showcase.py --write-corpus runs/showcase/corpus.jsonl   # only the training corpus
    python bench/circuits_showcase.py --json bench/results/circuits_showcase.json --reread   # re-read saved graphs

1. Corpus (`showcase_corpus`): the reasoner's own inputs — chat-template prompts and template traces of generated
   train-split problems (the varied task, every trained phrasing; held-out families have no train split) —
   interleaved with the built-in corpus (stdlib docstrings), about half of the tokens each; JSONL, `text` column.
2. Transcoders for all 30 layers of `smollm2-135m-reasoner-v2` on it (`probescope circuit transcoders`, the settings
   in TC below), or a set given with --transcoders.
3. Problems: original-family test problems and held-out-family test problems (`tasks.mcq.generate(..., held_out=
   True)`); the reasoner reasons greedily (`exit.answer.generate_reasoning`), then its forced answer. The first
   original-family problem it answers right and the first held-out-family problem it answers wrong are kept.
4. For each, the graph of the answer step: prompt + its own reasoning + `\\nAnswer: (`, whose next token is the letter
   (`circuit attribute`), the pruned graph's features with their labels (`circuit labels` ran on the set), and the
   top edges into the top logit checked by intervention (`circuit intervene --check-edges`). The JSON keeps, per
   graph, the scores, the influence shares of features / errors / tokens, the top tokens and features by influence
   on the logits, and the edge check's sign agreement per setting.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from _common import machine, parser, write_json

MODEL = "smollm2-135m-reasoner-v2"
# the set used in docs/circuits.md (Showcase): `probescope circuit transcoders` with these options
TC = dict(tokens=81_920, batch_size=1024, context_len=256, k=32, expansion=4, skip=True, eval_contexts=16,
          label_contexts=0, seed=0)
N_PROBLEMS = 320  # problems written into the corpus (more than the token budget reads)


def showcase_corpus(tokenizer, n_problems: int = N_PROBLEMS, seed: int = 0) -> list[str]:
    """Reasoner texts (prompt + trace + end of turn) of train-split varied problems, interleaved with docstrings of
    the built-in corpus so that the two halves have about the same number of tokens."""
    from probescope.core.data.corpus import default_corpus
    from probescope.tasks.mcq import build_prompt, generate, trace

    probs = generate("train", n_problems, seed, varied=True)
    docs = list(default_corpus())
    end = tokenizer.eos_token or ""
    out: list[str] = []
    j = 0
    for p in probs:
        t = build_prompt(p, tokenizer) + trace(p) + end
        out.append(t)
        need = len(tokenizer(t, add_special_tokens=False)["input_ids"])
        while need > 0 and j < len(docs):
            out.append(docs[j])
            need -= len(tokenizer(docs[j], add_special_tokens=False)["input_ids"])
            j += 1
    return out


def write_corpus(path: str | Path, tokenizer) -> dict:
    """Write the corpus as JSONL ({"text": ...} per line); its size in texts and tokens."""
    from probescope.core.io import atomic_write_bytes

    texts = showcase_corpus(tokenizer)
    atomic_write_bytes(Path(path), "".join(json.dumps({"text": t}) + "\n" for t in texts).encode())
    n_tok = sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)
    return {"path": str(path), "texts": len(texts), "tokens": n_tok}


LABELS = {"contexts": 64, "context_len": 128}  # `circuit labels` on the same corpus


def transcoder_figures(tc_dir: str) -> dict:
    """The set's settings and held-out figures as its trainer wrote them (config.json, metrics.json)."""
    cfg = json.loads((Path(tc_dir) / "config.json").read_text())
    r = json.loads((Path(tc_dir) / "metrics.json").read_text())
    return {"dir": tc_dir, "config": {k: cfg.get(k) for k in ("data", "tokens", "batch_size", "context_len", "k",
                                                              "expansion", "skip", "seed")},
            "train_seconds": r.get("train_seconds"), "mean_fvu": r["mean_fvu"],
            "fvu_per_layer": [round(x, 4) for x in r["fvu"]], "mean_l0": sum(r["l0"]) / len(r["l0"]),
            "dead_pct_mean": sum(r.get("dead_pct", [0])) / max(1, len(r.get("dead_pct", [0]))),
            "agreement": r["agreement"], "kl": r["kl"], "eval_tokens": r["eval_tokens"],
            "agreement_one_layer": [round(x, 4) for x in r["agreement_one_layer"]],
            "kl_one_layer": [round(x, 4) for x in r["kl_one_layer"]]}


def pick_problems(model, tok, n: int, seed: int) -> dict:
    """Reason greedily on `n` original-family and `n` held-out-family test problems; keep the first original one
    answered right and the first held-out one answered wrong (both must reach their `Answer:` line)."""
    from probescope.exit.answer import forced_answer, generate_reasoning
    from probescope.tasks.mcq import build_prompt, generate

    groups = {"right": generate("test", n, seed), "wrong": generate("test", n, seed, held_out=True)}
    out: dict = {"n_per_group": n, "seed": seed, "cases": {}, "accuracy": {}}
    for name, probs in groups.items():
        prompts = [build_prompt(p, tok) for p in probs]
        gens = generate_reasoning(model, tok, prompts, max_new_tokens=320, batch_size=8)
        fa = forced_answer(model, tok, prompts, [g.reasoning for g in gens])
        ok = [a == p.letter for a, p in zip(fa.letters, probs)]
        out["accuracy"][name] = sum(ok) / len(ok)
        for i, (p, g, a) in enumerate(zip(probs, gens, fa.letters)):
            if g.reached_answer and ok[i] == (name == "right"):
                out["cases"][name] = {"problem": p, "prompt": prompts[i], "reasoning": g.reasoning, "answer": a,
                                      "letter_probs": [round(float(x), 4) for x in fa.probs[i]], "index": i}
                break
        else:
            raise SystemExit(f"no {name} case among {n} problems: raise --problems")
    return out


SEGMENTS = ("chat template", "instruction", "question", "options", "assistant turn", "reasoning: work",
            "reasoning: option scan", "reasoning: result", "reasoning: checks", "answer cue")


def segments(text: str, case: dict) -> list[tuple[int, str]]:
    """(start character, segment name) of the parts of the graph's prompt, in order; parts not found are left out."""
    from probescope.tasks.mcq import INSTRUCTION

    p, prompt, r = case["problem"], case["prompt"], case["reasoning"]
    q = text.index(p.question)
    marks = [(0, "chat template"), (text.index(INSTRUCTION), "instruction"), (q, "question"),
             (text.index("(A) ", q), "options"), (text.index("<|im_end|>", q), "assistant turn"),
             (len(prompt), "reasoning: work")]
    for key, name in (("Options:", "reasoning: option scan"), ("The result is", "reasoning: result"),
                      ("Check", "reasoning: checks")):
        j = r.find(key)
        if j >= 0:
            marks.append((len(prompt) + j, name))
    marks.append((len(prompt) + len(r), "answer cue"))
    return sorted(marks)


def direct_inputs(g, labels: dict, seg, n: int = 8) -> dict:
    """The top logit's direct inputs, signed: each kind's sum (they add up to its demeaned logit), each segment's
    token sum, and the features with the largest positive and negative edges (with labels)."""
    row = g.adjacency[g.n_nodes - g.n_logits].double()
    out = {"sum": {k: float(row[s].sum()) for k, s in (("feature", slice(0, g.n_features)), ("error", g.error_slice),
                                                       ("token", g.token_slice))},
           "abs_sum": {k: float(row[s].abs().sum()) for k, s in (("feature", slice(0, g.n_features)),
                                                                  ("error", g.error_slice), ("token", g.token_slice))}}
    tok = row[g.token_slice]
    by_seg: dict = {}
    for pos in range(g.n_pos):
        by_seg[seg(pos)] = by_seg.get(seg(pos), 0.0) + float(tok[pos])
    out["token_sum_by_segment"] = {k: round(v, 3) for k, v in by_seg.items()}
    feat = row[: g.n_features]
    order = feat.argsort(descending=True)

    def frow(i: int) -> dict:
        nd = g.node(i)
        lab = labels.get(nd["layer"], {}).get(nd["feature"], {})
        return {"layer": nd["layer"], "pos": nd["pos"], "feature": nd["feature"], "token": g.token_strings[nd["pos"]],
                "segment": seg(nd["pos"]), "edge": round(float(feat[i]), 3), "label": lab.get("label", ""),
                "contexts": lab.get("contexts", [])[:1]}

    out["top_positive_features"] = [frow(int(i)) for i in order[:n] if float(feat[i]) > 0]
    out["top_negative_features"] = [frow(int(i)) for i in order.flip(0)[:n] if float(feat[i]) < 0]
    out["letter_tokens"] = [{"pos": p, "token": g.token_strings[p], "segment": seg(p), "edge": round(float(tok[p]), 3)}
                            for p in range(g.n_pos) if g.token_strings[p].strip() in ("A", "B", "C", "D")]
    return out


def explain_case(model, tok, case: dict, tc_dir: str, out: Path, args) -> dict:
    """The answer step's graph (`circuit attribute`), its reading, and the edge check (`circuit intervene`)."""
    from probescope.circuits.config import AttributeConfig, InterveneConfig
    from probescope.circuits.export import load_graph
    from probescope.circuits.graph import influence_shares, prune, pruned_adjacency, top_nodes
    from probescope.circuits.labels import feature_labels
    from probescope.circuits.run import run_circuit_attribute, run_circuit_intervene
    from probescope.exit.answer import ANSWER_CUE, cue_ids, encode_prefix

    p = case["problem"]
    text = case["prompt"] + case["reasoning"] + ANSWER_CUE
    pi, ri = encode_prefix(tok, case["prompt"], case["reasoning"])
    ids = tok(text)["input_ids"]
    same_ids = list(ids) == pi + ri + cue_ids(tok)  # the text tokenizes as the forced answer reads it
    acfg = AttributeConfig(prompt=text, transcoders=tc_dir, out=str(out), max_feature_nodes=args.max_feature_nodes,
                           max_tokens=1024, threads=args.threads, quiet=True)
    summary = run_circuit_attribute(acfg, model, tok)
    g = load_graph(out)
    pr = prune(g, acfg.node_threshold, acfg.edge_threshold)
    pa = pruned_adjacency(g, pr)
    labels = feature_labels(tc_dir)
    offsets = tok(text, return_offsets_mapping=True)["offset_mapping"]
    marks = segments(text, case)

    def seg(pos: int) -> str:
        c = offsets[pos][0]
        return [name for start, name in marks if start <= c][-1]

    def token_row(n: dict) -> dict:
        return {**{k: n[k] for k in ("kind", "layer", "pos", "feature", "activation") if k in n},
                "token": g.token_strings[n["pos"]], "segment": seg(n["pos"]), "influence": round(n["influence"], 5)}

    feats = []
    for n in top_nodes(g, "feature", 15):
        row = token_row(n)
        lab = labels.get(n["layer"], {}).get(n["feature"], {})
        row.update(label=lab.get("label", ""), contexts=lab.get("contexts", [])[:2],
                   kept=bool(pr.node_mask[n["index"]]))
        feats.append(row)
    toks_all = top_nodes(g, "token", g.n_pos)
    by_seg: dict = {}
    for n in toks_all:
        by_seg[seg(n["pos"])] = by_seg.get(seg(n["pos"]), 0.0) + n["influence"]
    kept_feats = [i for i in range(g.n_features) if pr.node_mask[i]]
    labelled = sum(1 for i in kept_feats
                   if labels.get(g.node(i)["layer"], {}).get(g.node(i)["feature"], {}).get("label"))
    t = time.perf_counter()
    icfg = InterveneConfig(graph=str(out), check_edges=args.edges, out=str(out) + "-intervene", threads=args.threads,
                           quiet=True)
    iv = run_circuit_intervene(icfg, model, tok)
    ec = iv["edge_check"]
    lp = dict(zip("ABCD", case["letter_probs"]))
    gold_tok = tok(p.letter, add_special_tokens=False)["input_ids"][0]
    logits = {s: round(float(q), 4) for s, q in zip(g.logit_strings, g.logit_probabilities)}
    return {
        "problem": {"id": p.id, "kind": p.kind, "family": p.family, "held_out": p.held_out, "question": p.question,
                    "options": list(p.options), "gold": p.letter, "result": p.result},
        "reasoning": case["reasoning"], "answer": case["answer"], "letter_probs": lp,
        "text_tokenizes_as_forced_answer": same_ids,
        "commands": {"attribute": f"probescope circuit attribute --prompt TEXT --transcoders {tc_dir} "
                                  f"--max-feature-nodes {args.max_feature_nodes} --max-tokens 1024 --threads "
                                  f"{args.threads} --out {out}",
                     "intervene": f"probescope circuit intervene --graph {out} --check-edges {args.edges} "
                                  f"--threads {args.threads} --out {out}-intervene"},
        "graph": {k: summary[k] for k in ("n_tokens", "n_active_features", "n_feature_nodes", "n_logits", "top_logit",
                                          "top_logit_prob", "replacement", "completeness", "pruned_replacement",
                                          "pruned_completeness", "pruned_nodes", "pruned_feature_nodes",
                                          "pruned_edges", "seconds")},
        "logit_targets": logits, "gold_is_target": int(gold_tok) in [int(x) for x in g.logit_tokens],
        "shares": influence_shares(g), "shares_pruned": influence_shares(g, pa),
        "token_influence_by_segment": {k: round(v, 5) for k, v in sorted(by_seg.items(), key=lambda kv: -kv[1])},
        "top_tokens": [token_row(n) for n in toks_all[:12]],
        "top_features": feats,
        "top_errors": [token_row(n) for n in top_nodes(g, "error", 8)],
        "direct_inputs": direct_inputs(g, labels, seg),
        "pruned_features_labelled": {"kept": len(kept_feats), "with_label": labelled},
        "edge_check": {"summary": ec["summary"],
                       "other_nodes": {k: v["summary"] for k, v in ec["other_nodes"].items()},
                       "edges": ec["edges"], "seconds": time.perf_counter() - t},
    }


def reread(json_path: str) -> None:
    """Add `direct_inputs` to every case of an existing result from its saved graph (the model loads for its
    tokenizer only)."""
    from types import SimpleNamespace

    from probescope import load_model
    from probescope.circuits.export import load_graph
    from probescope.circuits.labels import feature_labels
    from probescope.exit.answer import ANSWER_CUE

    res = json.loads(Path(json_path).read_text())
    _, tok = load_model(MODEL)
    labels = feature_labels(res["transcoders"]["dir"])
    for case in res["cases"].values():
        g = load_graph(case["commands"]["attribute"].rsplit("--out ", 1)[1])
        text, r = g.prompt, case["reasoning"]
        c = {"problem": SimpleNamespace(question=case["problem"]["question"]), "reasoning": r,
             "prompt": text[: len(text) - len(r) - len(ANSWER_CUE)]}
        offsets = tok(text, return_offsets_mapping=True)["offset_mapping"]
        marks = segments(text, c)

        def seg(pos: int) -> str:
            return [name for start, name in marks if start <= offsets[pos][0]][-1]

        case["direct_inputs"] = direct_inputs(g, labels, seg)
    write_json(json_path, res)


def main() -> None:
    ap = parser(__doc__.splitlines()[0])
    ap.add_argument("--write-corpus", default="", help="only write the training corpus (JSONL) here and stop")
    ap.add_argument("--transcoders", default="", help="reuse this set instead of training one")
    ap.add_argument("--tc-out", default="runs/showcase/tc", help="where a trained set goes")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="runs/showcase", help="folder of the corpus and the graph / intervention runs")
    ap.add_argument("--problems", type=int, default=8, help="test problems of each kind reasoned to find the two cases")
    ap.add_argument("--seed", type=int, default=0, help="seed of the test problems")
    ap.add_argument("--max-feature-nodes", type=int, default=1000)
    ap.add_argument("--reread", action="store_true", help="only recompute the graphs' direct inputs of an existing "
                                                          "--json from its run folders (no model)")
    ap.add_argument("--edges", type=int, default=20, help="top edges into the top logit checked by intervention")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from probescope import load_model

    if args.reread:
        return reread(args.json_path)
    model, tok = load_model(MODEL)
    if args.write_corpus:
        print(json.dumps(write_corpus(args.write_corpus, tok)))
        return
    out = Path(args.out)
    res: dict = {"bench": "circuits_showcase", "model": MODEL, "machine": machine(), "threads": args.threads,
                 "max_feature_nodes": args.max_feature_nodes, "edges_checked": args.edges}
    tc_dir = args.transcoders or args.tc_out
    if not args.transcoders:
        res["corpus"] = write_corpus(out / "corpus.jsonl", tok)
        from probescope.circuits.config import TranscodersConfig
        from probescope.circuits.train import train_transcoders

        cfg = TranscodersConfig(model=MODEL, data=str(out / "corpus.jsonl"), out=tc_dir, resume=False, quiet=True,
                                threads=args.threads, **TC)
        train_transcoders(cfg, model, tok)
    res["transcoders"] = transcoder_figures(tc_dir)
    if not (Path(tc_dir) / "layer_0" / "latents.json").exists():
        from probescope.circuits.config import LabelsConfig
        from probescope.circuits.run import run_circuit_labels

        corpus = res.get("corpus", {}).get("path") or json.loads((Path(tc_dir) / "config.json").read_text())["data"]
        run_circuit_labels(LabelsConfig(transcoders=tc_dir, data=corpus, contexts=LABELS["contexts"],
                                        context_len=LABELS["context_len"], threads=args.threads, quiet=True),
                           model, tok)
    res["labels"] = LABELS
    t = time.perf_counter()
    picked = pick_problems(model, tok, args.problems, args.seed)
    res["selection"] = {k: v for k, v in picked.items() if k != "cases"}
    res["selection"]["seconds"] = time.perf_counter() - t
    res["cases"] = {}
    for name, case in picked["cases"].items():
        res["cases"][name] = explain_case(model, tok, case, tc_dir, out / name, args)
    write_json(args.json_path, res)


if __name__ == "__main__":
    main()
