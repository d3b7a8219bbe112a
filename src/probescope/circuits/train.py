"""Transcoders for every layer in one pass: each batch of contexts runs the model once, reading every
`mlp_in.L` and `mlp_out.L` (`core.sites.read_sites`), and every layer's transcoder takes one optimiser step on
its pair. The SAE wing's pieces do the rest: the `SAE` module (TopK, AuxK, unit-norm decoder), its optimiser
rule (`sae.train._make_optimizer`) and checkpoints (`save_checkpoint` / `load_checkpoint`, safetensors + JSON).

Resume: the contexts are cut once and batch i is a fixed function of (seed, i), so a resumed run reads what an
uninterrupted one would. A checkpoint is a folder `checkpoint/step_S/` with one SAE checkpoint per layer;
`checkpoint/progress.json` (written last) names the complete one, so a run killed mid-write resumes from the
previous. The held-out contexts (the last `eval_contexts`) are never trained on.

Skip connection (`skip=True`, Paulo et al. 2025): each transcoder gets a linear `W_skip` — the ridge fit of
`mlp_out.L` on `mlp_in.L` over the first `skip_fit_tokens` of the training stream (read before training, forward
only), leaving out attention-sink tokens (MLP output norm > `SINK_RATIO` × the batch's median: SmolLM2's first
token writes ~100× the median at layers 1-3, and a fit that includes it gives the skip a gain of that size in the
sink's input direction, which chained over 30 layers turned one feature's edge into hundreds of logits) — held
fixed while the features learn what it leaves (the FVU is of the whole output, features + skip, against the MLP's).
Paulo et al. train it jointly; that is not done here.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from ..core.io import atomic_write_json, read_json
from ..core.progress import progress
from ..core.sites import d_model, n_layers, read_sites, run_model, site_hooks
from ..report.runs import RunDir, config_diff, describe_diff
from ..sae.config import SAEConfig, TrainConfig
from ..sae.core import SAE
from ..sae.train import ScheduleFreeSignSGD, _make_optimizer, load_checkpoint, save_checkpoint
from .config import TranscodersConfig
from .transcoders import attach_skip, save_transcoders, skip_of, transcode

CKPT = "checkpoint"
SINK_RATIO = 10.0  # tokens whose MLP output norm exceeds this × the batch median are left out of the skip's fit
_VOLATILE = ("out", "quiet", "threads", "checkpoint_every", "resume", "label_contexts")


def _fingerprint(cfg: TranscodersConfig, model_name: str) -> dict[str, Any]:
    d = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _VOLATILE}
    if d.get("text_field") == "text":  # the default column: fingerprints of sets trained before the option match
        d.pop("text_field")
    return {**d, "model_name": model_name}


def _contexts(cfg: TranscodersConfig, tokenizer: Any, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """(training contexts, held-out contexts, whether each starts with BOS) cut from the job's corpus."""
    from ..core.store import adds_bos, make_contexts

    bos = adds_bos(tokenizer)
    per_ctx = cfg.context_len - (1 if bos else 0)
    cps = math.ceil(cfg.batch_size / per_ctx)
    want = cps * cfg.steps + cfg.eval_contexts
    ids = make_contexts(tokenizer, texts, cfg.context_len, max_contexts=want)
    if ids.shape[0] < cps + cfg.eval_contexts:
        raise ValueError(f"the data gives {ids.shape[0]} contexts of {cfg.context_len} tokens: fewer than one batch "
                         f"({cps}) plus {cfg.eval_contexts} held out; bring more text (--data) or lower --batch-size")
    return ids[:-cfg.eval_contexts], ids[-cfg.eval_contexts:], bos


