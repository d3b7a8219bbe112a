"""The shipped reasoner's answer letters on a fresh held-out-family sample, budget-forced answers apart (#33 item 2).

`smollm2-135m-reasoner-v2` reasons greedily (320-token budget, the budget its held-out figures use) on problems of
the held-out families that no earlier sample used (none of their questions is in the seed-0 test/val samples, the
seed-1 deciding sample, or the exit collects' held-out problems of seeds 0-2); the answer is the forced answer after
the reasoning. Rows split in two: those whose reasoning wrote its own `Answer:` line, and those that ran out of the
budget (the answer forced at the budget). For each: accuracy and the share of each letter, with Wilson intervals.
The bar (#33): ≥ 60% accuracy with no letter above 35% overall, and no letter above 35% on budget-forced answers.
Beside the raw answers, the same rows with the forced answer calibrated against the model's letter prior
(contextual calibration, Zhao et al. 2021: p(letter) / prior(letter), the prior read on content-free prompts;
`exit.answer.letter_prior`): once for the budget-forced answers only (the answer lines the model wrote stay) and
once for every answer. Then every at-budget rule (`exit.at_budget`: the forced letter, the calibrated one, the
shipped exit probe's belief after the last reasoning token — `exit run`'s probe, applied by the exit decoder — and
probe × forced) on the budget-forced rows (#33's first lever). With `--prior-n`, a separate fresh sample (seed
`--prior-seed`, none of its questions in the test sample) gives letter priors read on its budget-forced rows — the
forced answer's and the probe's (domain-context calibration, the second lever) — and, the other way round, every
rule is measured on its budget-forced rows with the priors of the test sample's. The reasoning of each sample is
cached (`--cache`, `--prior-cache`, under runs/): greedy, so a rerun would write the same.

    python bench/reasoner_letters.py --n 128 --prior-n 128 --json bench/results/reasoner_letters_fresh.json
    python bench/reasoner_letters.py --model runs/reasoner-stage11/candidate --seed 5 --n 128 \
        --cache runs/reasoner-letters/stage11-seed5.json --json bench/results/reasoner_letters_stage11.json

`--model`: a built-in name, or a LoRA folder trained on v2 (`scripts/train_reasoner.py --stage 11` writes
runs/reasoner-stage11/candidate), merged into v2 at load; the exit probe of the at-budget rules stays v2's.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine, parser, write_json  # noqa: E402

MODEL = "smollm2-135m-reasoner-v2"
MAX_NEW = 320  # scripts/train_reasoner.py MAX_NEW_SWITCH: the budget of v2's held-out figures
USED = (("test", 160, 0), ("val", 160, 0), ("val", 640, 1), ("val", 150, 0), ("val", 150, 1),
        ("test", 100, 0), ("test", 400, 2))  # (split, n, seed) of every held-out sample drawn before (a superset)


def load_bench_model(spec: str):
    """(model, tokenizer): a built-in name, or a folder holding a LoRA adapter trained on top of v2 (merged into it)."""
    from probescope.core.models.registry import load_model

    folder = Path(spec)
    if (folder / "adapter_model.safetensors").exists():
        from probescope.core.models.adapters import load_adapter

        model, tok = load_model(MODEL)
        return load_adapter(model, folder, merge=True), tok
    return load_model(spec)


def fresh_problems(n: int, seed: int, exclude: list = ()) -> list:
    """`n` held-out-family test problems of `seed` whose questions no earlier sample (nor `exclude`) holds."""
    from probescope.tasks import mcq

    seen = {p.question for split, k, s in USED for p in mcq.generate(split, k, seed=s, held_out=True)}
    seen |= {p.question for p in exclude}
    probs = [p for p in mcq.generate("test", 3 * n, seed=seed, held_out=True) if p.question not in seen][:n]
    if len(probs) < n:
        raise SystemExit(f"only {len(probs)} fresh problems for seed {seed}: ask for fewer (--n)")
    return probs


def reasoned(model, tok, problems: list, batch_size: int, cache: str, name: str = MODEL) -> dict:
    """`evaluate_mcq`'s report on `problems` (greedy reasoning, then the forced answer), read from `cache` when it
    holds these problems (the reasoning is the expensive part: greedy, so a rerun writes the same), else run and
    written there."""
    import json

    from probescope.exit.mcq_eval import evaluate_mcq

    path = Path(cache) if cache else None
    ids = [p.id for p in problems]
    if path is not None and path.exists():
        rep = json.loads(path.read_text())
        if [r["id"] for r in rep["rows"]] == ids and rep.get("max_new_tokens") == MAX_NEW and rep.get(
                "model", MODEL) == name:
            return rep
        raise SystemExit(f"{path} holds other problems, another budget or another model: delete it or pass another "
                         "--cache")
    rep = evaluate_mcq(model, tok, problems, batch_size=batch_size, max_new_tokens=MAX_NEW, settle_stride=10_000,
                       quiet=True)
    rep["max_new_tokens"], rep["model"] = MAX_NEW, name
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(rep))
    return rep


def shares(rows: list[dict]) -> dict:
    """Accuracy and letter shares of `rows`, each with its Wilson 95% interval."""
    from probescope.core.stats import wilson
    from probescope.exit.answer import LETTERS

    n = len(rows)
    if not n:
        return {"n": 0}
    k = sum(r["correct"] for r in rows)
    c = Counter(r["pred"] for r in rows)
    out = {"n": n, "accuracy": round(k / n, 4), "accuracy_ci95": [round(x, 4) for x in wilson(k, n)],
           "letters": {L: c.get(L, 0) for L in LETTERS},
           "letter_shares": {L: round(c.get(L, 0) / n, 4) for L in LETTERS},
           "letter_shares_ci95": {L: [round(x, 4) for x in wilson(c.get(L, 0), n)] for L in LETTERS}}
    top = max(LETTERS, key=lambda L: c.get(L, 0))
    out["max_letter"], out["max_letter_share"] = top, out["letter_shares"][top]
    out["no_letter_above_35"] = out["max_letter_share"] <= 0.35
    return out


def final_beliefs(model, tok, problems: list, rows: list[dict]) -> list:
    """The shipped exit probe's belief over the letters after each row's last reasoning token (read as `exit run`
    reads it: the shipped probe of the model, applied by the exit decoder)."""
    from probescope.exit.at_budget import probe_beliefs
    from probescope.exit.live import shipped_probe
    from probescope.probes.base import load_probe
    from probescope.tasks.mcq import build_prompt

    probe = load_probe(shipped_probe(MODEL))
    return [probe_beliefs(model, tok, probe, build_prompt(p, tok), r["reasoning"])[-1] for p, r in zip(problems, rows)]


def at_budget_rows(rows: list[dict], beliefs: list, prior, sep: dict | None) -> dict[str, list[dict]]:
    """Per at-budget rule (`exit.at_budget`), the rows with its letter on the budget-forced rows (the answer lines
    the model wrote stay). `sep`: the prior sample's budget-forced priors (lever 2: domain-context calibration)."""
    import torch

    from probescope.exit.at_budget import budget_letters

    F = torch.tensor([r["probs"] for r in rows])
    B = torch.stack([torch.as_tensor(b) for b in beliefs])
    rules = {"forced": budget_letters("forced", F), "calibrated (content-free prior)": budget_letters(
        "calibrated", F, prior=prior), "probe": budget_letters("probe", F, B), "probe x forced": budget_letters(
        "product", F, B)}
    if sep is not None:
        rules["calibrated (budget-forced prior of the prior sample)"] = budget_letters("calibrated", F,
                                                                                     prior=sep["forced_prior"])
        rules["probe calibrated (its budget-forced prior)"] = budget_letters("calibrated", B, prior=sep["probe_prior"])
        rules["probe x forced, both calibrated"] = budget_letters(
            "product", F / sep["forced_prior"], B / sep["probe_prior"])
    out = {}
    for name, letters in rules.items():
        out[name] = [r if r["reached_answer"] else {**r, "pred": L, "correct": L == r["gold"]}
                     for r, L in zip(rows, letters)]
    return out


