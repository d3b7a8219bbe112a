"""Page sections for the manifold runs: a rotatable 3-D view of the shape per layer (plain SVG + JS, no network),
the per-layer scores beside their shuffled baselines, and the intervention table with intervals."""

from __future__ import annotations

import json
from pathlib import Path

from ..core.io import read_json
from ..report.render import esc, section, table

VIEW_JS = """
(()=>{const fig=document.currentScript.closest('figure');const D=JSON.parse(fig.querySelector('script.mf-data').textContent);
const svg=fig.querySelector('svg.mf-view'),W=+svg.getAttribute('width'),H=+svg.getAttribute('height');
const btns=[...fig.querySelectorAll('.mf-layer')],info=fig.querySelector('.mf-info');
let yaw=0.5,pitch=0.4,cur=Math.max(0,D.layers.indexOf(String(D.best)));
const hue=v=>D.period?360*v/D.period:240-240*(v-D.lo)/Math.max(1e-9,D.hi-D.lo);
const col=(v,a)=>`hsla(${hue(v).toFixed(0)},75%,45%,${a})`;
const rot=p=>{const [x,y,z]=[p[0],p[1]||0,p[2]||0];const x1=x*Math.cos(yaw)+z*Math.sin(yaw),z1=-x*Math.sin(yaw)+z*Math.cos(yaw);
return [x1,y*Math.cos(pitch)-z1*Math.sin(pitch),y*Math.sin(pitch)+z1*Math.cos(pitch)];};
function draw(){const L=D.layers[cur],S=D.shapes[L];let m=1e-9;
for(const p of S.means.concat(S.fit,S.points))for(const c of p)m=Math.max(m,Math.abs(c));
const k=0.42*Math.min(W,H)/m,sx=x=>W/2+k*x,sy=y=>H/2-k*y;const items=[];
S.points.forEach((p,i)=>{const r=rot(p);items.push([r[2],`<circle cx="${sx(r[0]).toFixed(1)}" cy="${sy(r[1]).toFixed(1)}" r="2.2" fill="${col(S.point_values[i],0.35)}"/>`]);});
S.means.forEach((p,i)=>{const r=rot(p),v=S.values[i],lab=D.labels[String(v)]||String(v);
items.push([r[2]+1e-6,`<circle cx="${sx(r[0]).toFixed(1)}" cy="${sy(r[1]).toFixed(1)}" r="6" fill="${col(v,0.95)}" stroke="white"><title>${lab}</title></circle>`+
(S.means.length<=24?`<text x="${(sx(r[0])+8).toFixed(1)}" y="${(sy(r[1])-6).toFixed(1)}" font-size="11" fill="#333">${lab}</text>`:'')]);});
items.sort((a,b)=>a[0]-b[0]);const fit=S.fit.map(p=>{const r=rot(p);return sx(r[0]).toFixed(1)+','+sy(r[1]).toFixed(1)}).join(' ');
const ax=[[1,0,0],[0,1,0],[0,0,1]].map((a,i)=>{const r=rot(a);return `<line x1="40" y1="${H-40}" x2="${(40+22*r[0]).toFixed(1)}" y2="${(H-40-22*r[1]).toFixed(1)}" stroke="#999"/><text x="${(42+26*r[0]).toFixed(1)}" y="${(H-38-26*r[1]).toFixed(1)}" font-size="10" fill="#777">PC${i+1}</text>`}).join('');
svg.innerHTML=`<rect width="${W}" height="${H}" fill="#fcfcfd" stroke="#e5e7eb"/>`+`<polyline points="${fit}" fill="none" stroke="#1d2330" stroke-width="1.6" stroke-opacity="0.7"/>`+items.map(x=>x[1]).join('')+ax;
btns.forEach((b,i)=>b.classList.toggle('on',i===cur));const R=D.rows[cur];
info.textContent=`layer ${L}: ${D.score} ${R.r2.toFixed(3)} (shuffled ${R.base.toFixed(3)}, 95th pct ${R.p95.toFixed(3)}; order permuted ${R.order.toFixed(3)}); LOO ${R.loo.toFixed(3)} (shuffled ${R.loo_base.toFixed(3)}); variance on PC1-3 ${S.var3.map(x=>(100*x).toFixed(0)+'%').join(' / ')}. Drag to rotate.`;
fig.dataset.layer=L;}
let drag=null;svg.addEventListener('pointerdown',e=>{drag=[e.clientX,e.clientY];svg.setPointerCapture(e.pointerId);});
svg.addEventListener('pointermove',e=>{if(!drag)return;yaw+=(e.clientX-drag[0])*0.01;pitch+=(e.clientY-drag[1])*0.01;drag=[e.clientX,e.clientY];draw();});
svg.addEventListener('pointerup',()=>{drag=null;});
btns.forEach((b,i)=>b.addEventListener('click',()=>{cur=i;draw();}));
fig.addEventListener('keydown',e=>{if(e.key==='ArrowLeft'){cur=(cur+D.layers.length-1)%D.layers.length;draw();}
else if(e.key==='ArrowRight'){cur=(cur+1)%D.layers.length;draw();}});draw();})();
"""

