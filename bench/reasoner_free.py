"""Free-form accuracy of a reasoner on generated problems shown without options, original and held-out families apart
(#33 item 2: a stage that teaches free-form answers; the goal: >= 0.5).

The problems are those `probescope exit collect --answers free` draws (the arithmetic kind of the generated task,
`mcq.as_free`: no options), here of the test split by `--seed`: `--n` of the original families and `--n` of the
held-out families (phrasings never trained). The prompt, the reasoning (greedy, `--max-new` tokens, 160 as in the
collect) and the answer are the collect's: the free-form format, reasoning until the model's own answer line or the
budget, then the answer decoded after prompt + reasoning + `\\nAnswer:` (`exit.free`, normalised) and compared with the
result. It is the collect's final answer without its forced-answer curve or activations, so far cheaper.

    python bench/reasoner_free.py --model runs/reasoner-stage11/candidate --seed 5 --n 64 \\
        --json bench/results/reasoner_free_stage11.json
    python bench/reasoner_free.py --seed 5 --n 64 --json bench/results/reasoner_free_v2.json   # v2, same problems

`--model`: a built-in name (default smollm2-135m-reasoner-v2), or a LoRA folder trained on v2, merged into it.
"""

from __future__ import annotations

import os
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine, parser, write_json  # noqa: E402
from reasoner_letters import MODEL, load_bench_model  # noqa: E402


def free_problems(n: int, seed: int, split: str = "test") -> list:
    """`n` original-family and `n` held-out-family arithmetic problems of `split` (seed `seed`), without options."""
    from probescope.tasks import mcq

    orig = mcq.generate(split, n, seed=seed, kinds=("arith",))
    held = [replace(p, id=f"{split}-held-{seed}-{i:05d}")
            for i, p in enumerate(mcq.generate(split, n, seed=seed, held_out=True, kinds=("arith",)))]
    if len({p.question for p in orig + held}) < len(orig) + len(held):
        raise SystemExit("a question appears twice in the sample")
    return [mcq.as_free(p) for p in orig + held]


def accuracy(rows: list[dict]) -> dict:
    """Accuracy with its Wilson 95% interval, and how many rows ran out of the budget."""
    from probescope.core.stats import wilson

    k, n = sum(r["correct"] for r in rows), len(rows)
    return {"n": n, "accuracy": round(k / n, 4) if n else None,
            "accuracy_ci95": [round(x, 4) for x in wilson(k, n)] if n else None,
            "at_budget": sum(r["stop"] == "budget" for r in rows),
            "reasoning_tokens_mean": round(sum(r["n_reasoning_tokens"] for r in rows) / max(1, n), 1)}


def main() -> None:
    ap = parser(__doc__.splitlines()[0])
    ap.add_argument("--model", default=MODEL, help="a built-in name, or a LoRA folder trained on v2 (merged into it)")
    ap.add_argument("--n", type=int, default=64, help="problems per family group (original, held-out)")
    ap.add_argument("--seed", type=int, default=5, help="the problems' seed")
    ap.add_argument("--split", default="test", choices=("val", "test"))
    ap.add_argument("--max-new", type=int, default=160, help="reasoning token budget (the collect's)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import torch

    from probescope.exit.formats import get_format
    from probescope.exit.free import normalize_answer
    from probescope.exit.generate import ExitPolicy, generate_with_exit
    from probescope.exit.prompts import make_prompts

    torch.set_num_threads(args.threads)
    t0, cpu0, load0 = time.time(), time.process_time(), os.getloadavg()
    problems = free_problems(args.n, args.seed, args.split)
    model, tok = load_bench_model(args.model)
    fmt = get_format(None).free_form()
    fmt.check(tok, ())
    prompts = make_prompts(problems, tok, 1, fmt)
    res = generate_with_exit(model, tok, prompts, None, ExitPolicy(kind="never"), max_new_tokens=args.max_new,
                             batch_size=args.batch_size, quiet=False, fmt=fmt, answers="free")
    rows = []
    for p, r in zip(problems, res.rows):
        gold = normalize_answer(p.result)
        rows.append({"id": p.id, "family": p.family, "group": "held-out" if p.held_out else "original",
                     "gold": gold, "pred": r.answer, "correct": r.answer == gold, "stop": r.stop,
                     "n_reasoning_tokens": r.generated,
                     "reasoning": tok.decode(r.reasoning_ids, skip_special_tokens=True)})
    out = {"model": args.model, "split": args.split, "seed": args.seed, "kinds": ["arith"],
           "max_new_tokens": args.max_new, "n": len(rows),
           "all": accuracy(rows),
           "original": accuracy([r for r in rows if r["group"] == "original"]),
           "held_out": accuracy([r for r in rows if r["group"] == "held-out"]),
           "stops": dict(Counter(r["stop"] for r in rows)),
           "seconds": round(time.time() - t0, 1), "cpu_seconds": round(time.process_time() - cpu0, 1),
           "threads": args.threads,
           "load_average": {"start": [round(x, 2) for x in load0], "end": [round(x, 2) for x in os.getloadavg()]},
           "machine": machine(), "rows": rows}
    out["goals"] = {"free_form_accuracy_at_least_50": out["all"]["accuracy"] >= 0.5,
                    "original_at_least_50": out["original"]["accuracy"] >= 0.5,
                    "held_out_at_least_50": out["held_out"]["accuracy"] >= 0.5}
    write_json(args.json_path, out)
    for k in ("all", "original", "held_out"):
        print(k, out[k])
    print("stops", out["stops"], "seconds", out["seconds"], "cpu", out["cpu_seconds"], "load", out["load_average"])


if __name__ == "__main__":
    main()
