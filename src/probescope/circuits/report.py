"""The page section of a graph run: the pruned graph drawn as nodes by position × layer, edges by weight, and made
interactive by a small inline script (no network): hover a node for its label, activation, influence and strongest
edges; click to pin it (its edges stay lit, the others fade); group nodes into supernodes — automatically (by
layer band × position, or by clustering features at a position whose edge profiles agree) or by hand (drag a node
onto another, or pin some and "group pinned": each drawn as a dashed box, listed with its members, ungroupable, and
exported / loaded as JSON) — and read the supernodes' table with their strongest links.

A section of an interventions run: the predicted and measured effects of zeroing the top edges.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any

import torch

from ..core.io import read_json
from ..report.render import section, table

COLORS = {"cross layer transcoder": "#e0a030", "mlp reconstruction error": "#888888", "embedding": "#4a7bd0",
          "logit": "#3a9a5a"}
KIND = {"cross layer transcoder": "feature", "mlp reconstruction error": "error", "embedding": "token",
        "logit": "logit"}


def _row(n: dict) -> int:
    return -1 if n["layer"] == "E" else int(n["layer"])


def layout(data: dict, w: int = 960, h: int = 560) -> dict[str, tuple[float, float]]:
    """x = token position, y = layer (embeddings at the bottom, logits at the top); nodes sharing a cell fan out
    in rows of five, most influential first."""
    nodes = data["nodes"]
    toks = data["metadata"].get("prompt_tokens", [])
    n_pos = max(len(toks), 1 + max(n["ctx_idx"] for n in nodes))
    top = max([int(n["layer"]) for n in nodes if n["layer"] != "E"] or [1])
    ml, mb, mt = 40, 60, 20
    dx, dy = (w - ml - 20) / max(n_pos, 1), (h - mb - mt) / (top + 1)
    slots: dict[tuple[int, int], int] = {}
    pos: dict[str, tuple[float, float]] = {}
    for n in sorted(nodes, key=lambda n: (-(n.get("influence") or 0))):
        row = _row(n)
        key = (n["ctx_idx"], row)
        k = slots.get(key, 0)
        slots[key] = k + 1
        x = ml + dx * (n["ctx_idx"] + 0.5) + (k % 5 - 2) * min(7.0, dx / 6)
        y = h - mb - dy * (row + 1) - (k // 5) * 7
        pos[n["node_id"]] = (x, y)
    return pos


def supernodes_by_band(data: dict, n_bands: int = 6) -> dict[str, str]:
    """Each feature (and each error node) grouped with those of its kind at the same position whose layers fall in
    the same band of ⌈layers / n_bands⌉ layers; tokens and logits stay alone. Returns node_id → group name."""
    layers = [int(n["layer"]) for n in data["nodes"] if n["feature_type"] in ("cross layer transcoder",
                                                                               "mlp reconstruction error")]
    width = max(1, math.ceil((max(layers) + 1) / n_bands)) if layers else 1
    toks = data["metadata"].get("prompt_tokens", [])
    out = {}
    for n in data["nodes"]:
        kind = KIND[n["feature_type"]]
        if kind in ("feature", "error"):
            b = int(n["layer"]) // width
            tok = toks[n["ctx_idx"]] if n["ctx_idx"] < len(toks) else str(n["ctx_idx"])
            out[n["node_id"]] = f"{kind}s L{b * width}–{b * width + width - 1} @ {n['ctx_idx']} {tok!r}"
        else:
            out[n["node_id"]] = n["node_id"]
    return out


def supernodes_by_profile(data: dict, threshold: float = 0.5) -> dict[str, str]:
    """Features at the same position clustered by their edge profiles: each feature's vector of edge weights to and
    from every node (unit length); clusters merge greedily while the cosine between their mean profiles is
    ≥ `threshold` (centroid linkage). Errors, tokens and logits stay alone. Returns node_id → group name."""
    ids = [n["node_id"] for n in data["nodes"]]
    index = {k: i for i, k in enumerate(ids)}
    n_all = len(ids)
    prof = torch.zeros(n_all, 2 * n_all, dtype=torch.float64)
    for e in data["links"]:
        s, t = index[e["source"]], index[e["target"]]
        prof[s, t] += e["weight"]  # out-edges
        prof[t, n_all + s] += e["weight"]  # in-edges
    prof = prof / prof.norm(dim=1, keepdim=True).clamp_min(1e-30)
    by_node = {n["node_id"]: n for n in data["nodes"]}
    out = {k: k for k in ids}
    positions = sorted({n["ctx_idx"] for n in data["nodes"] if n["feature_type"] == "cross layer transcoder"})
    toks = data["metadata"].get("prompt_tokens", [])
    n_group = 0
    for p in positions:
        members = [[index[n["node_id"]]] for n in data["nodes"]
                   if n["feature_type"] == "cross layer transcoder" and n["ctx_idx"] == p]
        sums = [prof[m[0]].clone() for m in members]
        while len(members) > 1:
            c = torch.stack([s / s.norm().clamp_min(1e-30) for s in sums])
            sim = c @ c.T
            sim.fill_diagonal_(-2.0)
            best = int(sim.argmax())
            i, j = divmod(best, len(members))
            if float(sim[i, j]) < threshold:
                break
            members[i] += members[j]
            sums[i] = sums[i] + sums[j]
            del members[j], sums[j]
        for m in members:
            if len(m) < 2:
                continue
            layers = sorted(int(by_node[ids[k]]["layer"]) for k in m)
            tok = toks[p] if p < len(toks) else str(p)
            name = f"cluster {n_group} @ {p} {tok!r} (L{layers[0]}–{layers[-1]}, {len(m)} features)"
            n_group += 1
            for k in m:
                out[ids[k]] = name
    return out


def page_data(data: dict, pos: dict[str, tuple[float, float]], metrics: dict | None = None) -> dict[str, Any]:
    """What the page's script reads: nodes (id, kind, layer, position, token, feature, activation, influence,
    label, x, y), links (source and target as node indices, weight) and the two automatic groupings."""
    toks = data["metadata"].get("prompt_tokens", [])
    ids = [n["node_id"] for n in data["nodes"]]
    index = {k: i for i, k in enumerate(ids)}
    band, prof = supernodes_by_band(data), supernodes_by_profile(data)
    nodes = []
    for n in data["nodes"]:
        p = n["ctx_idx"]
        nodes.append({"id": n["node_id"], "kind": KIND[n["feature_type"]], "layer": n["layer"], "pos": p,
                      "token": toks[p] if p < len(toks) else "", "feature": n["feature"],
                      "activation": n.get("activation"), "influence": n.get("influence"), "label": n.get("clerp", ""),
                      "contexts": n.get("top_contexts", []),
                      "x": round(pos[n["node_id"]][0], 1), "y": round(pos[n["node_id"]][1], 1),
                      "band": band[n["node_id"]], "profile": prof[n["node_id"]]})
    links = [[index[e["source"]], index[e["target"]], e["weight"]] for e in data["links"]]
    return {"prompt": data["metadata"].get("prompt", ""), "tokens": toks, "nodes": nodes, "links": links}


def graph_svg(data: dict, max_links: int = 400, w: int = 960, h: int = 560,
              pos: dict[str, tuple[float, float]] | None = None) -> str:
    """SVG of a graph JSON (circuit-tracer schema): x = token position, y = layer (embeddings at the bottom,
    logits at the top), node colour by kind, edge width by |weight| (blue +, red −); a <title> names each node."""
    nodes = {n["node_id"]: n for n in data["nodes"]}
    if not nodes:
        return ""
    pos = pos or layout(data, w, h)
    index = {k: i for i, k in enumerate(nodes)}
    toks = data["metadata"].get("prompt_tokens", [])
    top = max([int(n["layer"]) for n in nodes.values() if n["layer"] != "E"] or [1])
    ml, mb, mt = 40, 60, 20
    n_pos = max(len(toks), 1 + max(n["ctx_idx"] for n in nodes.values()))
    dx, dy = (w - ml - 20) / max(n_pos, 1), (h - mb - mt) / (top + 1)
    links = sorted(data["links"], key=lambda e: -abs(e["weight"]))[:max_links]
    wmax = max((abs(e["weight"]) for e in links), default=1.0) or 1.0
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="cg-svg" width="{w}" height="{h}" '
           f'viewBox="0 0 {w} {h}" style="background:#fff;font:11px sans-serif">']
    for e in reversed(links):
        (x1, y1), (x2, y2) = pos[e["source"]], pos[e["target"]]
        col = "#3060c0" if e["weight"] > 0 else "#c03030"
        out.append(f'<line class="cg-edge" data-s="{index[e["source"]]}" data-t="{index[e["target"]]}" '
                   f'x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="{col}" '
                   f'stroke-opacity="0.45" stroke-width="{0.3 + 3.5 * abs(e["weight"]) / wmax:.2f}"/>')
    for nid, (x, y) in pos.items():
        n = nodes[nid]
        tip = f'{n["feature_type"]} {nid}' + (f' · {n["clerp"]}' if n.get("clerp") else "") + \
              (f' · act {n["activation"]:.3g}' if n.get("activation") is not None else "")
        r = 5 if n["feature_type"] in ("embedding", "logit") else 3.5
        out.append(f'<circle class="cg-node" data-i="{index[nid]}" cx="{x:.1f}" cy="{y:.1f}" r="{r}" '
                   f'fill="{COLORS.get(n["feature_type"], "#999")}"><title>{html.escape(tip)}</title></circle>')
    for i, t in enumerate(toks):
        out.append(f'<text x="{ml + dx * (i + 0.5):.1f}" y="{h - mb + 28}" text-anchor="middle">'
                   f'{html.escape(t[:10])}</text>')
    for row in range(-1, top + 1, max(1, (top + 2) // 8)):
        label = "emb" if row == -1 else ("logit" if row == top else f"L{row}")
        out.append(f'<text x="4" y="{h - mb - dy * (row + 1) + 4:.1f}">{label}</text>')
    out.append("</svg>")
    return "".join(out)


# The graph's interactions. Plain JS, no network; state is mirrored on <body data-cg-*> for the browser test.
# Supernodes by hand: drag a node onto another (or pin several, then "group pinned"); each is drawn as one dashed box
# around its members, listed with its members and an "ungroup" button, and the set of them is a JSON file
# ({"prompt", "supernodes": [{"name", "nodes": [node ids]}]}) to export and load back.
GRAPH_JS = r"""
(()=>{const fig=document.currentScript.closest('figure.cg');const D=JSON.parse(fig.querySelector('.cg-data').textContent);
const N=D.nodes,info=fig.querySelector('.cg-info'),list=fig.querySelector('.cg-groups'),sel=fig.querySelector('.cg-group');
const svg=fig.querySelector('svg.cg-svg'),NS=svg.namespaceURI,mine=fig.querySelector('.cg-manual');
const circles=[...fig.querySelectorAll('.cg-node')],edges=[...fig.querySelectorAll('.cg-edge')];
const boxes=document.createElementNS(NS,'g');boxes.setAttribute('class','cg-boxes');svg.insertBefore(boxes,svg.firstChild);
const pinned=new Set();let manual=[],made=0;const pal=['#1b9e77','#d95f02','#7570b3','#e7298a','#66a61e','#e6ab02','#a6761d',
'#1f78b4','#b2df8a','#fb9a99','#cab2d6','#ff7f00','#6a3d9a','#b15928','#8dd3c7','#bebada'];
const esc=s=>String(s).replace(/[&<>"]/g,c=>({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;'}[c]));
const num=v=>v==null?'–':(Math.abs(v)>=100||Math.abs(v)<0.01?Number(v).toExponential(2):Number(v).toFixed(3));
const name=n=>n.kind==='feature'?`feature ${n.feature} · L${n.layer}`:n.kind==='error'?`error · L${n.layer}`:
n.kind==='token'?'token':'logit';
const edgesOf=i=>{const ins=[],outs=[];for(const [s,t,w] of D.links){if(t===i)ins.push([s,w]);if(s===i)outs.push([t,w]);}
const top=a=>a.sort((a,b)=>Math.abs(b[1])-Math.abs(a[1])).slice(0,4).map(([j,w])=>`${esc(name(N[j]))} @${N[j].pos} (${num(w)})`).join('; ')||'–';
return [top(ins),top(outs)];};
const show=i=>{const n=N[i];const [ins,outs]=edgesOf(i);info.innerHTML=`<b>${esc(name(n))}</b> at position ${n.pos} `+
`<code>${esc(n.token)}</code>${n.label?' · '+esc(n.label):''}<br>activation ${num(n.activation)} · cumulative influence `+
`${num(n.influence)} · id <code>${esc(n.id)}</code><br>strongest inputs: ${ins}<br>strongest outputs: ${outs}`+
((n.contexts||[]).length?'<br>top contexts: '+n.contexts.map(c=>`<code>${esc(c)}</code>`).join(' · '):'');
fig.dataset.hover=i;document.body.dataset.cgHover=n.id;};
const paint=()=>{edges.forEach(e=>{const s=+e.dataset.s,t=+e.dataset.t;
const on=!pinned.size||pinned.has(s)||pinned.has(t);e.setAttribute('stroke-opacity',on?(pinned.size?'0.9':'0.45'):'0.06');});
circles.forEach(c=>{const i=+c.dataset.i;c.setAttribute('stroke',pinned.has(i)?'#000':'none');
c.setAttribute('stroke-width',pinned.has(i)?'2':'0');});fig.querySelector('.cg-pins').textContent=pinned.size?
[...pinned].map(i=>name(N[i])+' @'+N[i].pos).join(', '):'none (click a node to pin it)';
document.body.dataset.cgPinned=pinned.size;};
const groups=()=>{const key=sel.value;const g=new Map();if(key==='manual'){manual.forEach(m=>g.set(m.name,m.nodes));}
else if(key!=='none'){N.forEach((n,i)=>{const k=n[key];if(!g.has(k))g.set(k,[]);g.get(k).push(i);});}
return [...g.entries()].filter(([k,m])=>m.length>1);};
const regroup=()=>{const gs=groups();const of=new Map();gs.forEach(([k,m],j)=>m.forEach(i=>of.set(i,j)));
circles.forEach(c=>{const i=+c.dataset.i;const j=of.get(i);c.setAttribute('fill',j==null?c.dataset.fill:pal[j%pal.length]);});
const between=new Map();for(const [s,t,w] of D.links){const a=of.get(s),b=of.get(t);if(a==null||b==null||a===b)continue;
const k=a+'>'+b;between.set(k,(between.get(k)||0)+w);}
const outw=new Map();for(const [s,t,w] of D.links)outw.set(s,(outw.get(s)||0)+Math.abs(w));
const rows=gs.map(([k,m],j)=>{const inf=m.reduce((a,i)=>a+(outw.get(i)||0),0);const out=[...between.entries()]
.filter(([k2])=>+k2.split('>')[0]===j).sort((a,b)=>Math.abs(b[1])-Math.abs(a[1])).slice(0,2)
.map(([k2,w])=>`→ ${esc(gs[+k2.split('>')[1]][0])} (${num(w)})`).join('; ');
return `<tr><td><span style="color:${pal[j%pal.length]}">●</span> ${esc(k)}</td><td>${m.length}</td><td>${num(inf)}</td><td>${out||'–'}</td></tr>`;});
list.innerHTML=gs.length?`<table><tr><th>supernode</th><th>nodes</th><th>Σ |outgoing weight|</th><th>strongest links to other supernodes</th></tr>${rows.join('')}</table>`:
'<p class="cap">no supernode with more than one node</p>';document.body.dataset.cgGroups=gs.length;
document.body.dataset.cgGrouping=sel.value;};
// supernodes by hand: one dashed box each (behind the nodes), listed with members; ungroup; JSON out and in
const owner=i=>manual.findIndex(m=>m.nodes.includes(i));
const join=(a,b)=>{if(a===b)return;const ga=owner(a),gb=owner(b);if(ga<0&&gb<0)manual.push({name:`supernode ${++made}`,nodes:[b,a]});
else if(ga<0)manual[gb].nodes.push(a);else if(gb<0)manual[ga].nodes.push(b);
else if(ga!==gb){manual[gb].nodes.push(...manual[ga].nodes);manual.splice(ga,1);}drawManual();};
const exported=()=>JSON.stringify({prompt:D.prompt,supernodes:manual.map(m=>({name:m.name,nodes:m.nodes.map(i=>N[i].id)}))},null,1);
const drawManual=()=>{boxes.innerHTML='';manual.forEach((m,k)=>{const xs=m.nodes.map(i=>N[i].x),ys=m.nodes.map(i=>N[i].y);
const x0=Math.min(...xs)-7,y0=Math.min(...ys)-7,w=Math.max(...xs)+7-x0,h=Math.max(...ys)+7-y0;
const r=document.createElementNS(NS,'rect');Object.entries({class:'cg-box','data-k':k,x:x0,y:y0,width:w,height:h,rx:4,
fill:'#fff6cc','fill-opacity':'0.55',stroke:'#555','stroke-dasharray':'4 2'}).forEach(([a,v])=>r.setAttribute(a,v));
const t=document.createElementNS(NS,'text');t.setAttribute('x',x0);t.setAttribute('y',y0-2);t.setAttribute('font-size','10');
t.textContent=`${m.name} (${m.nodes.length})`;boxes.append(r,t);});
mine.querySelector('.cg-manual-list').innerHTML=manual.length?manual.map((m,k)=>`<li><b>${esc(m.name)}</b> (${m.nodes.length}): `+
m.nodes.map(i=>`${esc(name(N[i]))} @${N[i].pos}`).join(', ')+` <button type="button" class="cg-ungroup" data-k="${k}">ungroup</button></li>`).join(''):
'<li class="cap">none yet: drag a node onto another to group them</li>';
mine.querySelectorAll('.cg-ungroup').forEach(b=>b.addEventListener('click',()=>{manual.splice(+b.dataset.k,1);drawManual();}));
const a=mine.querySelector('.cg-export');a.href='data:application/json;charset=utf-8,'+encodeURIComponent(exported());
document.body.dataset.cgManual=JSON.stringify(manual.map(m=>m.nodes.map(i=>N[i].id)));document.body.dataset.cgBoxes=manual.length;
if(sel.value==='manual')regroup();};
const load=text=>{const ids=new Map(N.map((n,i)=>[n.id,i]));let g;try{g=JSON.parse(text);}catch(e){g=null;}
const bad=!g||!Array.isArray(g.supernodes)?['not a supernodes file']:g.supernodes.flatMap(s=>(s.nodes||[]).filter(x=>!ids.has(x)));
if(bad.length){mine.querySelector('.cg-load-msg').textContent='not loaded: '+(g&&Array.isArray(g.supernodes)?
'nodes not in this graph: '+bad.slice(0,5).join(', '):bad[0]);document.body.dataset.cgLoad='refused';return;}
manual=g.supernodes.map((s,k)=>({name:String(s.name||`supernode ${k+1}`),nodes:[...new Set(s.nodes.map(x=>ids.get(x)))]}))
.filter(m=>m.nodes.length>1);made=manual.length;mine.querySelector('.cg-load-msg').textContent=`loaded ${manual.length} supernodes`;
document.body.dataset.cgLoad='ok';drawManual();};
mine.querySelector('.cg-import').addEventListener('change',e=>{const f=e.target.files[0];if(f)f.text().then(load);});
mine.querySelector('.cg-load').addEventListener('click',()=>load(mine.querySelector('.cg-import-text').value));
const toSvg=e=>{const p=svg.createSVGPoint();p.x=e.clientX;p.y=e.clientY;return p.matrixTransform(svg.getScreenCTM().inverse());};
let drag=null,noClick=false;
circles.forEach(c=>c.addEventListener('mousedown',e=>{if(e.button)return;drag={i:+c.dataset.i,c,x:e.clientX,y:e.clientY,moved:false};e.preventDefault();}));
document.addEventListener('mousemove',e=>{if(!drag)return;if(Math.hypot(e.clientX-drag.x,e.clientY-drag.y)>4)drag.moved=true;
if(drag.moved){const p=toSvg(e);drag.c.setAttribute('cx',p.x);drag.c.setAttribute('cy',p.y);}});
document.addEventListener('mouseup',e=>{if(!drag)return;const d=drag;drag=null;if(!d.moved)return;noClick=true;
setTimeout(()=>{noClick=false;},0);const n=N[d.i];d.c.setAttribute('cx',n.x);d.c.setAttribute('cy',n.y);const p=toSvg(e);
let best=-1,bd=12;N.forEach((m,j)=>{if(j===d.i)return;const r=Math.hypot(m.x-p.x,m.y-p.y);if(r<bd){bd=r;best=j;}});
if(best>=0)join(d.i,best);});
circles.forEach(c=>{c.dataset.fill=c.getAttribute('fill');c.style.cursor='pointer';
c.addEventListener('mouseenter',()=>show(+c.dataset.i));
c.addEventListener('click',()=>{if(noClick)return;const i=+c.dataset.i;pinned.has(i)?pinned.delete(i):pinned.add(i);show(i);paint();});});
sel.addEventListener('change',regroup);
fig.querySelector('.cg-make').addEventListener('click',()=>{if(pinned.size>1){const m=[...pinned];pinned.clear();
manual.push({name:`supernode ${++made}`,nodes:m});paint();sel.value='manual';drawManual();regroup();}});
fig.querySelector('.cg-clear').addEventListener('click',()=>{pinned.clear();paint();});
paint();drawManual();regroup();document.body.dataset.cgNodes=N.length;document.body.dataset.cgReady='1';})();
"""


def interactive_graph(data: dict) -> str:
    """The graph as a figure: SVG, the data it was drawn from (JSON), controls and the script."""
    pos = layout(data)
    blob = json.dumps(page_data(data, pos)).replace("</", "<\\/")
    return ('<figure class="fig cg">' + graph_svg(data, pos=pos) +
            '<div class="cg-controls" style="font:13px sans-serif;margin:6px 0">'
            'supernodes: <select class="cg-group"><option value="none">none</option>'
            '<option value="band">by layer band × position</option>'
            '<option value="profile">by edge profile (features at a position)</option>'
            '<option value="manual">by hand (drag a node onto another, or pin and group)</option></select> '
            '<button class="cg-make" type="button">group pinned</button> '
            '<button class="cg-clear" type="button">unpin all</button> · pinned: <span class="cg-pins"></span></div>'
            '<div class="cg-manual" style="font:13px sans-serif">supernodes by hand (drag a node onto another to group '
            'them; drawn as dashed boxes): <ul class="cg-manual-list"></ul>'
            '<a class="cg-export" download="supernodes.json" href="#">export as JSON</a> · load: '
            '<input class="cg-import" type="file" accept=".json,application/json"> or paste it: '
            '<textarea class="cg-import-text" rows="1" cols="30"></textarea> <button class="cg-load" type="button">'
            'load</button> <span class="cg-load-msg"></span></div>'
            '<div class="cg-info cap" style="min-height:4.5em;font:13px sans-serif">hover a node for its label, '
            'activation, influence and strongest edges; click to pin it; drag it onto another to group them</div>'
            '<div class="cg-groups"></div>'
            f'<script type="application/json" class="cg-data">{blob}</script>'
            f'<script>{GRAPH_JS}</script></figure>')


def _wilson(share: float, n: int) -> str:
    """' [lo, hi]': the 95% Wilson interval of a share of `n` counted cases ('' without a count)."""
    from ..core.stats import wilson

    if not n:
        return ""
    lo, hi = wilson(round(share * n), int(n))
    return f" [{lo:.0%}, {hi:.0%}]"


def graph_sentence(m: dict) -> str:
    """The graph run in the user's words: the prompt asked, what the model predicts, how much of it the transcoders'
    features explain (replacement and completeness scores, full and pruned), rounded."""
    return (f"Attribution graph of the prompt {str(m.get('prompt', ''))!r} on {m.get('model', 'the model')}: it predicts "
            f"{m['top_logit']!r} (p {m['top_logit_prob']:.2f}). Features, not error nodes, carry "
            f"{m['replacement']:.0%} of the influence on the logits (replacement score {m['replacement']:.2f}) and "
            f"{m['completeness']:.0%} of the nodes' inputs (completeness {m['completeness']:.2f}); pruned to "
            f"{m['pruned_nodes']} nodes and {m['pruned_edges']} edges, the scores are {m['pruned_replacement']:.2f} and "
            f"{m['pruned_completeness']:.2f}.")


_MODE = {"direct": "along direct paths only", "frozen": "with attention and norms frozen",
         "free": "with the model free downstream", "model": "in the real model (no transcoders)"}


def edges_sentence(ec: dict) -> str:
    """The edge check in the user's words: each of the top features zeroed alone; how often the graph's predicted
    change of the top logit has the measured sign (a share of the edges, with its 95% Wilson interval), per setting."""
    parts = [f"{s['sign_agreement']:.0%}{_wilson(s['sign_agreement'], s.get('n', 0))} {_MODE.get(m, m)} "
             f"(r {s['pearson']:.2f})" for m, s in ec["summary"].items()]
    out = (f"Zeroing each of the top {len(ec['edges'])} features alone, the graph predicts the sign of the change of "
           f"{ec['top_logit']!r} right for " + ", ".join(parts) + ".")
    words = {"error": "error terms (each removed alone)", "token": "input tokens (each embedding zeroed alone)"}
    for kind, o in (ec.get("other_nodes") or {}).items():
        if not o["edges"]:
            continue
        parts = [f"{s['sign_agreement']:.0%}{_wilson(s['sign_agreement'], s.get('n', 0))} {_MODE.get(m, m)}"
                 for m, s in o["summary"].items()]
        out += f" For the top {len(o['edges'])} {words.get(kind, kind)}: " + ", ".join(parts) + "."
    return out


@section("circuit-graph")
def graph_section(run: Path, metrics: dict) -> list[str]:
    f = run / "graph.json"
    if not f.exists():
        return []
    data = read_json(f)
    if not data.get("nodes"):
        return []
    names = {"replacement": "replacement score", "completeness": "completeness score",
             "pruned_replacement": "replacement score, pruned graph", "pruned_completeness": "completeness, pruned graph",
             "n_feature_nodes": "feature nodes", "pruned_nodes": "nodes kept", "pruned_edges": "edges kept",
             "top_logit": "top next token", "top_logit_prob": "its probability", "seconds": "seconds"}
    rows = [[names[k], f"{metrics[k]:.2f}" if isinstance(metrics.get(k), float) else metrics.get(k)]
            for k in names if k in metrics]
    head = [f"<p>{html.escape(graph_sentence(metrics))}</p>"] if all(
        k in metrics for k in ("top_logit", "replacement", "completeness", "pruned_nodes")) else []
    return ["<section><h2>Attribution graph (pruned)</h2>", *head, interactive_graph(data),
            f"<p>prompt: <code>{html.escape(str(metrics.get('prompt', '')))}</code>. Nodes by token position (x) and "
            "layer (y): embeddings at the bottom, logits at the top; orange features, grey errors; edges blue "
            "(excitatory) or red (inhibitory), width by weight. Supernodes by layer band × position put a position's "
            "features (or errors) of the same band of layers together; by edge profile, a position's features whose "
            "edges to and from the rest of the graph point the same way (cosine of mean profiles ≥ 0.5). graph.json "
            "opens in circuit-tracer's viewer.</p>",
            table(["figure", "value"], rows), "</section>"]


@section("circuit-intervene")
def intervene_section(run: Path, metrics: dict) -> list[str]:
    ec = metrics.get("edge_check")
    out = []
    if metrics.get("effects"):
        rows = [[m, f"{e['top_logit_change']:+.4f}", ", ".join(f"{t['token']!r} {t['prob']:.2f}" for t in e["before"][:3]),
                 ", ".join(f"{t['token']!r} {t['prob']:.2f}" for t in e["after"][:3])]
                for m, e in metrics["effects"].items()]
        out += ["<section><h2>Interventions</h2>", table(["setting", "top-logit change", "before", "after"], rows),
                "</section>"]
    if ec:
        modes = list(ec["summary"])
        rows = [[m, f"{s['sign_agreement']:.2f}", f"{s['pearson']:.3f}", f"{s['max_abs_diff']:.3g}", s["n"]]
                for m, s in ec["summary"].items()]
        erows = [[f"L{e['layer']} @{e['pos']} #{e['feature']}", f"{e['activation']:.3g}", f"{e['predicted']:+.4f}",
                  *[f"{e[m]:+.4f}" for m in modes]] for e in ec["edges"]]
        out += [f"<section><h2>Top edges into {html.escape(repr(ec['top_logit']))}: predicted vs measured</h2>",
                f"<p>{html.escape(edges_sentence(ec))}</p>",
                "<p>Each feature zeroed alone; predicted: −(its edge into the top logit), the change of that demeaned "
                "logit the graph claims; measured in each setting.</p>",
                table(["setting", "sign agreement", "Pearson r", "max |measured − predicted|", "edges"], rows),
                table(["feature", "activation", "predicted", *modes], erows)]
        for kind, o in (ec.get("other_nodes") or {}).items():
            if not o["edges"]:
                continue
            name = "error term" if kind == "error" else "input token"
            krows = [[f"L{e['layer']} @{e['pos']}" if kind == "error" else f"@{e['pos']} (id {e.get('token')})",
                      f"{e['predicted']:+.4f}", *[f"{e[m]:+.4f}" for m in modes]] for e in o["edges"]]
            out += [f"<h3>Top {name} nodes, removed one at a time</h3>",
                    table([name, "predicted", *modes], krows)]
        out.append("</section>")
    return out
