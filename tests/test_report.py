"""Reports: plots as data → SVG; the demo's page renders in headless Chromium with every figure drawn."""

import json

import pytest

from probescope.report import render_report
from probescope.report.browser import check_page, find_chromium
from probescope.report.svg import draw
from probescope.report.runs import RunDir


XY = {"x_label": "x", "y_label": "y"}


def test_plot_specs_draw_svg():
    line = draw({"type": "line", "title": "t", "series": [{"name": "a", "x": [0, 1, 2], "y": [1.0, 0.5, 0.25]}],
                 "vlines": [{"x": 1, "label": "exit"}], **XY})
    assert line.startswith("<svg") and "polyline" in line and "exit" in line
    assert "<rect" in draw({"type": "bar", "title": "b", "labels": ["x", "y"], "values": [1, -2], **XY})
    heat = draw({"type": "heatmap", "title": "h", "rows": ["r1"], "cols": ["c1", "c2"], "values": [[0.1, None]],
                 "value_label": "v", **XY})
    assert "0.100" in heat and "–" in heat
    with pytest.raises(ValueError, match="unknown plot type 'pie'"):
        draw({"type": "pie"})


def _fills(svg: str) -> dict[str, str]:
    """cell text → its rect's fill, for a heatmap's cells."""
    import re

    cells = re.findall(r'<rect x="[\d.]+" y="[\d.]+" width="[\d.]+" height="\d+" fill="([^"]+)"/>\s*<text[^>]*>([^<]+)</text>', svg)
    return {txt: fill for fill, txt in cells}


def test_signed_heatmap_is_diverging_and_centred_at_zero():
    """#36: a head at −0.18 must not render white like a zero. Signed data: red below 0, white at 0, blue above,
    the scale symmetric (−x and +x equally strong), a colour bar with 0 marked and titled."""
    svg = draw({"type": "heatmap", "title": "h", "rows": ["L0", "L1"], "cols": ["H0", "H1"],
                "values": [[-0.18, 0.0], [0.18, 0.9]], "fmt": ".2f", "value_label": "effect", **XY})
    f = _fills(svg)
    assert f["0.00"] == "rgb(255,255,255)"                      # zero is white
    r, g, b = map(int, f["-0.18"][4:-1].split(","))
    assert r > b and r > g and (g, b) != (255, 255)              # negative is red, visibly
    r2, g2, b2 = map(int, f["0.18"][4:-1].split(","))
    assert b2 > r2 and min(r2, g2, b2) == min(r, g, b)           # symmetric: as far from white on both sides
    assert 'class="colour-bar"' in svg and ">effect<" in svg and ">0<" in svg
    # unsigned data keeps the sequential scale, smallest white
    seq = _fills(draw({"type": "heatmap", "title": "h", "rows": ["a"], "cols": ["x", "y"], "values": [[0.2, 0.9]],
                       "value_label": "AUROC", **XY}))
    assert seq["0.200"] == "rgb(255,255,255)"


def test_intervals_are_drawn_and_axes_titled():
    bar = draw({"type": "bar", "title": "b", "labels": ["a", "b"], "values": [0.5, 0.2], "lo": [0.4, 0.1],
                "hi": [0.6, 0.3], "x_label": "set", "y_label": "accuracy"})
    assert bar.count('class="interval"') == 2 and ">set<" in bar and ">accuracy<" in bar
    line = draw({"type": "line", "title": "l", "series": [{"name": "a", "x": [0, 1], "y": [1, 2], "lo": [0.5, 1.5],
                                                          "hi": [1.5, 2.5]}], **XY})
    assert line.count('class="interval"') == 1


def test_legend_sits_outside_the_data_and_marker_labels_stay_inside():
    import re

    svg = draw({"type": "line", "title": "l", "legend": "top-left",
                "series": [{"name": "a long series name", "x": [0, 1], "y": [0, 1]}],
                "vlines": [{"x": 1, "label": "exit at step 1"}], **XY})
    plot_right = 640 - 16
    legend_x = float(re.search(r'<rect x="([\d.]+)" y="[\d.]+" width="10" height="10"', svg).group(1))
    assert legend_x > plot_right                                  # right of the plot area, not over it
    assert 'text-anchor="end">exit at step 1<' in svg            # the label near the right edge turns left


