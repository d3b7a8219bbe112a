"""Circuit-tracing benchmark: transcoders for every layer of SmolLM2-135M, then attribution graphs of short prompts.

    python bench/circuits.py [--quick] --json bench/results/circuits.json [--transcoders DIR]

Trains one TopK transcoder per layer (`probescope circuit transcoders`, all 30 layers from one forward per batch)
on the generated default corpus — or reuses a set (`--transcoders DIR`) — and reports per-layer held-out FVU and
L0, the replacement model's next-token agreement and KL against the original, and for each prompt (a fact, an
induction copy, greater-than, an arithmetic step; with `--reasoner-transcoders`, the reasoner's answer step on
`smollm2-135m-reasoner-v2`: its chat prompt, a template trace, then `\nAnswer: (`) the graph's replacement and
completeness scores (unpruned and pruned), its size, seconds per graph, and the intervention check: each of the
top-20 features by |edge into the top logit| zeroed, the graph's predicted change of that demeaned logit against the
measured one (sign agreement, Pearson r) in the four settings of `circuits.intervene` (direct, frozen, free, the
real model; `--diagnose` adds attn_frozen, norms_frozen and model_frozen). --quick: a token budget of minutes
(low-quality transcoders: the figures show the path, not what good transcoders reach) and ≤ 256 feature nodes.
"""

from __future__ import annotations

import time
from pathlib import Path

from _common import machine, parser, write_json

PROMPTS = {
    "fact": "The capital of France is Paris. The capital of Germany is",
    "induction": "The blue fox met the green owl by the river. Later the blue fox met the green",
    "greater_than": "The war lasted from the year 1732 to the year 17",
    "arithmetic": "12 + 7 = 19. 23 + 5 =",
}
REASONER = "smollm2-135m-reasoner-v2"  # --reasoner-transcoders: its answer step is the fifth prompt


