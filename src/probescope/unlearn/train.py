"""The unlearning loop: one method from the registry, the MLPs of a few layers ≤ ℓ trained, checkpoints and resume.

`unlearn(model, tok, forget_texts, retain_texts, UnlearnConfig(...), out_dir)` trains in place and writes
`out_dir/weights.safetensors` (only the tensors it changed, named as in the model) and `out_dir/unlearn.json`
(config, site, model). A checkpoint (weights, Adam state, step) is written every `checkpoint_every` steps; a run
killed mid-way resumes from it. A NaN/inf loss stops the run before the step is applied, keeping the last good
checkpoint, and raises a ValueError naming the step.
"""

from __future__ import annotations

import dataclasses
import math
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..core.io import atomic_write_json, load_tensors, read_checkpoint, read_json, save_tensors
from ..core.checks import check_values
from ..core.options import Checked, option as _opt
from ..core.progress import progress
from ..core.sites import check_layers, n_layers, site_module
from .methods import METHODS, Batch, Context, get_method
from .subjects import check_sets
from ..core.tokens import pad_id as pad_token




def int_list(what: str) -> Callable[[str], tuple[int, ...] | None]:
    """A CLI parser for `what`: '5,6,7' → (5, 6, 7), '' → None; anything else is a usage error naming `what`."""
    def parse(text: str) -> tuple[int, ...] | None:
        try:
            return tuple(int(x) for x in str(text).split(",") if x.strip()) or None
        except ValueError:
            import typer

            raise typer.BadParameter(f"{what} must be comma-separated integers, e.g. 5,6,7; got {text!r}") from None

    return parse


