"""What the probe commands do, as functions: train, eval, sweep (every layer x kind) and shift (domain A -> B).

Each takes a config dataclass, writes a run folder (config.json, metrics.json, probe files) and returns
its metrics; the CLI only parses options and prints tables.
"""

from __future__ import annotations

import dataclasses
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from ..report.job import open_job
from . import metrics as M
from .base import Probe, load_probe, make_probe
from .config import DataConfig, EvalConfig, FitOptions, ShiftConfig, SweepConfig, TrainConfig
from .data import Acts, ProbeDataset, featurize, load_dataset
from .plot import line_chart_svg, write_svg
from .pooling import POOLS
from .tasks import TASKS, make_task
from .train import FitConfig


def parse_kind(spec: str) -> tuple[str, dict[str, Any]]:
    """"linear-max" -> ("linear", {"pool": "max"}); "attention" -> ("attention", {})."""
    from .base import KINDS

    kind, _, pool = spec.partition("-")
    if kind not in KINDS:
        raise ValueError(f"unknown probe kind {spec!r}; use {', '.join(sorted(KINDS))} (pooled kinds take -mean/-last/-max)")
    kw: dict[str, Any] = {}
    if pool:
        if kind == "attention" or pool not in POOLS:
            raise ValueError(f"{spec!r}: only linear, mlp and sparse take a pooling suffix ({', '.join(POOLS)})")
        kw["pool"] = pool
    return kind, kw


def build_probe(spec: str, encoder: Any = None) -> Probe:
    kind, kw = parse_kind(spec)
    if kind == "sparse":
        if encoder is None:
            raise ValueError("the sparse kind needs an SAE: pass --sae PATH (or encoder=...)")
        kw["encoder"] = encoder
    return make_probe(kind, **kw)


def load_encoder(path: str | None) -> Any:
    """An SAE for sparse probes, read by `probescope.sae.load_sae` (the SAE feature)."""
    if path is None:
        return None
    try:
        from ..sae import load_sae  # type: ignore[attr-defined]
    except ImportError as e:
        raise ImportError("--sae needs probescope.sae.load_sae (the SAE feature), which is not available") from e
    return load_sae(path)


def fit_config(fo: FitOptions, seed: int, threads: int = 0) -> FitConfig:
    """The trainer's config of a job: its fit options and seed; `threads` its --threads (0: the trainer's one)."""
    return FitConfig(weight_decay=fo.weight_decay, cv_folds=fo.cv_folds, max_epochs=fo.max_epochs, lr=fo.lr,
                     class_weight=fo.class_weight, seed=seed, threads=threads or FitConfig.threads)


def load_data(dc: DataConfig) -> ProbeDataset:
    """The dataset of a config: a file / hf: dataset when `data` is set, else the built-in task."""
    if dc.data:
        return load_dataset(dc.data).with_splits(seed=dc.seed)
    if not dc.task:
        raise ValueError("no data: pass --task NAME (built-in) or --data FILE")
    return make_task(dc.task, dc.n_per_domain, dc.seed)


def indices(ds: ProbeDataset, split: str | None = None, domain: str | None = None) -> list[int]:
    if domain is not None and domain not in ds.domains:
        raise ValueError(f"dataset '{ds.name}' has no domain {domain!r}; domains: {ds.domain_names}")
    idx = [i for i in range(len(ds)) if (split is None or ds.splits[i] == split) and (domain is None or ds.domains[i] == domain)]
    if not idx:
        raise ValueError(f"dataset '{ds.name}' has no examples with split={split!r}, domain={domain!r}")
    return idx


def score_sets(probe: Probe, acts: Acts, ds: ProbeDataset, sets: dict[str, tuple[str, str | None]],
               ctrl: Acts | None) -> tuple[dict[str, dict[str, float]], list[dict[str, Any]]]:
    """Metrics per named (split, domain) set, plus a ROC-curve plot spec per set (one place for the scoring loop)."""
    from .data import encode_labels

    out, plots = {}, []
    ctrl_probs = probe.predict_proba(ctrl) if ctrl is not None and len(ctrl) else None
    for name, (split, domain) in sets.items():
        idx = indices(ds, split, domain)
        y = encode_labels([ds.labels[i] for i in idx], probe.classes, n=len(idx))
        probs = probe.predict_proba(acts[idx])
        out[name] = M.evaluate(probs, y, ctrl_probs)
        try:
            series = M.roc_series(probs, y, probe.classes)
        except ValueError:  # one class only in this set: no curve
            continue
        where = f"{split}" + (f", {domain}" if domain else "")
        plots.append({"type": "line", "title": f"ROC: {probe.kind} probe, layer {probe.layer} ({name}: {where})",
                      "x_label": "false positive rate", "y_label": "true positive rate", "series": series})
    return out, plots