def test_plot_rules_are_enforced_in_strict_mode(monkeypatch):
    from probescope.report.svg import check_spec

    assert check_spec({"type": "bar", "title": "b", "labels": ["a"], "values": [1]}) == [
        "bar plot 'b': the x axis has no title (x_label)", "bar plot 'b': the y axis has no title (y_label)"]
    assert "colour bar has no title" in " ".join(check_spec({"type": "heatmap", "title": "h", **XY}))
    monkeypatch.setenv("PROBESCOPE_STRICT_PLOTS", "1")
    with pytest.raises(ValueError, match="x axis has no title"):
        draw({"type": "bar", "title": "b", "labels": ["a"], "values": [1], "y_label": "y"})


def test_every_plot_spec_in_the_source_titles_its_axes():
    """#36: walk every plot spec written as a dict literal in the wings: line/bar/heatmap name both axes (and a
    heatmap its colour scale). Specs built otherwise are checked when drawn (PROBESCOPE_STRICT_PLOTS in conftest)."""
    import ast
    from pathlib import Path

    import probescope

    bad = []
    for f in sorted(Path(probescope.__file__).parent.rglob("*.py")):
        if f.name == "svg.py":
            continue
        for node in ast.walk(ast.parse(f.read_text())):
            if not isinstance(node, ast.Dict):
                continue
            keys = {k.value for k in node.keys if isinstance(k, ast.Constant)}
            kind = next((v.value for k, v in zip(node.keys, node.values) if isinstance(k, ast.Constant)
                         and k.value == "type" and isinstance(v, ast.Constant)), None)
            if kind in ("line", "bar", "heatmap") and None not in node.keys:  # a **splat may bring the labels
                need = {"x_label", "y_label"} | ({"value_label"} if kind == "heatmap" else set())
                if need - keys:
                    bad.append(f"{f.name}:{node.lineno} {kind} lacks {sorted(need - keys)}")
    assert not bad, bad


def test_report_collects_specs_metrics_and_config(tmp_path):
    run = RunDir(tmp_path / "r", kind="custom")
    run.write_config({"lr": 0.1})
    run.write_metrics({"fvu": 0.25, "plots": [{"type": "bar", "title": "B", "labels": ["a"], "values": [1], **XY}]})
    (tmp_path / "r" / "plots.json").write_text(json.dumps([{"type": "tokens", "title": "T", "tokens": ["a", "b"], "values": [0.1, -1]}]))
    page = render_report(tmp_path / "r").read_text()
    assert page.count('<figure class="fig">') >= 4  # bar + tokens + metrics table + config table
    assert "fvu" in page and "lr" in page and "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")


# Commands that run no job (listings, rendering an existing folder, a file conversion) take no --quiet.
NOT_JOBS = {"models", "report", "probe tasks", "steer export"}


def _commands():
    import typer

    from probescope.cli import app

    def walk(cmd, prefix=""):
        if hasattr(cmd, "commands"):  # a group
            for name, sub in cmd.commands.items():
                yield from walk(sub, f"{prefix} {name}".strip())
        else:
            yield prefix, cmd

    return list(walk(typer.main.get_command(app)))


def test_every_job_command_takes_quiet_and_json():
    cmds = _commands()
    assert len(cmds) >= 20
    for name, cmd in cmds:
        opts = {o for p in cmd.params for o in getattr(p, "opts", [])}
        if name in NOT_JOBS:
            continue
        assert {"--quiet", "--json"} <= opts, f"`probescope {name}` lacks --quiet/--json: use probescope.clikit"
        out = next((p for p in cmd.params if p.name == "out"), None)
        assert out is None or not out.required, f"`probescope {name}` needs a default run folder (runs/<name>)"


