"""Report sections for the curvature runs: the sweep as a table with intervals, and the equal-perplexity read-out."""

from __future__ import annotations

from pathlib import Path

from ..report.render import esc, section, table


def _ci(v, ci, fmt="{:.3f}") -> str:
    if v is None:
        return "—"
    return f"{fmt.format(v)} [{fmt.format(ci[0])}, {fmt.format(ci[1])}]"


@section("curvature-eval")
def sweep_section(run: Path, m: dict) -> list[str]:
    rows = m.get("rows", [])
    if not rows:
        return []
    b = m["base"]
    head = ["method", "keep ρ", "params kept", "canary recall [95%]", "perplexity [95%]", "skill [95%]",
            "recall removed / rel. ppl lost"]
    body = [["organism (no edit)", "—", "1.000", _ci(b["recall"], b["recall_ci"]), _ci(b["ppl"], b["ppl_ci"], "{:.2f}"),
             _ci(b["skill"], b["skill_ci"]), "—"]]
    for r in rows:
        body.append([r["method"], f"{r['keep']:g}", f"{r['kept_share_params']:.3f}", _ci(r["recall"], r["recall_ci"]),
                     _ci(r["ppl"], r["ppl_ci"], "{:.2f}"), _ci(r["skill"], r["skill_ci"]), f"{r['efficiency']:.2f}"])
    eq = m.get("summary", {}).get("equal_ppl", [])
    methods = [k for k in (eq[0].keys() if eq else []) if k not in ("keep", "ppl", "kfac_recall")]
    eq_rows = [[f"{e['keep']:g}", f"{e['ppl']:.2f}", f"{e['kfac_recall']:.3f}"] +
               ["—" if e[k] is None else f"{e[k]:.3f}" for k in methods] for e in eq]
    return ["<section><h2>Edit sweep: share of curvature mass kept → recall, perplexity, skill</h2>",
            table(head, body), "<h2>Baselines' recall at the curvature edit's perplexity (interpolated)</h2>",
            table(["keep ρ", "perplexity", "kfac recall"] + [esc(k) for k in methods], eq_rows), "</section>"]


@section("curvature-organism")
def organism_section(run: Path, m: dict) -> list[str]:
    rows = []
    for k in ("base", "organism"):
        s = m.get(k)
        if s:
            rows.append([k, _ci(s["recall"], s["recall_ci"]), f"{s['canary_token_acc']:.3f}",
                         _ci(s["ppl"], s["ppl_ci"], "{:.2f}"), _ci(s["skill"], s["skill_ci"])])
    return ["<section><h2>Memorization organism</h2>",
            table(["model", "canary exact recall [95%]", "canary token acc", "perplexity [95%]", "skill [95%]"], rows),
            "</section>"] if rows else []