def _control(ds: ProbeDataset, acts: Acts, classes: list, domain: str | None) -> Acts | None:
    """Held-out control data: validation examples of the first ('negative') class."""
    idx = [i for i in indices(ds, "val", domain) if ds.labels[i] == classes[0]]
    return acts[idx] if idx else None


def _rundir(out: str | None, cmd: str):
    from ..report.runs import RunDir

    if out:
        return RunDir(out, kind=f"probe-{cmd}")
    return RunDir.new(f"probe-{cmd}-{time.strftime('%Y%m%d-%H%M%S')}", kind=f"probe-{cmd}")


def _precheck(out: str | None, cmd: str, config: Any = None) -> None:
    """Refuse an --out holding another kind of run (or, given `config`, other settings) before any work."""
    from ..report.runs import check_run_folder

    check_run_folder(out, f"probe-{cmd}", config)


@contextmanager
def layer_job(cfg: Any, cmd: str, model: Any = None, tokenizer: Any = None, **fields: Any) -> Iterator[tuple[Any, Any]]:
    """The start of a probe job at one layer: --out's kind checked, the model loaded (threads set), `--layer`
    resolved on it (the middle block by default), then the folder's settings checked against the config with that
    layer (and `fields`). Yields (job, config)."""
    import dataclasses

    from ..report.job import open_job

    _precheck(cfg.out, cmd)
    with open_job(cfg, None, model, tokenizer) as job:
        cfg = dataclasses.replace(cfg, layer=resolve_layer(job.model, cfg.layer), **fields)
        _precheck(cfg.out, cmd, cfg)
        yield job, cfg


def _middle(model: Any) -> int:
    from ..core.hooks import n_layers

    return n_layers(model) // 2


def resolve_layer(model: Any, layer: int | None) -> int:
    """`--layer` on the loaded model: the middle block when not given; one outside the model refused by name."""
    from ..core.hooks import n_layers

    layer = _middle(model) if layer is None else layer
    if not 0 <= layer < n_layers(model):
        raise ValueError(f"--layer {layer}: the model has layers 0..{n_layers(model) - 1}")
    return layer


def _acts(model, tok, ds: ProbeDataset, layers: list[int], dc: DataConfig) -> dict[int, Acts]:
    return featurize(model, tok, ds.texts, layers, max_length=dc.max_length, batch_size=dc.batch_size,
                     drop_first=dc.drop_first, threads=dc.threads or 1)  # --threads 0: one (fastest on a busy machine)


def mixing(ds: ProbeDataset, domain: str | None) -> dict[str, Any] | None:
    """The default-domain rule: with no `domain` on a dataset of several domains, the probe is trained on all of them
    mixed on purpose, each domain weighted to the same total (`train.domain_weights`), and the run says so. None when
    one domain is used."""
    if domain is not None or len(ds.domain_names) < 2:
        return None
    return {"domains": ds.domain_names, "weights": "domain-balanced",
            "note": f"trained on {len(ds.domain_names)} domains mixed ({', '.join(ds.domain_names)}) with domain-balanced "
                    "weights; the test split is scored per domain too; pass --domain NAME to train on one"}


def _fit(spec: str, acts: Acts, ds: ProbeDataset, domain: str | None, fo: FitOptions, seed: int, encoder: Any,
         threads: int = 0) -> Probe:
    from .train import domain_weights

    tr, va = indices(ds, "train", domain), indices(ds, "val", domain)
    probe = build_probe(spec, encoder)
    val = (acts[va], [ds.labels[i] for i in va])
    sw = domain_weights([ds.domains[i] for i in tr]) if mixing(ds, domain) else None
    return probe.fit(acts[tr], [ds.labels[i] for i in tr], val=val, config=fit_config(fo, seed, threads), classes=ds.classes,
                     sample_weight=sw)


# ----------------------------------------------------------------------------------------------------------