STYLE = """<style>.mf-nav{display:flex;flex-wrap:wrap;gap:3px;margin:4px 0 8px}.mf-nav button{font:inherit;font-size:12px;
border:1px solid #d0d5dd;background:white;border-radius:5px;padding:2px 7px;cursor:pointer}
.mf-nav button.on{background:#1d2330;color:white}.mf-info{font-size:12px;color:#444;margin-top:4px;max-width:640px}
svg.mf-view{cursor:grab;touch-action:none}</style>"""


def viewer(data: dict, best: int, score: str) -> str:
    """The 3-D view: one button per layer, the means (large, labelled), a sample of examples, the fitted shape."""
    layers = [str(r["layer"]) for r in data["layers"]]
    vals = [int(v) for v in data["labels"]]
    rows = [{"r2": r[score], "base": r["baseline"][score], "p95": r["baseline_p95"][score], "loo": r["loo"],
             "loo_base": r["baseline"]["loo"], "order": r.get("baseline_order", {}).get(score, float("nan"))}
            for r in data["layers"]]
    payload = {"layers": layers, "shapes": data["shapes"], "labels": data["labels"], "period": data["period"],
               "lo": min(vals), "hi": max(vals), "best": best, "rows": rows, "score": score}
    blob = json.dumps(payload).replace("</", "<\\/")
    buttons = "".join(f'<button type="button" class="mf-layer">L{esc(x)}</button>' for x in layers)
    return (f'<figure class="fig mf3d" tabindex="0">{STYLE}<div class="mf-nav">{buttons}</div>'
            f'<svg class="mf-view" width="640" height="480" viewBox="0 0 640 480"></svg><div class="mf-info"></div>'
            f'<script type="application/json" class="mf-data">{blob}</script><script>{VIEW_JS}</script>'
            f'<figcaption>Mean activation per value (large dots, coloured by value), a sample of single examples '
            f'(small dots) and the fitted {"circle" if data["period"] else "spline curve"} (line), on the top three '
            f'PCA axes of the per-value means. Drag to rotate; buttons or ←/→ pick the layer.</figcaption></figure>')


def _fmt(x: float) -> str:
    return f"{x:.3f}" if abs(x) < 10 else f"{x:.1f}"


def find_sentence(m: dict) -> str:
    """The find run in the user's words: the concept asked, whether a shape was found, and the best layer's fit
    beside the 95th percentiles of its two baselines, rounded."""
    cyc = m.get("period") is not None
    unit = "°" if cyc else ""
    shape = "a circle in a plane" if cyc else "a curve"
    found = str(m.get("verdict", "")).startswith("manifold found")
    return (f"Asked where {m.get('concept')} ({m.get('n_values')} values"
            + (f", cyclic with period {m['period']}" if cyc else ", in order") + f") takes a shape in {m.get('model')}: "
            + ("a manifold is found" if found else "no manifold is found (the best layer does not beat the 95th "
                                                   "percentile of both baselines on R² and held-out error)")
            + f". At layer {m['best_layer']}, {shape} fits the per-value means with R² {m['best_r2']:.2f} (values "
            f"shuffled: 95th percentile {m['best_r2_baseline_p95']:.2f}; value order permuted: "
            f"{m['best_r2_order_p95']:.2f}); a left-out value is placed within {m['best_loo']:.1f}{unit} on average "
            f"(shuffled {m['best_loo_baseline']:.1f}{unit}); {m['best_dims90']} dimensions hold 90% of the variance. "
            f"A linear read-out of the value reaches R² {m['probe']:.2f} at layer {m['probe_layer']} (shuffled 95th "
            f"percentile {m['probe_baseline_p95']:.2f})" + _set_words(m.get("best_probe_set")) + ".")


def _set_words(s: dict | None) -> str:
    if not s:
        return ""
    return (f", and {s['probe']:.2f} from layers {s['layers']} read together (shuffled 95th percentile "
            f"{s['baseline_p95']:.2f})")


def _pct(r: dict) -> str:
    return f"{r['success']:.0%} [{r['ci'][0]:.0%}, {r['ci'][1]:.0%}]"