@dataclass
class UnlearnConfig(Checked):
    """Unlearning options (each field doubles as a CLI option; `UnlearnRunConfig` holds the run's seed, threads and
    device, and copies its seed here from the CLI)."""

    method: str = _opt("rmu", "rmu | rmu-adv | ga | npo (see probescope.unlearn.methods)", choices=METHODS)
    layer: int | None = _opt(None, "ℓ: RMU's loss on resid_post.ℓ (default: a quarter of the depth)")
    update_layers: tuple[int, ...] | None = _opt(None, "blocks whose MLPs are trained, e.g. 5,6,7 (default ℓ-2..ℓ, "
                                                       "as published)", parse=int_list("--update-layers"))
    steering_scale: float = _opt(2.0, "c = this × the median token norm of resid_post.ℓ on the forget texts "
                                      "(position 0 masked)")
    alpha: float = _opt(100.0, "RMU retain weight (MSE to the frozen model's activations)", min=0)
    alpha_lm: float = _opt(1.0, "ga/npo retain LM-loss weight")
    beta: float = _opt(0.1, "NPO inverse temperature")
    adv_weight: float = _opt(1.0, "rmu-adv: weight of the in-the-loop ablation term")
    lr: float | None = _opt(None, "default: the method's (rmu 1e-3, ga/npo 1e-4)")
    mlp_lora_r: int = _opt(0, min=0, help="0: train the MLP weights of the update layers (as published); r > 0: a "
                                          "rank-r LoRA on each of their MLP matrices instead, merged into the weights "
                                          "at the end")
    steps: int = _opt(150, "training steps")
    batch_size: int = _opt(4, "texts per batch")
    max_len: int = _opt(64, "tokens per text at most", min=1)
    seed: int = _opt(0, "seed of batches and init (the CLI's --seed sets it)", cli=False)
    checkpoint_every: int = _opt(25, "steps between checkpoints (a killed run resumes from the last)", min=1)

    def validate(self, model: nn.Module | None = None) -> None:
        """The value rules again (a field set after construction) and, given the model, the layers against it."""
        check_values(self)
        if model is not None:
            n = n_layers(model)
            layer = self.resolved_layer(model)
            if self.method == "rmu-adv" and layer + 1 >= n:
                raise ValueError(f"rmu-adv needs a block after ℓ={layer}: pick a layer below {n - 1}")
            for u in self.resolved_update_layers(model):
                if u > layer:
                    raise ValueError(f"update layer {u} is above ℓ={layer}: RMU's loss at ℓ cannot train it; "
                                     f"pick layers ≤ {layer}")

    def resolved_layer(self, model: nn.Module) -> int:
        n = n_layers(model)
        if self.layer is None:
            return max(1, n // 4)
        try:
            return check_layers(model, [self.layer])[0]
        except ValueError as e:
            raise ValueError(f"layer: {e}") from None

    def resolved_update_layers(self, model: nn.Module) -> list[int]:
        layer = self.resolved_layer(model)
        if self.update_layers:
            try:
                return check_layers(model, list(self.update_layers))
            except ValueError as e:
                raise ValueError(f"update_layers: {e}") from None
        return [x for x in (layer - 2, layer - 1, layer) if x >= 0]

    @property
    def resolved_lr(self) -> float:
        return self.lr if self.lr is not None else METHODS[self.method].default_lr

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["update_layers"] = list(self.update_layers) if self.update_layers else None
        return d


def make_batches(tok: Any, texts: Sequence[str], batch_size: int, max_len: int, seed: int) -> list[Batch]:
    """Fixed, seeded batches of right-padded texts (each text once)."""
    idx = list(range(len(texts)))
    random.Random(seed).shuffle(idx)
    pad = pad_token(tok)
    out = []
    for s in range(0, len(idx), batch_size):
        enc = [tok(texts[i])["input_ids"][:max_len] for i in idx[s:s + batch_size]]
        T = max(len(e) for e in enc)
        if T < 2:
            raise ValueError(f"text {texts[idx[s]]!r} is too short to train on (one token)")
        ids = torch.full((len(enc), T), int(pad), dtype=torch.long)
        att = torch.zeros((len(enc), T), dtype=torch.long)
        for r, e in enumerate(enc):
            ids[r, :len(e)] = torch.tensor(e)
            att[r, :len(e)] = 1
        out.append(Batch(ids, att))
    return out


def trainable(model: nn.Module, layers: Sequence[int]) -> dict[str, nn.Parameter]:
    """The MLP parameters of `layers`, by their names in the model."""
    names = {id(p): n for n, p in model.named_parameters()}
    out: dict[str, nn.Parameter] = {}
    for layer in layers:
        for p in site_module(model, f"mlp_out.{layer}").parameters():
            out[names[id(p)]] = p
    return out


class _LowRank(nn.Module):
    """W ↦ W + (α/r)·B·A: a LoRA as a weight parametrization, so the module (and every hook on it) stays as it is."""

    def __init__(self, d_out: int, d_in: int, r: int, gen: torch.Generator, like: torch.Tensor):
        super().__init__()
        self.A = nn.Parameter(torch.randn(r, d_in, generator=gen).to(like) / math.sqrt(d_in))
        self.B = nn.Parameter(torch.zeros(d_out, r, dtype=like.dtype, device=like.device))
        self.scale = 2.0  # α = 2r, as in the project's LoRA runner

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w + self.scale * (self.B @ self.A)


def add_mlp_lora(model: nn.Module, layers: Sequence[int], r: int, seed: int) -> dict[str, nn.Parameter]:
    """Put a rank-r LoRA on every matrix of the MLPs of `layers` (seeded); returns the LoRA parameters by name."""
    from torch.nn.utils import parametrize

    gen = torch.Generator().manual_seed(seed)
    for layer in layers:
        for mod in site_module(model, f"mlp_out.{layer}").modules():
            if isinstance(mod, nn.Linear) and not parametrize.is_parametrized(mod, "weight"):
                w = mod.weight
                parametrize.register_parametrization(mod, "weight", _LowRank(w.shape[0], w.shape[1], r, gen, w))
    return {n: p for n, p in model.named_parameters() if n.endswith((".A", ".B")) and "parametrizations" in n}


def remove_mlp_lora(model: nn.Module, merge: bool) -> None:
    """Take the LoRAs off again: merged into the weights (`merge`) or dropped (the weights as they were)."""
    from torch.nn.utils import parametrize

    for mod in list(model.modules()):
        if isinstance(mod, nn.Linear) and parametrize.is_parametrized(mod, "weight"):
            with torch.no_grad():
                parametrize.remove_parametrizations(mod, "weight", leave_parametrized=merge)
            mod.weight.requires_grad_(False)


def _save_ckpt(path: Path, params: dict[str, nn.Parameter], opt: torch.optim.Optimizer, step: int,
               extra: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_tensors(tmp / "weights.safetensors", {n: p.detach().cpu() for n, p in params.items()})
    st = opt.state_dict()["state"]
    keys = list(params)
    opt_t = {}
    for i, s in st.items():
        for k, v in s.items():
            if torch.is_tensor(v):
                opt_t[f"{keys[i]}::{k}"] = v.detach().cpu().reshape(v.shape) if v.dim() else v.detach().cpu().reshape(1)
    save_tensors(tmp / "optim.safetensors", opt_t)
    atomic_write_json(tmp / "state.json", {"step": step, **extra})
    if path.exists():
        shutil.rmtree(path)
    tmp.rename(path)


def _load_ckpt(path: Path, params: dict[str, nn.Parameter], opt: torch.optim.Optimizer) -> dict[str, Any]:
    w = load_tensors(path / "weights.safetensors")
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(w[n].to(p.device))
    o = load_tensors(path / "optim.safetensors")
    keys = list(params)
    sd = opt.state_dict()
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, v in o.items():
        pn, k = name.split("::")
        i = keys.index(pn)
        state.setdefault(i, {})[k] = v.reshape(()) if k == "step" else v.to(params[pn].device)
    sd["state"] = state
    opt.load_state_dict(sd)
    return read_json(path / "state.json")


def unlearn(model: nn.Module, tok: Any, forget_texts: Sequence[str], retain_texts: Sequence[str],
            config: UnlearnConfig, out_dir: str | Path, resume: bool = True, quiet: bool = False) -> dict[str, Any]:
    """Unlearn `forget_texts` while keeping `retain_texts` (in place, with the caller's torch threads); returns the
    training record."""
    check_sets(forget_texts, retain_texts)
    config.validate(model)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    layer = config.resolved_layer(model)
    ups = config.resolved_update_layers(model)
    torch.manual_seed(config.seed)
    forget = make_batches(tok, forget_texts, config.batch_size, config.max_len, config.seed)
    retain = make_batches(tok, retain_texts, config.batch_size, config.max_len, config.seed + 1)
    for p in model.parameters():
        p.requires_grad_(False)
    lora = config.mlp_lora_r > 0
    params = add_mlp_lora(model, ups, config.mlp_lora_r, config.seed) if lora else trainable(model, ups)
    for p in params.values():
        p.requires_grad_(True)
    try:
        history, info = _train(model, params, forget, retain, config, layer, out, resume, quiet)
    except BaseException:
        if lora:
            remove_mlp_lora(model, merge=False)  # the model as it was; the last checkpoint stays on disk
        raise
    for p in params.values():
        p.requires_grad_(False)
    if lora:
        remove_mlp_lora(model, merge=True)
    params = trainable(model, ups)
    return _finish(model, config, layer, ups, params, info, history, out)


def _train(model: nn.Module, params: dict[str, nn.Parameter], forget: list[Batch], retain: list[Batch],
           config: UnlearnConfig, layer: int, out: Path, resume: bool, quiet: bool) -> tuple[list[dict], dict]:
    """The training loop (resumable from `out/checkpoint`); returns (history, the method's prepare() info)."""
    method = get_method(config.method)
    ctx = Context(model, forget, retain, config, layer)
    model.eval()  # no dropout: the frozen targets and the trained forward see the same network
    info = method.prepare(ctx)
    opt = torch.optim.AdamW(list(params.values()), lr=config.resolved_lr, weight_decay=0.0)
    ckpt = out / "checkpoint"
    start, history = 0, []
    if resume and (ckpt / "state.json").exists():
        st = read_checkpoint(ckpt, lambda: _load_ckpt(ckpt, params, opt))
        start, history = read_checkpoint(ckpt, lambda: (int(st["step"]), list(st.get("history", []))))
        if config.method == "rmu-adv" and st.get("r") is not None:
            ctx.state["r"] = torch.tensor(st["r"])
    with progress(config.steps, f"unlearn ({config.method})", unit="step", quiet=quiet) as bar:
        bar.advance(start)
        for step in range(start, config.steps):
            loss, stats = method.loss(ctx, step, step % len(forget), step % len(retain))
            if not torch.isfinite(loss):
                done = int(read_json(ckpt / "state.json")["step"]) if (ckpt / "state.json").exists() else 0
                raise ValueError(
                    f"the {config.method} loss is {float(loss.detach())} at step {step}: stopped before applying it; the last "
                    f"good checkpoint (step {done}) is kept in {ckpt}. Lower the lr (now {config.resolved_lr:g}) "
                    "or the steering scale and resume")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(list(params.values()), 1.0e3)
            opt.step()
            history.append({"step": step + 1, "loss": float(loss.detach()), **stats})
            bar.advance(1)
            bar.note(loss=float(loss.detach()))
            if (step + 1) % config.checkpoint_every == 0 or step + 1 == config.steps:
                r = ctx.state.get("r")
                _save_ckpt(ckpt, params, opt, step + 1,
                           {"history": history, "r": r.tolist() if r is not None else None})
    return history, info


def _finish(model: nn.Module, config: UnlearnConfig, layer: int, ups: list[int], params: dict[str, nn.Parameter],
            info: dict, history: list[dict], out: Path) -> dict[str, Any]:
    """Save the changed MLP tensors and the run record."""
    from ..core.models.registry import model_id

    site = f"resid_post.{layer}"
    record = {"method": config.method, "site": site, "layer": layer, "update_layers": ups,
              "updated": [f"mlp_out.{u}" for u in ups], "model": model_id(model), "config": config.to_dict(),
              "trained": (f"rank-{config.mlp_lora_r} LoRA on the MLP matrices (merged)" if config.mlp_lora_r
                          else "MLP weights"),
              "lr": config.resolved_lr, "steps": config.steps, **info, "history": history,
              "final_loss": history[-1]["loss"] if history else None}
    save_tensors(out / "weights.safetensors", {n: p.detach().cpu().contiguous() for n, p in params.items()},
                 metadata={"site": site, "method": config.method})
    atomic_write_json(out / "unlearn.json", record)
    return record


def apply_weights(model: nn.Module, run_dir: str | Path) -> nn.Module:
    """Load an unlearning run's changed tensors (`weights.safetensors`) into `model` (in place)."""
    path = Path(run_dir) / "weights.safetensors"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: is {run_dir} a finished unlearning run?")
    w = load_tensors(path)
    named = dict(model.named_parameters())
    missing = [n for n in w if n not in named]
    if missing:
        raise ValueError(f"{path} holds tensors this model lacks (e.g. {missing[0]}): was it made for another model?")
    with torch.no_grad():
        for n, t in w.items():
            named[n].copy_(t.to(named[n].device, named[n].dtype))
    return model