def run_train(cfg: TrainConfig, model: Any = None, tokenizer: Any = None) -> dict[str, Any]:
    """Train one probe (kind, layer) on the train split; report val and test metrics."""
    _precheck(cfg.out, "train")  # refuses an --out holding another kind of run, before any work
    with open_job(cfg.data, None, model, tokenizer) as job:
        model, tok = job.model, job.tokenizer
        ds = load_data(cfg.data)
        layer = resolve_layer(model, cfg.layer)
        _precheck(cfg.out, "train", dataclasses.replace(cfg, layer=layer))
        acts = _acts(model, tok, ds, [layer], cfg.data)[layer]
        probe = _fit(cfg.kind, acts, ds, cfg.domain, cfg.fit, cfg.data.seed, load_encoder(cfg.sae), cfg.data.threads)
        ctrl = _control(ds, acts, probe.classes, cfg.domain)
        res: dict[str, Any] = {"kind": cfg.kind, "layer": layer, "model": probe.model_id, "fit": probe.fit_info}
        sets = {s: (s, cfg.domain) for s in ("val", "test")}
        mix = mixing(ds, cfg.domain)
        if mix:
            sets.update({f"test:{d}": ("test", d) for d in mix["domains"]})
        scores, plots = score_sets(probe, acts, ds, sets, ctrl)
        res.update({k: v for k, v in scores.items() if ":" not in k})
        if mix:
            mix["test_by_domain"] = {k.split(":", 1)[1]: v for k, v in scores.items() if ":" in k}
            res["mixed_domains"] = mix
        res["plots"] = plots
        run = _rundir(cfg.out, "train")
        run.write_config(dataclasses.replace(cfg, layer=layer))
        probe.save(run.path / "probe")
        run.write_metrics(res)
        res["run"] = str(run.path)
        return res


def run_eval(cfg: EvalConfig, model: Any = None, tokenizer: Any = None) -> dict[str, Any]:
    """Score a saved probe on a split (and domain) of a dataset, with the model it was trained on."""
    if (Path(cfg.probe) / "probe" / "probe.json").exists():  # a train run's folder names its probe
        cfg = dataclasses.replace(cfg, probe=str(Path(cfg.probe) / "probe"))
    _precheck(cfg.out, "eval", cfg)
    probe = load_probe(cfg.probe, **({"encoder": load_encoder(cfg.sae)} if cfg.sae else {}))
    with open_job(cfg.data, None, model, tokenizer) as job:
        model, tok = job.model, job.tokenizer
        probe.check_model(model)
        ds = load_data(cfg.data)
        acts = _acts(model, tok, ds, [probe.layer], cfg.data)[probe.layer]
        try:
            ctrl = _control(ds, acts, probe.classes, cfg.domain)
        except ValueError:
            ctrl = None
        scores, plots = score_sets(probe, acts, ds, {cfg.split: (cfg.split, cfg.domain)}, ctrl)
        res = {"probe": cfg.probe, "kind": probe.kind, "layer": probe.layer, "split": cfg.split, "domain": cfg.domain,
               "metrics": scores[cfg.split], "plots": plots}
        run = _rundir(cfg.out, "eval")
        run.write_config(cfg)
        run.write_metrics(res)
        res["run"] = str(run.path)
        return res


