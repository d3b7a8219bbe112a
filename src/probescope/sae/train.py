"""Train an SAE from an activation source: progress bar, checkpoints, exact resume, DDP under torchrun.

Resume: a checkpoint holds the model, the optimiser, the LR schedule position, the dead-latent counters,
the torch RNG and the data position (the global batch index; sources are deterministic from the seed),
so a run killed and resumed ends with the same weights as an uninterrupted one. A checkpoint also holds the
run's fingerprint (SAE config, every training setting that changes the result, the data's identity): a
rerun with other settings is refused, naming the differing fields (`--no-resume` starts over).

Faults: training stops at the first non-finite loss, naming the step, before the update (the last good
checkpoint is kept); nothing non-finite is saved. A checkpoint is written (fsynced) before the previous one
is deleted; temp files of a killed write are removed on the next run; once the final SAE is durably saved
the `checkpoint/` folder is removed.

DDP: every rank draws the same global batch and keeps its slice; the loss is scaled so the all-reduced
gradient equals the single-process gradient of the global batch (FVU uses the global variance).
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from ..report.runs import RunDir, check_out, config_diff, describe_diff, render_quietly
from ..core.io import atomic_write_json, clean_temp_files, load_tensors, read_checkpoint, read_json, save_tensors
from ..core.dist import all_reduce, dist_setup
from ..core import progress as _progress
from ..core.progress import progress
from ..core.threads import torch_threads
from .config import SAEConfig, TrainConfig
from .core import SAE
from .formats import WEIGHTS, save_sae
from .autotune import choose_path
from .sources import ActivationSource, source_fingerprint

CKPT_DIR = "checkpoint"


# ---------------------------------------------------------------------------------------------------------
# Optimisers
# ---------------------------------------------------------------------------------------------------------


class Signum(torch.optim.Optimizer):
    """Sign of a momentum buffer (sign-SGD with momentum), as in sparsify's default."""

    def __init__(self, params: Any, lr: float = 1e-3, momentum: float = 0.9):
        super().__init__(params, {"lr": lr, "momentum": momentum})

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                buf = self.state[p].get("momentum_buffer")
                if buf is None:
                    buf = self.state[p]["momentum_buffer"] = torch.zeros_like(p)
                buf.mul_(group["momentum"]).add_(p.grad, alpha=1 - group["momentum"])
                p.add_(buf.sign(), alpha=-group["lr"])


class ScheduleFreeSignSGD(torch.optim.Optimizer):
    """Sign-SGD with schedule-free averaging (Defazio et al. 2024), as sparsify trains by default.

    The parameters hold y = β·x + (1-β)·z: the gradient taken there moves z by -lr·sign(g), and x, the
    lr²-weighted running average of z, is what the trained model should be. Only z is stored; x is recovered
    from the parameters at each step, so an in-place edit of the parameters between steps (the unit-norm
    decoder) carries into the average. `average_()` puts x into the parameters at the end of training.
    """

    def __init__(self, params: Any, lr: float = 1e-3, momentum: float = 0.95):
        if not 0.0 < momentum < 1.0:
            raise ValueError(f"momentum={momentum}: use a value in (0, 1)")
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_sum": 0.0})

    def _x(self, p: torch.Tensor, z: torch.Tensor, beta: float) -> torch.Tensor:
        return (p - (1 - beta) * z) / beta

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:
        for group in self.param_groups:
            lr, beta = group["lr"], group["momentum"]
            group["weight_sum"] += lr * lr
            c = lr * lr / group["weight_sum"] if group["weight_sum"] > 0 else 1.0
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                if "z" not in st:
                    st["z"] = p.detach().clone()
                z = st["z"]
                x = self._x(p, z, beta)
                z.add_(p.grad.sign(), alpha=-lr)
                x.lerp_(z, c)
                p.copy_(x.mul_(beta).add_(z, alpha=1 - beta))

    @torch.no_grad()
    def average_(self) -> None:
        """Set every parameter to its average x (call once, after the last step)."""
        for group in self.param_groups:
            for p in group["params"]:
                if "z" in self.state[p]:
                    p.copy_(self._x(p, self.state[p]["z"], group["momentum"]))