def main() -> None:
    ap = parser(__doc__.splitlines()[0])
    ap.add_argument("--transcoders", default="", help="reuse this set instead of training one")
    ap.add_argument("--tc-out", default="runs/bench-circuits-tc", help="where a trained set goes")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--edges", type=int, default=20, help="top edges into the top logit checked by intervention")
    ap.add_argument("--diagnose", action="store_true", help="also the diagnostic settings attn_frozen, norms_frozen, "
                                                            "model_frozen (which half of the frozen world a sign "
                                                            "depends on)")
    ap.add_argument("--prompts", default="", help="comma-separated prompt names (default: all)")
    ap.add_argument("--reasoner-transcoders", default="", help="a transcoder set of smollm2-135m-reasoner-v2 (e.g. "
                                                               "bench/circuits_showcase.py's): adds the reasoner's "
                                                               "answer step as a fifth prompt, on the reasoner")
    ap.add_argument("--bos", action="store_true", help="start every prompt with the tokenizer's BOS token (SmolLM2's "
                                                       "tokenizer adds none, so its first word is the attention sink)")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from probescope import load_model
    from probescope.circuits import attribute, check_edges, load_transcoders
    from probescope.circuits.config import ALL_MODES, MODES, TranscodersConfig
    from probescope.circuits.run import summarize
    from probescope.circuits.train import train_transcoders

    model, tok = load_model("smollm2-135m")
    res: dict = {"bench": "circuits", "model": "smollm2-135m", "quick": args.quick, "machine": machine()}
    if args.transcoders:
        tc_dir = args.transcoders
        res["transcoders"] = {"reused": tc_dir}
        mf = Path(tc_dir) / "metrics.json"
        if mf.exists():  # the set's own held-out figures, as its trainer wrote them
            import json

            r = json.loads(mf.read_text())
            cfg = json.loads((Path(tc_dir) / "config.json").read_text())
            res["transcoders"].update(
                config={k: cfg.get(k) for k in ("tokens", "batch_size", "k", "expansion")},
                seconds=r.get("train_seconds"), mean_fvu=r["mean_fvu"], fvu_per_layer=[round(x, 4) for x in r["fvu"]],
                mean_l0=sum(r["l0"]) / len(r["l0"]), dead_pct=[round(x, 2) for x in r.get("dead_pct", [])],
                agreement=r["agreement"], kl=r["kl"], eval_tokens=r["eval_tokens"],
                agreement_one_layer=[round(x, 4) for x in r["agreement_one_layer"]],
                kl_one_layer=[round(x, 4) for x in r["kl_one_layer"]])
    else:
        tc_dir = args.tc_out
        cfg = TranscodersConfig(model="smollm2-135m", out=tc_dir, tokens=8192 if args.quick else 131072,
                                batch_size=1024, context_len=64, k=16 if args.quick else 32,
                                expansion=4 if args.quick else 8, eval_contexts=16, resume=False, quiet=True,
                                label_contexts=16 if args.quick else 64)
        t = time.perf_counter()
        r = train_transcoders(cfg, model, tok)
        res["transcoders"] = {"config": {k: getattr(cfg, k) for k in ("tokens", "batch_size", "k", "expansion")},
                              "seconds": time.perf_counter() - t, "tokens_per_s": r["tokens_per_s_this_session"],
                              "mean_fvu": r["mean_fvu"], "fvu_per_layer": [round(x, 4) for x in r["fvu"]],
                              "mean_l0": sum(r["l0"]) / len(r["l0"]), "agreement": r["agreement"], "kl": r["kl"],
                              "eval_tokens": r["eval_tokens"], "dead_pct": [round(x, 2) for x in r["dead_pct"]],
                              "agreement_one_layer": [round(x, 4) for x in r["agreement_one_layer"]],
                              "kl_one_layer": [round(x, 4) for x in r["kl_one_layer"]]}
    tcs = load_transcoders(tc_dir)
    nodes = 256 if args.quick else 2000
    res["max_feature_nodes"] = nodes
    res["prompts"] = {}
    res["bos"] = bool(args.bos)
    names = [n for n in args.prompts.split(",") if n] or list(PROMPTS)
    for n in names:
        if n not in PROMPTS:
            raise SystemExit(f"--prompts: {n!r} is not one of {', '.join(PROMPTS)}")
    modes = ALL_MODES if args.diagnose else MODES
    jobs = [(name, model, tok, tcs, PROMPTS[name]) for name in names]
    if args.reasoner_transcoders:  # the reasoner's answer step: its prompt, a template trace, the answer cue
        from probescope.exit.answer import ANSWER_CUE
        from probescope.tasks.mcq import build_prompt, generate, trace

        rmodel, rtok = load_model(REASONER)
        p = generate("test", 1, seed=0)[0]
        work = trace(p)
        text = build_prompt(p, rtok) + work[: work.rindex("\nAnswer:")] + ANSWER_CUE
        res["reasoner"] = {"model": REASONER, "transcoders": args.reasoner_transcoders, "gold": "ABCD"[p.answer],
                           "text": text}
        jobs.append(("answer_step", rmodel, rtok, load_transcoders(args.reasoner_transcoders), text))
    for name, model, tok, tcs, prompt in jobs:
        prompt = (tok.bos_token or "") + prompt if args.bos and name != "answer_step" else prompt
        g = attribute(model, tok, prompt, tcs, max_feature_nodes=nodes, batch_size=32, quiet=True, max_tokens=512)
        s, _ = summarize(g)
        res["prompts"][name] = {k: s[k] for k in ("prompt", "n_tokens", "n_active_features", "n_feature_nodes",
                                                  "n_logits", "top_logit", "top_logit_prob", "replacement",
                                                  "completeness", "pruned_replacement", "pruned_completeness",
                                                  "pruned_nodes", "pruned_edges", "seconds")}
        if args.edges:
            t = time.perf_counter()
            ec = check_edges(model, g, tcs, n=args.edges, modes=modes, bos_token_id=tok.bos_token_id)
            other = {k: v["summary"] for k, v in ec["other_nodes"].items()}
            res["prompts"][name]["edge_check"] = {"summary": ec["summary"], "edges": ec["edges"], "other_nodes": other,
                                                  "seconds": time.perf_counter() - t}
        write_json(args.json_path, res)  # after every prompt: a stopped run keeps what it measured
        print(f"{name}: replacement {res['prompts'][name]['replacement']:.3f}, completeness "
              f"{res['prompts'][name]['completeness']:.3f}" + (
                  "; sign agreement " + ", ".join(f"{m} {v['sign_agreement']:.2f}" for m, v in
                                                   res["prompts"][name]["edge_check"]["summary"].items())
                  if args.edges else ""), flush=True)
    rows = list(res["prompts"].values())
    res["mean_seconds_per_graph"] = sum(r["seconds"] for r in rows) / len(rows)
    res["mean_replacement"] = sum(r["replacement"] for r in rows) / len(rows)
    res["mean_completeness"] = sum(r["completeness"] for r in rows) / len(rows)
    if args.edges:
        res["edge_check_mean"] = {m: {k: sum(r["edge_check"]["summary"][m][k] for r in rows) / len(rows)
                                      for k in ("sign_agreement", "pearson")}
                                  for m in rows[0]["edge_check"]["summary"]}
    write_json(args.json_path, res)


if __name__ == "__main__":
    main()