def run_sweep(cfg: SweepConfig, model: Any = None, tokenizer: Any = None) -> dict[str, Any]:
    """Every layer (or `layers`) x every kind: val and test metrics; best layer per kind chosen on val only."""
    from ..core.progress import progress

    _precheck(cfg.out, "sweep")
    with open_job(cfg.data, None, model, tokenizer) as job:
        model, tok = job.model, job.tokenizer
        ds = load_data(cfg.data)
        layers = job.layers(cfg.layers)
        _precheck(cfg.out, "sweep", dataclasses.replace(cfg, layers=layers))  # before any probe file is replaced
        run = _rundir(cfg.out, "sweep")
        acts = _acts(model, tok, ds, layers, cfg.data)
        encoder = load_encoder(cfg.sae)
        rows, series, best = [], {}, {}
        with progress(len(layers) * len(cfg.kinds), "sweep", unit="probe") as bar:
            for spec in cfg.kinds:
                vals, tests = [], []
                for layer in layers:
                    probe = _fit(spec, acts[layer], ds, cfg.domain, cfg.fit, cfg.data.seed, encoder, cfg.data.threads)
                    ctrl = _control(ds, acts[layer], probe.classes, cfg.domain)
                    r = {"kind": spec, "layer": layer, "fit_seconds": probe.fit_info.get("fit_seconds")}
                    r.update(score_sets(probe, acts[layer], ds, {s: (s, cfg.domain) for s in ("val", "test")}, ctrl)[0])
                    rows.append(r)
                    vals.append(r["val"][cfg.metric])
                    tests.append(r["test"][cfg.metric])
                    if spec not in best or r["val"][cfg.metric] > best[spec]["val"][cfg.metric]:
                        best[spec] = r
                        probe.save(run.path / f"probe-{spec}")
                    bar.advance()
                series[spec] = {"layers": layers, "val": vals, "test": tests}
        svg = line_chart_svg({k: (v["layers"], v["val"]) for k, v in series.items()},
                             f"{cfg.metric} by layer ({ds.name}, validation split)", "layer", cfg.metric)
        write_svg(run.path / "sweep.svg", svg)
        res = {"metric": cfg.metric, "layers": layers, "rows": rows, "series": series,
               "best": {k: {"layer": v["layer"], "val": v["val"][cfg.metric], "test": v["test"][cfg.metric]} for k, v in best.items()},
               "plot": "sweep.svg"}
        run.write_config(dataclasses.replace(cfg, layers=layers))
        run.write_metrics(res)
        res["run"] = str(run.path)
        return res


def run_shift(cfg: ShiftConfig, model: Any = None, tokenizer: Any = None) -> dict[str, Any]:
    """Train every kind on domain A (train split); score in-domain (A test) and shifted (B test)."""
    _precheck(cfg.out, "shift")
    with open_job(cfg.data, None, model, tokenizer) as job:
        model, tok = job.model, job.tokenizer
        ds = load_data(cfg.data)
        a, b = cfg.train_domain, cfg.eval_domain
        if a is None or b is None:
            if cfg.data.task in TASKS and not cfg.data.data:
                a, b = a or TASKS[cfg.data.task].shift[0], b or TASKS[cfg.data.task].shift[1]
            else:
                names = ds.domain_names
                if len(names) < 2:
                    raise ValueError(f"dataset '{ds.name}' has one domain ({names}): a shift needs two; add a 'domain' column")
                a, b = a or names[0], b or next(n for n in names if n != (a or names[0]))
        layer = resolve_layer(model, cfg.layer)
        _precheck(cfg.out, "shift", dataclasses.replace(cfg, layer=layer, train_domain=a, eval_domain=b))
        acts = _acts(model, tok, ds, [layer], cfg.data)[layer]
        encoder = load_encoder(cfg.sae)
        run = _rundir(cfg.out, "shift")
        rows, rocs = [], []
        for spec in cfg.kinds:
            probe = _fit(spec, acts, ds, a, cfg.fit, cfg.data.seed, encoder, cfg.data.threads)
            ctrl = _control(ds, acts, probe.classes, a)
            r: dict[str, Any] = {"kind": spec, "fit_seconds": probe.fit_info.get("fit_seconds")}
            scores, plots = score_sets(probe, acts, ds, {"in_domain": ("test", a), "shifted": ("test", b)}, ctrl)
            r.update(scores)
            r["auroc_drop"] = r["in_domain"]["auroc"] - r["shifted"]["auroc"]
            rows.append(r)
            rocs += plots
            probe.save(run.path / f"probe-{spec}")
        heat = {"type": "heatmap", "title": f"AUROC: trained on {a}, tested on {a} (in-domain) and {b} (shifted)",
                "rows": [r["kind"] for r in rows], "cols": [f"in-domain ({a})", f"shifted ({b})", "drop"],
                "values": [[r["in_domain"]["auroc"], r["shifted"]["auroc"], r["auroc_drop"]] for r in rows], "fmt": ".3f",
                "signed": False, "x_label": "test set", "y_label": "probe kind", "value_label": "AUROC (drop: difference)"}
        res = {"layer": layer, "train_domain": a, "eval_domain": b, "rows": rows, "plots": [heat] + rocs}
        run.write_config(dataclasses.replace(cfg, layer=layer, train_domain=a, eval_domain=b))
        run.write_metrics(res)
        res["run"] = str(run.path)
        return res