def default_lr(cfg: TrainConfig, n_latents: int) -> float:
    """sparsify's rule: 2e-4/sqrt(M/2^14) for Adam, 5e-3/sqrt(M/2^14) for the sign optimisers."""
    if cfg.lr:
        return cfg.lr
    base = 2e-4 if cfg.optimizer == "adam" else 5e-3
    return base / math.sqrt(n_latents / 2**14)


def _make_optimizer(sae: SAE, cfg: TrainConfig) -> torch.optim.Optimizer:
    lr = default_lr(cfg, sae.n_latents)
    params = [p for p in sae.parameters() if p.requires_grad]
    if cfg.optimizer == "sf-signum":
        return ScheduleFreeSignSGD(params, lr=lr)
    if cfg.optimizer == "signum":
        return Signum(params, lr=lr)
    kw: dict[str, Any] = {}
    if sae.device.type in ("cpu", "cuda"):
        kw["fused"] = True
    return torch.optim.Adam(params, lr=lr, **kw)


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Warmup, constant, then linear decay to 0 over the last 20% of steps (if `lr_decay`)."""
    total = cfg.steps
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.lr_decay and cfg.optimizer != "sf-signum":  # schedule-free: its average replaces the decay
        start = int(total * 0.8)
        if step >= start:
            return max(0.0, (total - step) / max(1, total - start))
    return 1.0


# ---------------------------------------------------------------------------------------------------------
# Checkpoints (safetensors + JSON: nothing pickled)
# ---------------------------------------------------------------------------------------------------------


def save_checkpoint(path: Path, sae: SAE, opt: torch.optim.Optimizer, step: int, since: torch.Tensor, meta: dict) -> None:
    """Write checkpoint `step` atomically (tensors first, then the JSON that points at them)."""
    path.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v for k, v in sae.state_dict().items()}
    sd = opt.state_dict()
    for pid, st in sd["state"].items():
        for name, val in st.items():
            tensors[f"optim.{pid}.{name}"] = val if torch.is_tensor(val) else torch.tensor(val)
    tensors["since_fired"] = since
    tensors["rng.cpu"] = torch.get_rng_state()
    fname = f"ckpt-{step:08d}.safetensors"
    save_tensors(path / fname, tensors, finite=True)  # durable (fsynced) before the old one goes
    if os.environ.get("PROBESCOPE_SAE_KILL_IN_CHECKPOINT") == str(step):  # tests: SIGKILL between file and state.json
        import signal

        os.kill(os.getpid(), signal.SIGKILL)
    groups = [{k: v for k, v in g.items() if k != "params"} | {"params": g["params"]} for g in sd["param_groups"]]
    atomic_write_json(path / "state.json", {"step": step, "file": fname, "param_groups": groups, **meta})
    for old in path.glob("ckpt-*.safetensors"):
        if old.name != fname:
            old.unlink(missing_ok=True)


def _clean_checkpoint_dir(path: Path) -> None:
    """Remove what a killed checkpoint write left: temp files and checkpoint files state.json does not name."""
    clean_temp_files(path)
    state = path / "state.json"
    keep = None
    if state.exists():
        try:
            keep = read_json(state).get("file")
        except ValueError:
            return  # a corrupt state.json: leave everything for the user to look at (the resume names it)
    for f in path.glob("ckpt-*.safetensors"):
        if f.name != keep:
            f.unlink(missing_ok=True)


def run_fingerprint(source: ActivationSource, sae_cfg: SAEConfig, cfg: TrainConfig) -> dict[str, Any]:
    """Everything that changes the trained SAE: its config, the training settings and the data's identity."""
    import json

    fp = {"sae": sae_cfg.to_dict(), "train": cfg.fingerprint(), "data": source_fingerprint(source)}
    return json.loads(json.dumps(fp, default=str))


