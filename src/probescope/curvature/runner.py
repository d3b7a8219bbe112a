"""Jobs behind `probescope curvature organism | fit | edit | eval`: one `run_*(cfg, model=None, tokenizer=None)` per
config dataclass (`curvature/config.py`), writing a run folder (config.json, metrics.json with plot specs,
artefacts) and its report page. A model object given is used instead of loading `cfg.model` (an organism's
weights are loaded into it)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from ..core.io import read_json
from ..report.job import open_job
from ..report.runs import RunDir
from . import report as _report  # noqa: F401  (registers the report sections used by these runs' pages)
from .config import EditConfig, EvalConfig, FitConfig, OrganismConfig
from .edit import make_edit
from .factors import FactorConfig, KFACFactors, collect_factors, token_windows
from .organism import _layers, canaries, eval_data, load_organism, score, skill_items, train_organism
from .sweep import run_sweep, sweep_plots
from .targets import mlp_matrices


def held_out_split(texts: list[str]) -> tuple[list[str], list[str]]:
    """(texts for the factors, held-out texts for perplexity): every 10th document is held out."""
    return [t for i, t in enumerate(texts) if i % 10 != 9], [t for i, t in enumerate(texts) if i % 10 == 9]


def corpus_split(data: str | None = None, field: str = "text") -> tuple[list[str], list[str]]:
    """`held_out_split` of a corpus (`core.data.corpus_texts`). Default: the project's corpus (stdlib docstrings),
    which never contains the canaries."""
    from ..core.data import corpus_texts

    return held_out_split(corpus_texts(data, field))


def _load(job: Any, organism: str | None, model: Any = None, tokenizer: Any = None):
    """(model, tokenizer, organism record or None): the organism's fine-tuned model when `organism` is given (its
    weights loaded into `model` when one is given), else the job's model."""
    if organism:
        return load_organism(organism, model=model, tokenizer=tokenizer)
    return job.model, job.tokenizer, None


# ---------------------------------------------------------------------------------------------------------- organism
def run_organism(cfg: OrganismConfig, model: Any = None, tokenizer: Any = None, *,
                 quiet: bool | None = None) -> dict[str, Any]:
    """Train the memorization organism into `cfg.out` and score base and organism (recall, skill, perplexity)."""
    with open_job(cfg, "curvature-organism", model, tokenizer) as job:
        base, tok = job.model, job.tokenizer
        layers = _layers(base, cfg.layers)  # checked against the model before anything is written
        run = job.run
        run.write_config(cfg.settings())
        cans = canaries(tok, cfg.n_canaries, cfg.prefix_tokens, cfg.suffix_tokens, cfg.seed)
        _, test = skill_items(cfg.n_skill_train, cfg.n_skill_test, cfg.seed)
        _, held = corpus_split()
        win = token_windows(tok, held, 128)[:cfg.n_text_windows]
        data = eval_data(base, tok, cans, cfg.prefix_tokens, test, win, min(layers))
        s_base = score(base, data)
        rec = train_organism(cfg, run.path, model=base, tokenizer=tok, quiet=quiet)
        load_organism(run.path, model=base, tokenizer=tok)  # a reused folder: its weights, not the base's
        s_org = score(base, data)
    m = {"base": s_base, "organism": s_org, "train_seconds": rec["train_seconds"], "matrices": rec["matrices"],
         "memorized": s_org["recall"] >= 0.9,
         **({"warning": unmemorized_message(cfg.out, s_base["recall"], s_org["recall"])}
            if s_org["recall"] < MIN_RECALL else {}),
         "plots": [{"type": "line", "title": "Training loss", "x_label": "step", "y_label": "loss",
                    "series": [{"name": "canary suffixes", "x": list(range(len(rec["losses"]))),
                                "y": [x[0] for x in rec["losses"]]},
                               {"name": "skill answers", "x": list(range(len(rec["losses"]))),
                                "y": [x[1] for x in rec["losses"]]}]}]}
    run.write_metrics(m)
    return m