def main() -> None:
    ap = parser(__doc__.splitlines()[0])
    ap.add_argument("--model", default=MODEL, help="a built-in name, or a LoRA folder trained on v2 (merged into it)")
    ap.add_argument("--n", type=int, default=128, help="fresh held-out-family problems")
    ap.add_argument("--seed", type=int, default=3, help="the sample's seed (3: drawn by no earlier sample)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cache", default="runs/reasoner-letters/seed3.json",
                    help="the reasoning of the sample, written once and reused ('' : always reason again)")
    ap.add_argument("--prior-n", type=int, default=0,
                    help="problems of a separate fresh sample whose budget-forced rows give a letter prior (0: none)")
    ap.add_argument("--prior-seed", type=int, default=4, help="the separate sample's seed (none of its questions is "
                                                              "in the test sample)")
    ap.add_argument("--prior-cache", default="runs/reasoner-letters/prior-seed4.json",
                    help="the separate sample's reasoning, written once and reused")
    args = ap.parse_args()
    import os

    import torch

    from probescope.exit.answer import LETTERS, calibrated_letters, letter_prior
    from probescope.exit.at_budget import budget_prior

    torch.set_num_threads(args.threads)
    t0, load0 = time.time(), os.getloadavg()
    problems = fresh_problems(args.n, args.seed)
    model, tok = load_bench_model(args.model)
    rep = reasoned(model, tok, problems, args.batch_size, args.cache, args.model)
    rows = rep.pop("rows")
    for p, r in zip(problems, rows):
        r["family"] = p.family
    own = [r for r in rows if r["reached_answer"]]
    forced = [r for r in rows if not r["reached_answer"]]
    prior = letter_prior(model, tok)
    cal = calibrated_letters([r["probs"] for r in rows], prior)
    golds = [r["gold"] for r in rows]

    def recast(which: list[bool]) -> list[dict]:
        """The rows with the calibrated letter where `which` says so."""
        return [{**r, "pred": c if w else r["pred"], "correct": (c if w else r["pred"]) == g}
                for r, c, g, w in zip(rows, cal, golds, which)]

    cal_forced = recast([not r["reached_answer"] for r in rows])
    cal_all = recast([True] * len(rows))
    beliefs = final_beliefs(model, tok, problems, rows)
    sep = None
    if args.prior_n:  # lever 2: the letter prior of budget-forced contexts, read on a separate sample
        sep_problems = fresh_problems(args.prior_n, args.prior_seed, exclude=problems)
        sep_rep = reasoned(model, tok, sep_problems, args.batch_size, args.prior_cache, args.model)
        sep_forced = [r for r in sep_rep["rows"] if not r["reached_answer"]]
        sep_beliefs = final_beliefs(model, tok, [p for p, r in zip(sep_problems, sep_rep["rows"])
                                                 if not r["reached_answer"]], sep_forced)
        sep = {"seed": args.prior_seed, "n": len(sep_problems), "n_budget_forced": len(sep_forced),
               "all": shares(sep_rep["rows"]), "budget_forced": shares(sep_forced),
               "forced_prior": budget_prior([r["probs"] for r in sep_forced]),
               "probe_prior": budget_prior(torch.stack(sep_beliefs))}
    rules = at_budget_rows(rows, beliefs, prior, sep)
    if sep is not None:  # the other way round: every rule on the prior sample's budget-forced rows, with the
        # budget-forced priors read on the test sample's (a second sample for lever 1, a cross-fit for lever 2)
        mine = [(r, b) for r, b in zip(rows, beliefs) if not r["reached_answer"]]
        back = {"forced_prior": budget_prior([r["probs"] for r, _ in mine]),
                "probe_prior": budget_prior(torch.stack([b for _, b in mine]))}
        sep["at_budget_on_its_budget_forced"] = {
            name: shares(rr) for name, rr in at_budget_rows(sep_forced, sep_beliefs, prior, back).items()}
    out = {"model": args.model, "exit_probe": MODEL, "max_new_tokens": MAX_NEW, "seed": args.seed, "n": len(rows),
           "kinds": dict(Counter(p.kind for p in problems)), "gold_letters": rep["gold_letters"],
           "all": shares(rows), "own_answer_line": shares(own), "budget_forced": shares(forced),
           "letter_prior": {L: round(float(x), 4) for L, x in zip(LETTERS, prior)},
           "calibrated_forced_only": {"all": shares(cal_forced),
                                      "budget_forced": shares([r for r in cal_forced if not r["reached_answer"]])},
           "calibrated_every_answer": {"all": shares(cal_all),
                                       "own_answer_line": shares([r for r in cal_all if r["reached_answer"]]),
                                       "budget_forced": shares([r for r in cal_all if not r["reached_answer"]])},
           "at_budget": {name: {"all": shares(rr), "budget_forced": shares([r for r in rr if not r["reached_answer"]])}
                         for name, rr in rules.items()},
           "probe_every_answer": shares([{**r, "pred": LETTERS[int(b.argmax())], "correct": LETTERS[int(b.argmax())]
                                          == r["gold"]} for r, b in zip(rows, beliefs)]),
           "prior_sample": None if sep is None else {
               **{k: v for k, v in sep.items() if not k.endswith("_prior")},
               **{k: {L: round(float(x), 4) for L, x in zip(LETTERS, sep[k])} for k in ("forced_prior", "probe_prior")}},
           "reasoning_tokens_mean": rep["reasoning_tokens_mean"],
           "goals": {}, "seconds": round(time.time() - t0, 1), "cpu_seconds": round(time.process_time(), 1),
           "load_average": {"start": [round(x, 2) for x in load0], "end": [round(x, 2) for x in os.getloadavg()]},
           "machine": machine(), "rows": [{k: r[k] for k in ("id", "family", "gold", "pred", "correct",
                                                              "reached_answer", "n_reasoning_tokens", "probs")}
                                              | {"calibrated": c, "probe": [round(float(x), 6) for x in b]}
                                              for r, c, b in zip(rows, cal, beliefs)]}
    out["goals"] = {"accuracy_at_least_60": out["all"]["accuracy"] >= 0.6,
                    "no_letter_above_35": out["all"]["no_letter_above_35"],
                    "budget_forced_no_letter_above_35": out["budget_forced"].get("no_letter_above_35", True),
                    "by_at_budget_rule": {name: {"accuracy_at_least_60": v["all"]["accuracy"] >= 0.6,
                                                 "no_letter_above_35": v["all"]["no_letter_above_35"],
                                                 "budget_forced_no_letter_above_35":
                                                     v["budget_forced"].get("no_letter_above_35", True)}
                                          for name, v in out["at_budget"].items()}}
    write_json(args.json_path, out)
    for name, v in (("all", out["all"]), ("own_answer_line", out["own_answer_line"]),
                    ("budget_forced", out["budget_forced"]),
                    ("calibrated forced: all", out["calibrated_forced_only"]["all"]),
                    ("calibrated forced: budget_forced", out["calibrated_forced_only"]["budget_forced"]),
                    ("calibrated every answer: all", out["calibrated_every_answer"]["all"]),
                    ("probe every answer: all", out["probe_every_answer"]),
                    *((f"at budget {k}: {part}", v[part]) for k, v in out["at_budget"].items()
                      for part in ("all", "budget_forced"))):
        print(name, v.get("n"), v.get("accuracy"), v.get("letters"), v.get("max_letter"), v.get("max_letter_share"))
    print("letter prior", out["letter_prior"])
    if out["prior_sample"]:
        ps = out["prior_sample"]
        print("prior sample", {k: v for k, v in ps.items() if k not in ("budget_forced", "at_budget_on_its_budget_forced")})
        for name, v in ps["at_budget_on_its_budget_forced"].items():
            print(f"prior sample, budget-forced, {name}:", v.get("n"), v.get("accuracy"), v.get("letters"),
                  v.get("max_letter"), v.get("max_letter_share"))


if __name__ == "__main__":
    main()