def _batch(train: torch.Tensor, cps: int, seed: int, i: int) -> torch.Tensor:
    """Batch i: `cps` contexts from the epoch's permutation (epochs repeat with new orders)."""
    per_epoch = train.shape[0] // cps
    epoch, j = divmod(i, per_epoch)
    perm = torch.randperm(train.shape[0], generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    return train[perm[j * cps:(j + 1) * cps]]


def _pairs(model: Any, ids: torch.Tensor, L: int, drop_first: bool,
           layers: list[int] | None = None) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """{layer: (mlp_in.L, mlp_out.L) as [tokens, d] float32} for `layers` (default: every layer), from one forward
    that stops after the deepest of them."""
    layers = list(range(L)) if layers is None else layers
    sites = [f"mlp_in.{i}" for i in layers] + [f"mlp_out.{i}" for i in layers]
    acts = {str(k): v for k, v in read_sites(model, ids, None, sites).items()}
    sl = slice(1, None) if drop_first else slice(None)
    d = acts[f"mlp_in.{layers[0]}"].shape[-1]
    return {i: (acts[f"mlp_in.{i}"][:, sl].reshape(-1, d).float(), acts[f"mlp_out.{i}"][:, sl].reshape(-1, d).float())
            for i in layers}


def train_transcoders(cfg: TranscodersConfig, model: Any = None, tokenizer: Any = None) -> dict[str, Any]:
    """Train (or resume) one TopK transcoder per layer into `cfg.out` on the job's corpus (`cfg.data`, or the
    built-in one); returns the metrics (also metrics.json). The model: the one given, else `cfg.model` loaded."""
    from ..report.job import open_job

    with open_job(cfg, "circuit-transcoders", model, tokenizer) as job:
        return _train(cfg, job.model, job.tokenizer, job.texts())


def _train(cfg: TranscodersConfig, model: Any, tokenizer: Any, texts: list[str]) -> dict[str, Any]:
    from ..core.dist import barrier, dist_setup, gather_objects
    from ..core.models.registry import model_id

    rank, world, _ = dist_setup("cpu")  # under torchrun the layers are split across ranks (layer i on rank i % world)
    name = model_id(model)
    L, d = n_layers(model), d_model(model)
    mine = [i for i in range(L) if i % world == rank]
    if not mine:
        raise ValueError(f"torchrun started {world} processes for a model of {L} layers: start at most {L} "
                         "(torchrun's nproc_per_node)")
    train_ids, held_ids, bos = _contexts(cfg, tokenizer, texts)
    cps = math.ceil(cfg.batch_size / (cfg.context_len - (1 if bos else 0)))
    out = Path(cfg.out)
    ckpt = out / CKPT
    fp = _fingerprint(cfg, name)
    run = RunDir(out, kind="circuit-transcoders") if rank == 0 else None
    if rank == 0 and not cfg.resume and ckpt.exists():
        shutil.rmtree(ckpt)
    barrier()
    tcfg = TrainConfig(tokens=cfg.tokens, batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed)
    dead_tokens = max(cfg.batch_size, min(tcfg.dead_tokens, cfg.tokens // 4))
    torch.manual_seed(cfg.seed)
    saes = [SAE(SAEConfig(d_in=d, k=cfg.k, expansion=cfg.expansion, hook_in=f"mlp_in.{i}", hook_out=f"mlp_out.{i}",
                          model=name, normalize_input=True), seed=cfg.seed + i) for i in range(L)]
    if cfg.skip:
        for s in saes:
            attach_skip(s, torch.zeros(d, d))  # a buffer: in checkpoints, not in the optimiser
    opts = [_make_optimizer(s, tcfg) for s in saes]
    since = [torch.zeros(s.n_latents, dtype=torch.long) for s in saes]
    step, history = 0, []
    prog = ckpt / "progress.json"
    if cfg.resume and prog.exists():
        state = read_json(prog)
        diff = config_diff(state.get("fingerprint", {}), fp, ignore=())
        if diff:
            raise ValueError(f"{ckpt} holds a checkpoint of other settings ({describe_diff(diff, 'checkpoint', 'this run')}):"
                             " pass --no-resume to start over, or use a new --out")
        step_dir = ckpt / state["dir"]
        for i in mine:
            s, since[i], _ = load_checkpoint(step_dir / f"layer_{i}", saes[i], opts[i], torch.device("cpu"))
            if s != state["step"]:
                raise ValueError(f"{step_dir}/layer_{i} is at step {s}, not {state['step']}: the checkpoint is damaged;"
                                 " pass --no-resume to start over")
        step, history = int(state["step"]), state.get("history", [])
    if run is not None:
        run.write_config(dataclasses.asdict(cfg))
    every = cfg.checkpoint_every or max(1, cfg.steps // 5)
    t0, tokens_done = time.perf_counter(), 0
    for s in saes:
        s.train()
    if cfg.skip and step == 0:  # the skips first: a ridge fit over the stream's first skip_fit_tokens
        n_fit = math.ceil(cfg.skip_fit_tokens / cfg.batch_size)
        with progress(n_fit, "fit skips", unit="batch", quiet=cfg.quiet or rank > 0) as bar:
            def fit_batches():
                for j in range(n_fit):
                    yield _batch(train_ids, cps, cfg.seed, j)
                    bar.advance(1)
            for i, w in fit_skips(model, fit_batches(), L, bos, mine).items():
                skip_of(saes[i]).copy_(w)
    with progress(cfg.steps * cfg.batch_size, "train transcoders", unit="tok", quiet=cfg.quiet or rank > 0) as bar:
        bar.advance(step * cfg.batch_size)
        while step < cfg.steps:
            pairs = _pairs(model, _batch(train_ids, cps, cfg.seed, step), L, bos, mine)
            own: dict[int, tuple[float, float]] = {}
            for i, (x, y) in pairs.items():
                sae, opt = saes[i], opts[i]
                w = skip_of(sae)
                if step == 0:
                    sae.init_from_batch(x, y if w is None else (y - x @ w.T).detach())
                if w is None:
                    o = sae(x, y, dead_mask=since[i] >= dead_tokens)
                else:  # the features learn what the (fixed) skip leaves; FVU of the whole output against y
                    o = sae(x, y - x @ w.T, dead_mask=since[i] >= dead_tokens,
                            total_var=(y - y.mean(0)).pow(2).sum().clamp_min(1e-12))
                loss = o.fvu + tcfg.auxk_coef * o.auxk_loss
                if not bool(torch.isfinite(loss.detach())):
                    raise FloatingPointError(f"layer {i}: the loss is {float(loss):g} at step {step + 1}: training "
                                             "stopped before the update; lower --lr")
                loss.backward()
                sae.remove_parallel_grad()
                opt.step()
                opt.zero_grad(set_to_none=True)
                sae.normalize_decoder()
                with torch.no_grad():
                    since[i] += x.shape[0]
                    since[i][o.latents.fired()] = 0
                own[i] = (float(o.fvu.detach()), float(o.l0))
            figs = {i: v for part in gather_objects(own) for i, v in part.items()}  # every rank's layers, in order
            rec: dict[str, Any] = {"step": step + 1, "fvu": [figs[i][0] for i in range(L)],
                                   "l0": [figs[i][1] for i in range(L)]}
            step += 1
            tokens_done += pairs[mine[0]][0].shape[0]
            history.append(rec)
            bar.advance(cfg.batch_size)
            bar.note(fvu=f"{sum(rec['fvu']) / L:.3f}")
            if step % every == 0 and step < cfg.steps:
                _checkpoint(ckpt, step, saes, opts, since, fp, history, mine, rank)
    train_s = time.perf_counter() - t0
    for i in mine:
        if isinstance(opts[i], ScheduleFreeSignSGD):
            opts[i].average_()
    if world > 1:  # the other ranks hand their trained layers to rank 0, which evaluates and saves the set
        final = ckpt / "final"
        if rank > 0:
            for i in mine:
                save_checkpoint(final / f"layer_{i}", saes[i], opts[i], step, since[i], {"sae_cfg": saes[i].cfg.to_dict()})
        barrier()
        if rank > 0:
            barrier()  # rank 0 has read them
            return {"rank": rank}
        for i in range(L):
            if i not in mine:
                _, since[i], _ = load_checkpoint(final / f"layer_{i}", saes[i], opts[i], torch.device("cpu"))
        barrier()
    for s in saes:
        s.eval()
    metrics = evaluate_transcoders(model, saes, held_ids, bos, quiet=cfg.quiet or rank > 0)
    metrics.update(n_layers=L, model=name, steps=step, tokens=step * cfg.batch_size, train_seconds=train_s,
                   tokens_per_s_this_session=tokens_done / max(train_s, 1e-9), world_size=world,
                   dead_pct=[100.0 * float((c >= dead_tokens).float().mean()) for c in since],
                   history=history[-50:])
    save_transcoders(saes, out, model=name, extra={"metrics": "metrics.json"})
    if cfg.label_contexts:
        from .labels import label_transcoders

        lab = label_transcoders(model, tokenizer, saes, out, train_ids[:cfg.label_contexts], quiet=cfg.quiet)
        metrics["labelled_contexts"] = lab["contexts"]
    metrics["plots"] = [{"type": "line", "title": "held-out FVU per layer", "x_label": "layer", "y_label": "FVU",
                         "series": [{"name": "fvu", "x": list(range(L)), "y": metrics["fvu"]}]}]
    run.write_metrics(metrics, report=False)
    if ckpt.exists():
        shutil.rmtree(ckpt)
    return {"run_dir": str(out), **{k: v for k, v in metrics.items() if k not in ("history", "plots")}}


def _checkpoint(ckpt: Path, step: int, saes: list, opts: list, since: list, fp: dict, history: list,
                layers: list[int], rank: int) -> None:
    """Each rank writes its layers into `step_S/`; once all have, rank 0 names it in progress.json (written last)
    and removes the older ones."""
    from ..core.dist import barrier

    d = ckpt / f"step_{step:08d}"
    for i in layers:
        save_checkpoint(d / f"layer_{i}", saes[i], opts[i], step, since[i], {"sae_cfg": saes[i].cfg.to_dict()})
    barrier()
    if rank == 0:
        atomic_write_json(ckpt / "progress.json", {"step": step, "dir": d.name, "fingerprint": fp, "history": history})
        for old in ckpt.glob("step_*"):
            if old.name != d.name:
                shutil.rmtree(old, ignore_errors=True)
    barrier()


def _ridge_solve(xtx: torch.Tensor, xty: torch.Tensor, rel: float = 1e-2) -> torch.Tensor:
    """The ridge solution [d_out, d_in] from accumulated moments xᵀx [d_in, d_in] and xᵀy [d_in, d_out]."""
    lam = rel * float(xtx.diagonal().mean())
    return torch.linalg.solve(xtx + lam * torch.eye(xtx.shape[0], dtype=xtx.dtype), xty).T.float()


def not_sinks(y: torch.Tensor, ratio: float = SINK_RATIO) -> torch.Tensor:
    """Mask [tokens] of the rows of `y` whose norm is at most `ratio` × the median norm (attention sinks out)."""
    n = y.norm(dim=-1)
    return n <= ratio * n.median()


@torch.no_grad()
def fit_skips(model: Any, batches: Any, L: int, drop_first: bool, layers: list[int]) -> dict[int, torch.Tensor]:
    """Each layer's skip W [d, d]: the ridge fit of mlp_out on mlp_in over `batches` (token id tensors), attention
    sinks (`not_sinks`) left out; moments accumulated in float64."""
    mom: dict[int, tuple] = {}
    for ids in batches:
        for i, (x, y) in _pairs(model, ids, L, drop_first, layers).items():
            keep = not_sinks(y)
            x, y = x[keep].double(), y[keep].double()
            a, b = mom.get(i, (0, 0))
            mom[i] = (a + x.T @ x, b + x.T @ y)
    return {i: _ridge_solve(a, b) for i, (a, b) in mom.items()}


@torch.no_grad()
def evaluate_transcoders(model: Any, saes: list[SAE], ids: torch.Tensor, drop_first: bool,
                         batch: int = 8, quiet: bool = True) -> dict[str, Any]:
    """On held-out contexts: per-layer FVU and L0; with every MLP replaced by its transcoder at once, next-token
    agreement with the original model and KL(original ‖ replacement), per token; the same with each layer's
    transcoder alone (`*_one_layer`: where the set loses the model)."""
    L = len(saes)
    res_sq = [0.0] * L
    tot = [[0.0, torch.zeros(1), 0] for _ in range(L)]  # Σ|y|², Σy, n
    l0 = [0.0] * L
    agree, kl, n_tok = 0, 0.0, 0
    one = [[0, 0.0] for _ in range(L)]  # each layer's transcoder alone: agreements, KL sum

    def _evaluate_batch(chunk: torch.Tensor) -> None:
        nonlocal agree, kl, n_tok
        for i, (x, y) in _pairs(model, chunk, L, drop_first).items():
            w = skip_of(saes[i])
            o = saes[i](x, y if w is None else y - x @ w.T)
            res_sq[i] += float((transcode(saes[i], x) - y).pow(2).sum())
            tot[i][0] += float(y.pow(2).sum())
            tot[i][1] = tot[i][1] + y.sum(0)
            tot[i][2] += y.shape[0]
            l0[i] += float(o.l0) * y.shape[0]
        clean = model(input_ids=chunk, use_cache=False).logits.float()
        sl = slice(1, None) if drop_first else slice(None)
        c = clean[:, sl]
        lp = c.log_softmax(-1)

        def spliced(layers: list[int]) -> tuple[int, float]:
            seen: dict[int, torch.Tensor] = {}
            edits: dict = {}
            for i in layers:
                edits[f"mlp_in.{i}"] = (lambda i: lambda x: seen.__setitem__(i, x))(i)
                edits[f"mlp_out.{i}"] = (lambda i: lambda x: transcode(saes[i], seen.pop(i)).to(x.dtype))(i)
            with site_hooks(model, edits):
                r = model(input_ids=chunk, use_cache=False).logits.float()[:, sl]
            lq = r.log_softmax(-1)
            return int((c.argmax(-1) == r.argmax(-1)).sum()), float((lp.exp() * (lp - lq)).sum())

        a, k = spliced(list(range(L)))
        agree, kl = agree + a, kl + k
        for i in range(L):
            a, k = spliced([i])
            one[i][0] += a
            one[i][1] += k
        n_tok += c.shape[0] * c.shape[1]

    with progress(ids.shape[0], "evaluate transcoders", unit="context", quiet=quiet) as bar:
        for b in range(0, ids.shape[0], batch):
            _evaluate_batch(ids[b:b + batch])
            bar.advance(min(batch, ids.shape[0] - b))
    fvu = [res_sq[i] / max(tot[i][0] - float(tot[i][1].pow(2).sum()) / tot[i][2], 1e-12) for i in range(L)]
    return {"fvu": fvu, "mean_fvu": sum(fvu) / L, "l0": [l0[i] / tot[i][2] for i in range(L)],
            "agreement": agree / max(n_tok, 1), "kl": kl / max(n_tok, 1), "eval_tokens": n_tok,
            "agreement_one_layer": [a / max(n_tok, 1) for a, _ in one], "kl_one_layer": [k / max(n_tok, 1) for _, k in one]}