MIN_RECALL = 0.5  # an organism recalling fewer of its canaries gives a curvature edit nothing to remove


def unmemorized_message(folder: str | Path, base: float, recall: float) -> str:
    return (f"the organism in {folder} recalls {recall:.2f} of its canaries (the base model {base:.2f}): it did not "
            f"memorize them, so fitting and editing it can show nothing; train it longer (--steps) or with a larger "
            f"--lr until its recall is at least {MIN_RECALL} (or pass --allow-unmemorized to go on all the same)")


def check_memorized(folder: str | Path) -> None:
    """Refuse an organism whose own run says it did not memorize (metrics.json: organism recall < MIN_RECALL)."""
    p = Path(folder) / "metrics.json"
    if not p.exists():
        return  # trained through the API without a run page: nothing recorded to check
    m = read_json(p)
    org, base = (m.get("organism") or {}).get("recall"), (m.get("base") or {}).get("recall", float("nan"))
    if org is not None and org < MIN_RECALL:
        raise ValueError(unmemorized_message(folder, base, org))


# ---------------------------------------------------------------------------------------------------------- fit
def spectrum_plots(f: KFACFactors) -> list[dict[str, Any]]:
    """Per matrix kind: eigenvalue spectra of A and G (log10), and the cumulative share of curvature mass against the
    share of components kept (sorted by λ_G·λ_A)."""
    kinds: dict[str, list[str]] = {}
    for n in f.names:
        kinds.setdefault(n.rsplit(".", 1)[-1], []).append(n)
    plots = []
    for kind, names in kinds.items():
        cum, spec = [], []
        for n in names:
            e = f.eigen(n)
            prod = torch.outer(e.lam_g, e.lam_a).flatten().sort(descending=True).values
            c = (prod.cumsum(0) / prod.sum().clamp_min(1e-300))
            idx = torch.unique(torch.logspace(0, torch.log10(torch.tensor(float(prod.numel()))), 60).long()) - 1
            cum.append({"name": n, "x": [float((i + 1) / prod.numel()) for i in idx.tolist()],
                        "y": [float(c[i]) for i in idx.tolist()]})
            for lab, lam in (("A", e.lam_a), ("G", e.lam_g)):
                spec.append({"name": f"{n} {lab}", "x": list(range(1, lam.numel() + 1)),
                             "y": [float(torch.log10(v.clamp_min(1e-30))) for v in lam]})
        plots.append({"type": "line", "title": f"{kind}: share of curvature mass in the top components",
                      "x_label": "share of components kept", "y_label": "share of mass", "log_x": True, "series": cum})
        plots.append({"type": "line", "title": f"{kind}: eigenvalues of A and G", "x_label": "index",
                      "y_label": "log10 λ", "log_x": True, "series": spec})
    return plots


def run_fit(cfg: FitConfig, model: Any = None, tokenizer: Any = None, *, quiet: bool | None = None) -> dict[str, Any]:
    """Fit the factors into `cfg.out`/factors (resumed after a kill); their summary and spectra."""
    import shutil

    if cfg.organism and not cfg.allow_unmemorized:
        check_memorized(cfg.organism)  # before anything is written
    with open_job(cfg, None, model, tokenizer) as job:
        model, tok, _ = _load(job, cfg.organism, model, tokenizer)
        mats = mlp_matrices(model, _layers(model, cfg.layers), cfg.matrices)  # checked before anything is written
        run = RunDir(cfg.out, kind="curvature-fit")
        if run.overwrite and (run.path / "config.json").exists() and run.read("config.json") != asdict(cfg):
            shutil.rmtree(run.path / "factors", ignore_errors=True)  # replaced: its sums belong to other settings
        run.write_config(cfg)
        texts, _ = held_out_split(job.texts())
        fc = FactorConfig(fisher=cfg.fisher, context_len=cfg.context_len, batch_size=cfg.batch_size,
                          max_tokens=cfg.max_tokens, min_token_ratio=cfg.min_token_ratio, seed=cfg.seed)
        f = collect_factors(model, tok, texts, mats, fc, out_dir=run.path / "factors", quiet=quiet)
    mem = sum(v.numel() * v.element_size() for v in list(f.a_sum.values()) + list(f.g_sum.values()))
    m = {"factors": str(run.path / "factors"), "model": f.model, "fisher": f.fisher, "n_tokens": f.n_tokens,
         "matrices": f.names, "sites": [t["site"] for t in f.targets], "seconds": f.meta.get("seconds"),
         "factor_bytes": mem, "per_matrix": f.summary(), "plots": spectrum_plots(f)}
    run.write_metrics(m)
    return m