def move_sentence(m: dict) -> str:
    """The move run in the user's words: the task, the best edit's success with its 95% Wilson interval beside the
    token swap and no edit, and how often the model was right to begin with."""
    b = m["best"]
    where = "" if m.get("positions", "concept") == "concept" else f", at the {m['positions']} positions"
    return (f"Asked to move {m.get('task')} along its circle until the target is the top answer: the best edit "
            f"(circle at layers {b['layers']}, ×{b['strength']:g}{where}) succeeds on {_pct(b)} of {m.get('n_rows')} rows, "
            f"against {_pct(m['token_swap'])} for swapping the token itself and {_pct(m['no_edit'])} with no edit; the "
            f"model answers {_pct(m['accuracy'])} of the {m['accuracy'].get('n', m.get('n_prompts'))} prompts right "
            "unedited (95% Wilson intervals).")


@section("manifold-find")
def find_section(run: Path, m: dict) -> list[str]:
    path = run / "manifold.json"
    if not path.exists():
        return []
    data = read_json(path)
    score = m.get("score", "r2")
    cyc = data.get("period") is not None
    head = ["layer", "R² plane" if cyc else "R² curve", "shuffled (mean / 95th)", "order permuted (mean / 95th)",
            "R² k-dim" if cyc else "", "LOO " + ("angle °" if cyc else "value"), "shuffled / order permuted",
            "2-fold " + ("°" if cyc else "value"), "shuffled", "linear read-out R² (shuffled 95th)", "dims90",
            "p (R²) shuffled / order"]
    body = []
    for r in data["layers"]:
        b, q = r["baseline"], r["baseline_p95"]
        o, oq = r.get("baseline_order", {}), r.get("baseline_order_p95", {})
        po = r.get("p_order", {}).get(score, float("nan"))
        body.append([r["layer"], _fmt(r[score]), f"{_fmt(b[score])} / {_fmt(q[score])}",
                     f"{_fmt(o.get(score, float('nan')))} / {_fmt(oq.get(score, float('nan')))}",
                     _fmt(r["r2"]) if cyc else "", _fmt(r["loo"]),
                     f"{_fmt(b['loo'])} / {_fmt(o.get('loo', float('nan')))}", _fmt(r["cv"]), _fmt(b["cv"]),
                     f"{_fmt(r['probe'])} ({_fmt(q['probe'])})", r["dims90"], f"{r['p'][score]:.2f} / {po:.2f}"])
    if not cyc:
        head = [h for j, h in enumerate(head) if j != 4]
        body = [[c for j, c in enumerate(row) if j != 4] for row in body]
    verdict = esc(m.get("verdict", ""))
    head = [f"<p>{esc(find_sentence(m))}</p>"] if "best_r2" in m else []
    return [f"<section><h2>The {esc(data['concept'])} manifold per layer — {verdict}</h2>", *head,
            viewer(data, m.get("best_layer", 0), score),
            "<h2>Scores per layer, beside shuffled values and permuted value order</h2>", table(head, body),
            *_flow_table(m.get("flow", [])), "</section>"]


def _flow_table(flow: list[dict]) -> list[str]:
    if not flow:
        return []
    body = [[f"{f['from']} → {f['to']}", " / ".join(f"{a:.1f}" for a in f["angles"]),
             f"{f.get('split_half_rotation', float('nan')):.1f}", _fmt(f["r2_shape"]),
             _fmt(f["baseline_r2_shape_p95"]), _fmt(f["r2_examples"]), _fmt(f["baseline_r2_examples"])] for f in flow]
    return ["<h2>From layer to layer: the linear map between consecutive layers' PCA spaces</h2>",
            table(["step", "principal angles (°)", "split-half noise (°)", "shape R²", "pairing shuffled (95th)", "examples R² (held out)",
                   "pairing shuffled (mean)"], body)]


@section("manifold-move")
def move_section(run: Path, m: dict) -> list[str]:
    rows = m.get("rows", [])
    if not rows:
        return []
    ci = lambda r: f"{r['success']:.1%} [{r['ci'][0]:.1%}, {r['ci'][1]:.1%}]"  # noqa: E731
    base = [["model's accuracy on the prompts", ci(m["accuracy"])], ["token swap", ci(m["token_swap"])],
            ["no edit (the target by chance)", ci(m["no_edit"])]]
    body = [[r["layers"], r["method"] + (f" ×{r['strength']:g}" if r["method"] == "circle" else ""), ci(r), r["n"]]
            for r in rows]
    head = [f"<p>{esc(move_sentence(m))}</p>"] if all(k in m for k in ("best", "token_swap", "no_edit", "accuracy")) \
        else []
    return [f"<section><h2>Moving {esc(m.get('task'))} along the circle: the target becomes the top answer</h2>", *head,
            table(["reference", "success [95% Wilson]"], base),
            table(["layers edited", "edit", "success [95% Wilson]", "rows"], body), "</section>"]


