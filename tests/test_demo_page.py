"""The report's "reasoning" block (texts with kept / skipped / marked spans, one item at a time) in a real browser,
and plot titles that wrap instead of being clipped."""

import re

import pytest

from probescope.report import render_report
from probescope.report.browser import check_page, find_chromium
from probescope.report.render import draw_spec
from probescope.report.runs import RunDir
from probescope.report.svg import draw, wrap

LONG = "smollm2-135m-reasoner: tokens saved vs agreement with full reasoning (probe's own answer, τ sweep of 20 values)"


def _belief(n: int = 30) -> dict:
    x = list(range(1, n + 1))
    return {"type": "line", "title": LONG, "x_label": "reasoning tokens", "y_label": "probe P(option)", "y_range": [0, 1],
            "series": [{"name": f"({L})", "x": x, "y": [((k + j) % 4) / 4 for j in x]} for k, L in enumerate("ABCD")],
            "vlines": [{"x": 12, "label": "exit"}], "hlines": [{"y": 0.9, "label": "τ"}]}


def _spec(n: int = 3) -> dict:
    items = []
    for i in range(n):
        items.append({"title": f"problem {i}: 7 × {i} = ?", "tab": f"#{i + 1}", "subtitle": "exit after 12 of 30 tokens",
                      "segments": [{"text": f"What is 7 × {i}?\n(A) {7 * i}\n(B) 3", "kind": "prompt"},
                                   {"text": f"We need 7 × {i}.\n7 × {i} = {7 * i}.\n", "kind": "kept"},
                                   {"text": "exit · P(A) = 0.97", "kind": "marker", "note": "the probe fired here"},
                                   {"text": f"Check: {7 * i} ÷ 7 = {i}. <b>not bold</b>\nBoth checks pass.\n",
                                    "kind": "skipped"},
                                   {"text": "answer at exit: (A) · full reasoning: (A)", "kind": "answer"}],
                      "plot": _belief(), "plot_caption": "τ = 0.9"})
    return {"type": "reasoning", "title": "Reasoning, problem by problem", "items": items,
            "legend": {"skipped": "skipped by the exit"}}


def test_long_titles_wrap_and_the_plot_grows():
    assert all(len(line) * 8.6 <= 616 for line in wrap(LONG, 616)) and len(wrap(LONG, 616)) == 2
    assert wrap("x" * 200, 616)[0] == "x" * 71  # one unbreakable word is split, not clipped
    svg = draw(_belief())
    assert svg.count("<tspan") == 2 and 'height="377"' in svg and 'translate(0,17)' in svg
    assert 'height="360"' in draw({**_belief(), "title": "short"})


def test_reasoning_block_html_escapes_and_keeps_newlines():
    html = draw_spec(_spec(2))
    assert "&lt;b&gt;not bold&lt;/b&gt;" in html and "<b>not bold" not in html
    assert "7 × 1 = 7.\n" in html and "\\n" not in html  # real line breaks (the block is pre-wrap), no escapes
    assert html.count('class="rs-panel"') == 2 and html.count(" hidden>") == 1
    with pytest.raises(ValueError, match="unknown segment kind 'bold'"):
        draw_spec({"type": "reasoning", "items": [{"segments": [{"text": "x", "kind": "bold"}]}]})


# Appended to the rendered page by the test only: reads what the browser computed and flips the block.
PROBE_JS = """<script>
window.addEventListener('load',()=>{const d=document.body.dataset,b=document.querySelector('figure.rs');
const vis=()=>[...b.querySelectorAll('.rs-panel')].filter(p=>!p.hidden&&p.getBoundingClientRect().height>0);
const s=b.querySelector('.rs-panel:not([hidden]) .seg-skipped');d.skipColor=getComputedStyle(s).color;
d.skipLine=getComputedStyle(s).textDecorationLine;d.keptColor=getComputedStyle(b.querySelector('.seg-kept')).color;
const body=b.querySelector('.rs-panel:not([hidden]) .rs-body');d.bodyLines=body.innerText.split('\\n').length;
d.literalEscapes=(document.body.innerText.match(/\\\\n/g)||[]).length;d.visibleAtStart=vis().length;
d.first=vis()[0].dataset.i;b.querySelector('.rs-next').click();d.afterNext=vis()[0].dataset.i;
b.querySelector('.rs-next').click();b.querySelector('.rs-next').click();d.wrapped=vis()[0].dataset.i;
b.querySelector('.rs-prev').click();d.afterPrev=vis()[0].dataset.i;b.querySelectorAll('.rs-tab')[1].click();
d.afterTab=vis()[0].dataset.i;d.pos=b.querySelector('.rs-pos').textContent;d.plotWidth=Math.round(
vis()[0].querySelector('svg').getBoundingClientRect().width);});
</script></body>"""


def test_reasoning_page_draws_and_flips_in_chromium(tmp_path):
    assert find_chromium(), "Chromium is missing: `make test` installs Debian's chromium"
    run = RunDir(tmp_path / "r", kind="custom")
    stats = {"type": "stats", "title": "Summary", "items": [{"label": "tokens saved", "value": "56%"}]}
    run.write_metrics({"tau": 0.9, "plots": [stats, _spec(3), _belief()]})
    page = render_report(run.path)
    text = page.read_text()
    assert "http://" not in text.replace('xmlns="http://www.w3.org/2000/svg"', "")  # self-contained
    assert text.index("<h2>Summary") < text.index("<h2>Reasoning, problem by problem") < text.index("<h2>Figures")
    page.write_text(text.replace("</body>", PROBE_JS))
    res = check_page(page, screenshot=tmp_path / "page.png", height=1600)
    assert res.figures >= 3 and res.figures_ok == res.figures, res
    assert res.errors == 0 and res.console_errors == []
    a = res.attrs
    assert a["visible-at-start"] == "1" and a["first"] == "0"  # one panel per problem, one shown at a time
    assert (a["after-next"], a["wrapped"], a["after-prev"], a["after-tab"]) == ("1", "0", "2", "1")
    assert a["pos"] == "2 / 3"
    grey = [int(v) for v in re.findall(r"\d+", a["skip-color"])[:3]]
    assert grey == [154, 161, 173] and "line-through" in a["skip-line"] and a["kept-color"] != a["skip-color"]
    assert int(a["body-lines"]) >= 8 and a["literal-escapes"] == "0"  # rendered line breaks, no "\n" shown
    assert int(a["plot-width"]) > 300
    assert res.screenshot is not None and res.screenshot.stat().st_size > 10_000