# ---------------------------------------------------------------------------------------------------------- edit
def run_edit(cfg: EditConfig, model: Any = None, tokenizer: Any = None, *,
             quiet: bool | None = None) -> dict[str, Any]:
    """Plan the edit and save it into `cfg.out`/edit; its summary (share of components kept per matrix)."""
    f = KFACFactors.load(cfg.factors)
    with open_job(cfg, None, model, tokenizer) as job:
        model, tok, _ = _load(job, cfg.organism, model, tokenizer)
        keep = None if cfg.top_k is not None else cfg.keep
        ed = make_edit(model, f, cfg.method, keep=keep, top_k=cfg.top_k, seed=cfg.seed,
                       strict_model=not cfg.allow_other_model)
    run = RunDir(cfg.out, kind="curvature-edit")
    run.write_config(cfg)
    ed.save(run.path / "edit")
    per = ed.config["per_matrix"]
    m = {"edit": str(run.path / "edit"), "method": cfg.method, "keep": keep, "top_k": cfg.top_k,
         "model": ed.config["model"], "sites": [t["site"] for t in ed.targets],
         "kept_share_params": sum(v["n_keep"] for v in per.values()) / sum(v["n_total"] for v in per.values()),
         "per_matrix": per,
         "plots": [{"type": "bar", "title": "Share of each matrix's components kept", "labels": list(per),
                    "values": [v["n_keep"] / v["n_total"] for v in per.values()], "x_label": "matrix (site)",
                    "y_label": "share of components kept"}]}
    run.write_metrics(m)
    return m


# ---------------------------------------------------------------------------------------------------------- eval
def run_eval(cfg: EvalConfig, model: Any = None, tokenizer: Any = None, *,
             quiet: bool | None = None) -> dict[str, Any]:
    """The sweep into `cfg.out`: per method and share kept, recall, perplexity and skill with 95% intervals (the
    organism's weights are loaded into `model` when one is given)."""
    if not cfg.allow_unmemorized:
        check_memorized(cfg.organism)  # nothing else matters if the organism memorized nothing
    facs = {}
    for path in cfg.factors:
        f = KFACFactors.load(path)
        facs[f.fisher if f.fisher not in facs else Path(path).parent.name] = f
    run = RunDir(cfg.out, kind="curvature-eval")
    run.write_config(cfg)
    with open_job(cfg):
        model, tok, rec = load_organism(cfg.organism, model=model, tokenizer=tokenizer)
        oc = rec["config"]
        _, test = skill_items(oc["n_skill_train"], oc["n_skill_test"], oc["seed"])
        _, held = corpus_split()
        win = token_windows(tok, held, 128)[: cfg.n_text_windows]
        data = eval_data(model, tok, rec["canaries"], oc["prefix_tokens"], test, win, rec["start_layer"])
        res = run_sweep(model, facs, data, cfg.keeps, cfg.methods, seed=cfg.seed, quiet=quiet,
                        strict_model=not cfg.allow_other_model)
    res["factors"] = {k: {"fisher": f.fisher, "n_tokens": f.n_tokens} for k, f in facs.items()}
    res["plots"] = sweep_plots(res)
    run.write_metrics(res)
    return res
