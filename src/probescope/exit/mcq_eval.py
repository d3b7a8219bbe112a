"""Evaluate a reasoning model on generated multiple-choice problems: accuracy, letters, where the answer settles."""

from __future__ import annotations

import statistics
from collections import Counter
from typing import Any, Sequence

from torch import nn

from .answer import LETTERS, forced_answer_curve, generate_reasoning
from ..core.progress import progress
from ..tasks.mcq import MCQProblem, build_prompt


def _mean(xs: Sequence[float]) -> float | None:
    return round(statistics.fmean(xs), 4) if xs else None


def evaluate_mcq(
    model: nn.Module,
    tokenizer: Any,
    problems: Sequence[MCQProblem],
    batch_size: int = 16,
    max_new_tokens: int = 200,
    settle_stride: int = 1,
    quiet: bool | None = None,
    *,
    at_budget: str = "forced",
    probe: Any = None,
) -> dict[str, Any]:
    """Greedy reasoning per problem, then the forced answer after it; the forced-answer curve over the reasoning.

    Returns a dict: `accuracy` (forced answer after the full greedy reasoning), `pred_letters`/`gold_letters`
    (distributions), `accuracy_no_reasoning` (cue right after the prompt), `settle_fraction_mean` (first
    fraction of the reasoning tokens from which the forced answer stays at its final value), `oracle_saving`
    (1 - that: the share of reasoning an oracle exit would skip), `stated_fraction_mean` (where the reasoning
    writes "yes." in its option scan), and per-problem `rows`.
    `at_budget`: the answer of a row whose reasoning ran out of `max_new_tokens` before its own answer line
    (`probescope.exit.at_budget`: "forced", the default, "calibrated", or "probe" / "product" with the exit `probe`);
    such rows keep the forced letter as `forced_pred` (a reasoning of no tokens keeps it as its answer too).
    """
    if not problems:
        raise ValueError("no problems to evaluate")
    from .at_budget import budget_letters, check_rule, probe_beliefs

    if check_rule(at_budget) in ("probe", "product") and probe is None:
        raise ValueError(f"at_budget={at_budget!r} reads the exit probe: pass probe=load_probe(...) (the shipped one: "
                         "exit.live.shipped_probe(model_name)), or use at_budget='forced'")
    prior = None
    if at_budget == "calibrated":
        from .answer import letter_prior

        prior = letter_prior(model, tokenizer)
    prompts = [build_prompt(p, tokenizer) for p in problems]
    gens = []
    with progress(len(prompts), "reasoning", unit="problem", quiet=quiet) as bar:
        for s in range(0, len(prompts), batch_size):
            gens += generate_reasoning(model, tokenizer, prompts[s: s + batch_size], max_new_tokens, batch_size)
            bar.advance(len(prompts[s: s + batch_size]))
    rows = []
    with progress(len(prompts), "settle curve", unit="problem", quiet=quiet) as bar:
        for p, prompt, g in zip(problems, prompts, gens):
            # the curve's last point is the forced answer after the full reasoning (tests check they agree)
            curve = forced_answer_curve(model, tokenizer, prompt, g.reasoning, stride=settle_stride)
            letter = forced_letter = curve.letters[-1]
            # (a reasoning of no tokens, all whitespace, gives the probe nothing to read: it keeps the forced letter)
            if at_budget != "forced" and not g.reached_answer and (at_budget == "calibrated" or curve.n_reasoning_tokens):
                belief = probe_beliefs(model, tokenizer, probe, prompt, g.reasoning)[-1:] if probe is not None else None
                letter = budget_letters(at_budget, curve.probs[-1:], belief, prior)[0]
            stated = g.reasoning.find("yes.")
            stated_tok = (len(tokenizer(g.reasoning[: stated + 4], add_special_tokens=False)["input_ids"])
                          if stated >= 0 else None)
            rows.append({
                "id": p.id, "kind": p.kind, "gold": p.letter, "pred": letter, "correct": letter == p.letter,
                "reached_answer": g.reached_answer, "n_reasoning_tokens": curve.n_reasoning_tokens,
                "settle_cut": curve.settle_cut(), "settle_fraction": round(curve.settle_fraction, 4),
                "p_pred": round(float(curve.probs[-1].max()), 4),
                "probs": [round(float(x), 6) for x in curve.probs[-1]],  # over LETTERS, after the full reasoning
                "no_reasoning_pred": curve.letters[0],
                "stated_fraction": (round(stated_tok / max(1, curve.n_reasoning_tokens), 4)
                                    if stated_tok is not None else None),
                "reasoning": g.reasoning,
            })
            if letter != forced_letter or (at_budget != "forced" and not g.reached_answer):
                rows[-1]["forced_pred"] = forced_letter
            bar.advance(1)
    n = len(rows)
    settle = [r["settle_fraction"] for r in rows]
    return {
        "n": n,
        "accuracy": round(sum(r["correct"] for r in rows) / n, 4),
        "accuracy_by_kind": {k: round(statistics.fmean(r["correct"] for r in rows if r["kind"] == k), 4)
                             for k in sorted({r["kind"] for r in rows})},
        "accuracy_no_reasoning": round(sum(r["no_reasoning_pred"] == r["gold"] for r in rows) / n, 4),
        "pred_letters": {L: Counter(r["pred"] for r in rows).get(L, 0) for L in LETTERS},
        "gold_letters": {L: Counter(r["gold"] for r in rows).get(L, 0) for L in LETTERS},
        "reached_answer_line": round(sum(r["reached_answer"] for r in rows) / n, 4),
        "reasoning_tokens_mean": _mean([r["n_reasoning_tokens"] for r in rows]),
        "settle_fraction_mean": _mean(settle),
        "settle_fraction_median": round(statistics.median(settle), 4),
        "settle_fraction_mean_correct": _mean([r["settle_fraction"] for r in rows if r["correct"]]),
        "oracle_saving": round(1 - statistics.fmean(settle), 4),
        "stated_fraction_mean": _mean([r["stated_fraction"] for r in rows if r["stated_fraction"] is not None]),
        "settle_stride": settle_stride,
        "at_budget": at_budget,
        "rows": rows,
    }