def load_checkpoint(path: Path, sae: SAE, opt: torch.optim.Optimizer, device: torch.device) -> tuple[int, torch.Tensor, dict]:
    """Restore model, optimiser, counters and RNG; returns (step, since_fired, state JSON)."""
    state = read_json(path / "state.json")
    t = load_tensors(path / state["file"])
    sae.load_state_dict({k[len("model.") :]: v for k, v in t.items() if k.startswith("model.")})
    opt_state: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in t.items():
        if k.startswith("optim."):
            _, pid, name = k.split(".", 2)
            opt_state.setdefault(int(pid), {})[name] = v
    opt.load_state_dict({"state": opt_state, "param_groups": state["param_groups"]})
    torch.set_rng_state(t["rng.cpu"])
    return int(state["step"]), t["since_fired"].to(device), state


# ---------------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------------


def sae_config_for(source: ActivationSource, cfg: SAEConfig | None = None, **overrides: Any) -> SAEConfig:
    """An SAEConfig whose widths and hook points come from the source (checked against `cfg` if given)."""
    base = dataclasses.asdict(cfg) if cfg is not None else {}
    base.update(overrides)
    for key, val in (("d_in", source.d_in), ("d_out", source.d_out)):
        if base.get(key) and base[key] != val:
            raise ValueError(f"{key}={base[key]} in the config, but the activations have width {val}")
        base[key] = val
    base.setdefault("hook_in", source.hook_in)
    base.setdefault("hook_out", source.hook_out)
    base["hook_in"] = base["hook_in"] or source.hook_in
    base["hook_out"] = base["hook_out"] or source.hook_out
    base["model"] = base.get("model") or source.model
    if base["hook_in"] == base["hook_out"] and base["d_out"] != base["d_in"]:
        raise ValueError("input and output widths differ but the hook points are the same")
    return SAEConfig(**base)


def train_sae(
    source: ActivationSource,
    sae_cfg: SAEConfig,
    cfg: TrainConfig | None = None,
    out: str | Path | None = None,
    *,
    resume: bool = True,
    quiet: bool | None = None,
) -> SAE:
    """Train an SAE on `source` for `cfg.tokens` tokens; with `out`, checkpoint there and save the result.

    A folder `out` with a checkpoint is resumed (same seed, same data order). Under torchrun this trains
    with DDP (gloo on CPU, NCCL on GPU); only rank 0 writes files.
    """
    cfg = cfg or TrainConfig()
    threads = cfg.threads or (1 if cfg.batch_size * sae_cfg.n_latents < (1 << 22) else 0)
    from contextlib import nullcontext

    from ..core.store import writer_lock

    if out is not None and int(os.environ.get("RANK", "0")) == 0:
        check_out(Path(out), "sae", overwrite=not resume, option="--no-resume")  # not into another kind of run
    lock = (writer_lock(Path(out), "the SAE run") if out is not None and int(os.environ.get("RANK", "0")) == 0
            and not (Path(out).exists() and not Path(out).is_dir()) else nullcontext())
    with lock, torch_threads(threads):  # small problems: thread hand-offs cost more than they save
        return _train(source, sae_cfg, cfg, out, resume, quiet)