def test_quiet_prints_nothing_and_json_prints_one_object(tmp_path):
    from typer.testing import CliRunner

    from probescope.cli import app

    r = CliRunner()
    args = ["cache", "--model", "tiny-llama", "--layers", "1", "--context-len", "16", "--max-tokens", "64"]
    res = r.invoke(app, [*args, "--out", str(tmp_path / "a"), "--quiet"])
    assert res.exit_code == 0 and res.output == "", res.output
    res = r.invoke(app, [*args, "--out", str(tmp_path / "b"), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)  # the whole of stdout is one JSON object
    assert out["tokens"] >= 64 and out["run_dir"] == str(tmp_path / "b") and (tmp_path / "b" / "report.html").exists()


def test_roc_curve_matches_sklearn_and_auroc():
    import numpy as np
    from sklearn.metrics import roc_curve as sk_roc

    from probescope.probes import metrics as M

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    s = np.round(rng.normal(size=300) + y, 1)  # rounded: ties
    fpr, tpr = M.roc_curve(s, y)
    f2, t2, _ = sk_roc(y, s, drop_intermediate=False)
    np.testing.assert_allclose(fpr, f2, atol=1e-12)
    np.testing.assert_allclose(tpr, t2, atol=1e-12)
    assert abs(np.trapezoid(tpr, fpr) - M.binary_auroc(s, y)) < 1e-12
    with pytest.raises(ValueError, match="both classes"):
        M.roc_curve(s, np.ones(300))


def test_latent_cards_and_eval_sections(tmp_path):
    from probescope.core.io import atomic_write_json

    run = RunDir(tmp_path / "sae", kind="sae")
    ctx = [{"activation": 2.5, "token": " cat", "context": "the", "row": 0, "pos": 1}]
    atomic_write_json(run.path / "latents.json", {"latents": {
        "3": {"frequency": 0.01, "max_activation": 2.5, "top_contexts": ctx, "label": "cat"},
        "4": {"frequency": 0.0, "max_activation": 0.0, "top_contexts": [], "label": "dead (never fired)"}}})
    atomic_write_json(run.path / "eval.json", {"fvu": 0.125, "l0": 31.5})
    page = render_report(run.path).read_text()
    assert "latent 3: cat" in page and "1 that fired, 1 silent" in page and "rgba(255,114,92,1.00)" in page
    assert "Evaluation" in page and "0.125" in page


def test_missing_run_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        render_report(tmp_path / "nope")


def test_demo_page_in_headless_chromium(tmp_path):
    assert find_chromium(), "Chromium is missing: `make test` installs Debian's chromium"
    from probescope.demo import run_demo

    run_demo(model="tiny-llama", out=str(tmp_path / "demo"), quiet=True)
    page = tmp_path / "demo" / "report.html"
    res = check_page(page, screenshot=tmp_path / "demo" / "report.png")
    assert res.figures >= 3 and res.figures_ok == res.figures
    assert res.errors == 0 and res.console_errors == []
    assert res.screenshot is not None and res.screenshot.stat().st_size > 10_000


@pytest.mark.slow
def test_make_demo_page_has_the_early_exit_plots(tmp_path):
    """`make demo`'s job (early exit with the shipped reasoner and probe) renders and draws in Chromium."""
    from probescope.demo import run_demo

    run_demo(model="smollm2-135m", out=str(tmp_path / "demo"), quiet=True)
    run = json.loads((tmp_path / "demo" / "run.json").read_text())
    assert run["kind"] == "exit-demo"
    page = (tmp_path / "demo" / "report.html").read_text()
    assert "tokens saved vs agreement" in page and "probe belief along the full reasoning" in page
    assert page.count('class="rs-panel"') == 8 and 'class="seg seg-skipped"' in page  # one tab per problem
    pareto = next(p for p in json.loads((tmp_path / "demo" / "metrics.json").read_text())["plots"]
                  if "tokens saved vs agreement" in p.get("title", ""))
    assert len(pareto["series"][0]["x"]) >= 12  # a dense τ sweep
    res = check_page(tmp_path / "demo" / "report.html", screenshot=tmp_path / "demo" / "report.png")
    assert res.figures >= 3 and res.figures_ok == res.figures and res.errors == 0 and res.console_errors == []


def test_metrics_table_reads_in_words_with_intervals():
    """#36: metrics pages were flat dumps (`before.forget.lo`): a value and its interval are one row, keys in words,
    numbers rounded."""
    from probescope.report.render import metric_rows

    rows = dict(metric_rows({"before": {"forget": {"acc": 0.95, "lo": 0.8012345, "hi": 0.99, "n": 20}},
                             "ppl": 61.83333, "ppl_ci": [60.1, 63.2], "goals": {"forget_at_chance": True},
                             "plots": [{"type": "bar"}]}))
    assert rows == {"before › forget › acc": "0.95 [0.801, 0.99]", "before › forget › n": "20",
                    "ppl": "61.8 [60.1, 63.2]", "goals › forget at chance": "yes"}
