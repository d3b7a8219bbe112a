"""Reports: plots as data → SVG; the demo's page renders in headless Chromium with every figure drawn."""

import json

import pytest

from probescope.report import render_report
from probescope.report.browser import check_page, find_chromium
from probescope.report.svg import draw
from probescope.runs import RunDir


def test_plot_specs_draw_svg():
    line = draw({"type": "line", "title": "t", "series": [{"name": "a", "x": [0, 1, 2], "y": [1.0, 0.5, 0.25]}],
                 "vlines": [{"x": 1, "label": "exit"}]})
    assert line.startswith("<svg") and "polyline" in line and "exit" in line
    assert "<rect" in draw({"type": "bar", "title": "b", "labels": ["x", "y"], "values": [1, -2]})
    heat = draw({"type": "heatmap", "title": "h", "rows": ["r1"], "cols": ["c1", "c2"], "values": [[0.1, None]]})
    assert "0.100" in heat and "–" in heat
    with pytest.raises(ValueError, match="unknown plot type 'pie'"):
        draw({"type": "pie"})


def test_report_collects_specs_metrics_and_config(tmp_path):
    run = RunDir(tmp_path / "r", kind="custom")
    run.write_config({"lr": 0.1})
    run.write_metrics({"fvu": 0.25, "plots": [{"type": "bar", "title": "B", "labels": ["a"], "values": [1]}]})
    (tmp_path / "r" / "plots.json").write_text(json.dumps([{"type": "tokens", "title": "T", "tokens": ["a", "b"], "values": [0.1, -1]}]))
    page = render_report(tmp_path / "r").read_text()
    assert page.count('<figure class="fig">') >= 4  # bar + tokens + metrics table + config table
    assert "fvu" in page and "lr" in page and "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")


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
    assert "tokens saved vs agreement" in page and "probe belief along one full reasoning" in page
    res = check_page(tmp_path / "demo" / "report.html", screenshot=tmp_path / "demo" / "report.png")
    assert res.figures >= 2 and res.figures_ok == res.figures and res.errors == 0 and res.console_errors == []