def _train(source: ActivationSource, sae_cfg: SAEConfig, cfg: TrainConfig, out: str | Path | None,
           resume: bool, quiet: bool | None) -> SAE:
    rank, world, device = dist_setup(cfg.device)
    if cfg.batch_size % world:
        raise ValueError(f"batch_size={cfg.batch_size} does not split over {world} processes: use a multiple of {world}")
    torch.manual_seed(cfg.seed)
    sae = SAE(sae_cfg, device=device, seed=cfg.seed)
    choice = choose_path(sae.cfg.d_in, sae.n_latents, sae_cfg.k, cfg.batch_size // world, sae_cfg.arch, device,
                         cfg.sparse_kernels, cfg.fast_select, measure=None if world == 1 else False)
    sae.sparse_kernels, sae.fast_select = choice.sparse, choice.fast
    path, why = choice.path, choice.why
    if rank == 0 and not (quiet if quiet is not None else _progress.QUIET):
        print(f"probescope: kernel path {path} ({why})", file=sys.stderr, flush=True)
    opt = _make_optimizer(sae, cfg)
    out_path = Path(out) if out is not None else None
    ckpt = out_path / CKPT_DIR if out_path is not None else None
    since = torch.zeros(sae.n_latents, dtype=torch.long, device=device)
    step = 0
    history: list[dict[str, float]] = []
    fingerprint = run_fingerprint(source, sae_cfg, cfg)
    run_config = {"sae": sae_cfg.to_dict(), "train": dataclasses.asdict(cfg), "world_size": world}
    if out_path is not None and rank == 0 and out_path.exists():
        clean_temp_files(out_path)
        if ckpt.exists():
            _clean_checkpoint_dir(ckpt)
        if not resume and ckpt.exists():
            shutil.rmtree(ckpt)  # --no-resume: start over
    if ckpt is not None and resume and (ckpt / "state.json").exists():
        saved = read_checkpoint(ckpt, lambda: read_json(ckpt / "state.json"))
        if "fingerprint" in saved:
            diff = config_diff(saved["fingerprint"], fingerprint, ignore=())
        else:  # a checkpoint from before fingerprints: its SAE config is all it records
            diff = config_diff({"sae": saved.get("sae_cfg") or fingerprint["sae"]}, {"sae": fingerprint["sae"]}, ignore=())
        if diff:
            raise ValueError(
                f"{ckpt} holds a checkpoint of a run with other settings ({describe_diff(diff, 'checkpoint', 'this run')}): "
                "resuming would mix two runs; pass --no-resume to start over in this folder, or use a new --out")
        step, since, state = read_checkpoint(ckpt, lambda: load_checkpoint(ckpt, sae, opt, device))
        history = state.get("history", [])
    elif out_path is not None and resume and (out_path / WEIGHTS).exists() and (out_path / "config.json").exists():
        diff = config_diff(read_json(out_path / "config.json"), run_config)
        if diff:
            raise ValueError(
                f"{out_path} holds a finished SAE trained with other settings ({describe_diff(diff, 'there', 'this run')}): "
                "use a new --out, or pass --no-resume to replace it")
    if rank == 0 and out_path is not None:
        RunDir(out_path, kind="sae", overwrite=True)  # check_out ran in train_sae, before the lock
        atomic_write_json(out_path / "config.json", run_config)
    lo, hi = rank * cfg.batch_size // world, (rank + 1) * cfg.batch_size // world
    batches = source.batches(cfg.batch_size, seed=cfg.seed, skip=step)
    if step == 0:
        x0, y0 = next(source.batches(cfg.batch_size, seed=cfg.seed, skip=0))
        sae.init_from_batch(x0, y0, b_dec=cfg.b_dec_init)
    model: torch.nn.Module = sae
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(sae, device_ids=[device.index] if device.type == "cuda" else None)
    every = cfg.checkpoint_every or max(1, cfg.steps // 10)
    base_lrs = [default_lr(cfg, sae.n_latents) for _ in opt.param_groups]
    t_start, tokens_done = time.perf_counter(), 0
    meta = {"sae_cfg": sae_cfg.to_dict(), "fingerprint": fingerprint}
    last_ckpt = step if step else None
    crash_at = int(os.environ.get("PROBESCOPE_SAE_KILL_AT_STEP", "-1"))  # tests: SIGKILL ourselves mid-run
    sae.train()
    with progress(cfg.steps * cfg.batch_size, "train sae", unit="tok", quiet=quiet if rank == 0 else True) as bar:
        bar.advance(step * cfg.batch_size)
        while step < cfg.steps:
            x, y = next(batches)
            x = x[lo:hi].to(device, non_blocking=True)
            y = None if y is None else y[lo:hi].to(device, non_blocking=True)
            total_var = None
            if world > 1:
                tgt = x if y is None else y
                stats = torch.cat([tgt.sum(0), tgt.pow(2).sum().reshape(1), torch.tensor([tgt.shape[0]], device=device, dtype=tgt.dtype)])
                stats = all_reduce(stats.double())
                n = stats[-1]
                total_var = (stats[-2] - stats[:-2].pow(2).sum() / n).float()
            for g, base in zip(opt.param_groups, base_lrs):
                g["lr"] = base * lr_factor(step, cfg)
            dead = since >= cfg.dead_tokens
            out_t = model(x, y, dead_mask=dead, total_var=total_var)
            loss = out_t.fvu + out_t.sparsity_loss + cfg.auxk_coef * out_t.auxk_loss
            finite = torch.isfinite(loss.detach()).to(torch.float32).reshape(1)
            if world > 1:  # every rank stops at the same step (none waits at an all-reduce for a stopped peer)
                all_reduce(finite, dist.ReduceOp.MIN)
            if not bool(finite):  # stop before the update: nothing non-finite is learned or saved
                kept = (f"the last good checkpoint (step {last_ckpt}) is kept in {ckpt}" if ckpt is not None and last_ckpt
                        else "no checkpoint had been written yet")
                raise FloatingPointError(
                    f"the loss is {float(loss.detach()):g} at step {step + 1} (fvu {float(out_t.fvu.detach()):g}): training stopped "
                    f"there; {kept}. Lower --lr, or check the data (`probescope store verify` for a store)")
            (loss * world).backward()
            sae.remove_parallel_grad()
            opt.step()
            opt.zero_grad(set_to_none=True)
            sae.normalize_decoder()
            with torch.no_grad():
                fired = out_t.latents.fired().to(torch.int32)
                all_reduce(fired, dist.ReduceOp.MAX if world > 1 else None)
                since += cfg.batch_size
                since[fired.bool()] = 0
            step += 1
            tokens_done += cfg.batch_size
            bar.advance(cfg.batch_size)
            if step % cfg.log_every == 0 or step == cfg.steps:
                fvu = float(all_reduce(out_t.fvu.detach().clone()))
                rec = {"step": step, "tokens": step * cfg.batch_size, "fvu": fvu, "l0": float(out_t.l0),
                       "dead_pct": 100.0 * float(dead.float().mean()),
                       "tokens_per_s": tokens_done / max(1e-9, time.perf_counter() - t_start)}
                history.append(rec)
                bar.note(fvu=rec["fvu"], l0=rec["l0"], dead=f"{rec['dead_pct']:.1f}%")
            if ckpt is not None and (step % every == 0) and step < cfg.steps:
                if rank == 0:
                    save_checkpoint(ckpt, sae, opt, step, since, meta | {"history": history})
                last_ckpt = step
                if world > 1:
                    dist.barrier()
            if step == crash_at:
                import signal

                os.kill(os.getpid(), signal.SIGKILL)
    if isinstance(opt, ScheduleFreeSignSGD):
        opt.average_()  # the trained SAE is the average x (a resumed run restores y and z from the checkpoint)
    sae.eval()
    sae.tokens_since_fired = since  # type: ignore[attr-defined]
    if rank == 0 and out_path is not None:
        save_sae(sae, out_path)
        elapsed = time.perf_counter() - t_start
        atomic_write_json(out_path / "metrics.json", {
            "steps": step, "tokens": step * cfg.batch_size, "final": history[-1] if history else {},
            "kernel_path": {"path": path, "why": why},
            "tokens_per_s_this_session": tokens_done / max(1e-9, elapsed),
            "dead_pct_final": 100.0 * float((since >= cfg.dead_tokens).float().mean()),
            "history": history, "world_size": world,
            "plots": [{"type": "line", "title": f"SAE training: {key}", "x_label": "step", "y_label": key,
                       "series": [{"name": key, "x": [h["step"] for h in history], "y": [h[key] for h in history]}]}
                      for key in ("fvu", "l0", "dead_pct") if history and key in history[0] and "step" in history[0]],
        })
        render_quietly(out_path)
        if ckpt is not None and ckpt.exists():  # the final SAE is durable (fsynced): its checkpoint is not needed
            try:
                shutil.rmtree(ckpt)
            except OSError as e:
                print(f"probescope: could not remove {ckpt} ({e}); the SAE in {out_path} is complete, the folder "
                      "can be deleted", file=sys.stderr)
    if world > 1:
        dist.barrier()
    return sae