@section("manifold-clusters")
def clusters_section(run: Path, m: dict) -> list[str]:
    rows = m.get("clusters", [])
    if not rows:
        return [f"<section><h2>Clusters of decoder directions — {esc(m.get('verdict', ''))}</h2>"
                "<p>No cluster reached --min-size.</p></section>"]
    f = lambda x: "—" if x is None else _fmt(x)  # noqa: E731
    body = []
    for r in rows:
        circ = "too small" if r.get("circle_r2") is None else (
            f"{_fmt(r['circle_r2'])} ({_fmt(r['order_permuted_p95'])} / {_fmt(r['random_cluster_p95'])})")
        body.append([r["size"], f"{_fmt(r['mean_cosine'])} ({_fmt(r['random_cosine_mean'])})",
                     f"{f(r.get('mixture'))} ({f(r.get('random_mixture_mean'))})",
                     f"{f(r.get('separability'))} ({f(r.get('random_separability_mean'))})", circ,
                     r["shape"].split(" (")[0], ", ".join(r["labels"] or [str(j) for j in r["latents"]])[:160]])
    what = "co-fire directions" if m.get("directions") == "cofire" else "decoder directions"
    return [f"<section><h2>Clusters of {esc(m.get('n_latents'))} {what} ({esc(m.get('method'))}, "
            f"{esc(m.get('model'))} {esc(m.get('site'))}) — {esc(m.get('verdict', ''))}</h2>",
            table(["size", "mean cosine (random)", "mixture (random)", "separability nats (random)",
                   "circle R² (order permuted p95 / random cluster p95)", "shape", "latents"], body), "</section>"]


@section("manifold-transform")
def transform_section(run: Path, m: dict) -> list[str]:
    rows, top = m.get("layers", []), m.get("top", [])
    if not rows:
        return []
    f = lambda d, key: "—" if d.get(key) is None else (  # noqa: E731
        f"{_fmt(d[key]['probe'])} ({_fmt(d[key]['probe_p95'])})")
    comps = [[c["site"], f"{c['effect']:+.2f} [{c['lo']:+.2f}, {c['hi']:+.2f}]", f(c["form"], "answer_circle"),
              f(c["form"], "sum_line"), esc(c["verdict"])] for c in top]
    body = [[r["layer"], f(r, "answer_circle"), f(r, "sum_line"), f(r, "start_circle"), f(r, "offset"),
             esc(r["verdict"])] for r in rows]
    return [f"<section><h2>What transforms {esc(m.get('task'))}: {esc(m.get('verdict', ''))}</h2>",
            "<p>Read-out R² held out (shuffled values, 95th percentile, in brackets).</p>",
            table(["component", "patching effect [95% CI over folds]", "answer circle", "unwrapped sum", "form"],
                  comps),
            table(["layer", "answer circle", "unwrapped sum x + k", "start circle", "offset k", "form"], body),
            "</section>"]


@section("manifold-linebreak")
def linebreak_section(run: Path, m: dict) -> list[str]:
    rows, top = m.get("layers", []), m.get("top", [])
    if not rows:
        return []
    f = lambda d, key: f"{_fmt(d[key]['probe'])} ({_fmt(d[key]['probe_p95'])})"  # noqa: E731
    att = lambda c: ("—" if "newline_attention" not in c else  # noqa: E731
                     f"{c['newline_attention']:.0%} (layer mean {c['layer_mean_attention']:.0%})")
    comps = [[c["site"], f"{c['effect']:+.2f} [{c['lo']:+.2f}, {c['hi']:+.2f}]", f(c["carries"], "count"),
              f(c["carries"], "width"), f(c["carries"], "remaining"), att(c)] for c in top]
    body = [[r["layer"], f(r, "count"), f(r, "width"), f(r, "remaining")] for r in rows]
    return [f"<section><h2>Line breaks: {esc(m.get('verdict', ''))}</h2>",
            "<p>Read-out R² held out at the last token (shuffled values, 95th percentile, in brackets).</p>",
            table(["component", "patching effect [95% CI over folds]", "count", "width", "width − count",
                   "attention on newlines"], comps),
            table(["layer", "count", "width", "width − count"], body), "</section>"]
