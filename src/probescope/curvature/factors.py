"""K-FAC factors of MLP weight matrices: A = E[a aᵀ] of a layer's inputs, G = E[g gᵀ] of the loss gradient at its
outputs, accumulated as running sums over batches (resumable), saved as safetensors + JSON.

The curvature (Fisher) of a weight W [d_out, d_in] is approximated as A ⊗ G: in the eigenbases of A and G,
component (i, j) of Wᵉ = U_Gᵀ W U_A has curvature ≈ λ_G,i · λ_A,j.

* `fisher="empirical"`: g is the gradient of the next-token loss at the true labels (the text's tokens).
* `fisher="true"`: labels are sampled from the model's own distribution (seeded), so E[g gᵀ] estimates the
  Fisher (= the GGN of the softmax cross-entropy) rather than the empirical Fisher.

Tokens: every position that has a next token in its window counts once; g is the gradient of the summed loss
of the window (so it includes what later positions' losses owe to this position's output).

Hooks: through the core's one hook layer (`core.sites`): the site `module_in:PATH` of each target linear module
reads its input, and `module_out:PATH` taps the gradient at its output (`tap_grad`); `site_hooks` removes them on
every exit. Libraries (kronfluence, curvlinops, nngeometry) were not used: each wants its own model wrapper or task
object and none keeps running sums resumable across processes in our safetensors layout; the whole collector is the
two hooks below.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from torch import nn

from ..core.io import atomic_write_json, load_tensors, read_artifact, save_tensors
from ..core.progress import progress
from ..core.sites import site_hooks, tap_grad
from .config import FISHERS
from .targets import Target, resolve_targets

FORMAT = 1


def _model_id(model: nn.Module) -> str:
    from ..core.models.registry import model_id

    return model_id(model)


@dataclass
class FactorConfig:
    """How factors are collected (each field doubles as a CLI option)."""

    fisher: str = "empirical"  # empirical (true labels) | true (labels sampled from the model)
    context_len: int = 128  # tokens per window
    batch_size: int = 8  # windows per forward/backward
    max_tokens: int | None = None  # stop after this many counted tokens (None: all the data)
    min_token_ratio: float = 4.0  # refuse data with fewer than this × the widest factor's width in tokens
    seed: int = 0  # for the sampled labels of the true Fisher
    save_every: int = 20  # batches between checkpoints of the running sums (with out_dir)

    def validate(self) -> None:
        if self.fisher not in FISHERS:
            raise ValueError(f"fisher {self.fisher!r} is not one of {', '.join(FISHERS)}")
        if self.context_len < 2:
            raise ValueError(f"context_len {self.context_len} must be ≥ 2 (a token and its next)")
        if self.batch_size < 1:
            raise ValueError(f"batch_size {self.batch_size} must be ≥ 1")
        if self.min_token_ratio < 0:
            raise ValueError(f"min_token_ratio {self.min_token_ratio} must be ≥ 0")


@dataclass
class Eigen:
    """Eigenbases of one matrix's factors (ascending → stored descending), float64."""

    lam_a: torch.Tensor  # [d_in] descending, clamped ≥ 0
    u_a: torch.Tensor  # [d_in, d_in] columns = eigenvectors
    lam_g: torch.Tensor  # [d_out]
    u_g: torch.Tensor  # [d_out, d_out]


@dataclass
class KFACFactors:
    """Running sums of a aᵀ and g gᵀ per matrix, the token count, and what they were collected on."""

    targets: list[dict]  # Target.record() per matrix: name, path, site, shape [d_out, d_in]
    a_sum: dict[str, torch.Tensor]
    g_sum: dict[str, torch.Tensor]
    n_tokens: int = 0
    n_batches: int = 0
    model: str = ""
    fisher: str = "empirical"
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return [t["name"] for t in self.targets]

    def record(self, name: str) -> dict:
        for t in self.targets:
            if t["name"] == name:
                return t
        raise KeyError(f"no factors for {name!r}: these factors cover {', '.join(self.names)}")

    def A(self, name: str) -> torch.Tensor:
        self._need_tokens()
        return self.a_sum[name] / self.n_tokens

    def G(self, name: str) -> torch.Tensor:
        self._need_tokens()
        return self.g_sum[name] / self.n_tokens

    def _need_tokens(self) -> None:
        if self.n_tokens <= 0:
            raise ValueError("these factors hold no tokens yet: collect some data first")

    def check_finite(self) -> None:
        for name in self.names:
            for kind, t in (("A", self.a_sum[name]), ("G", self.g_sum[name])):
                if not bool(torch.isfinite(t).all()):
                    raise FloatingPointError(f"factor {kind} of {name} holds non-finite values (NaN/inf): the "
                                             "collection diverged (fp16 overflow?); collect again in float32")

    def eigen(self, name: str) -> Eigen:
        """Eigendecompositions of A and G (float64, descending, negative round-off clamped to 0)."""
        self.check_finite()
        la, ua = torch.linalg.eigh(self.A(name).double())
        lg, ug = torch.linalg.eigh(self.G(name).double())
        return Eigen(la.flip(0).clamp_min(0), ua.flip(1), lg.flip(0).clamp_min(0), ug.flip(1))

    def check_model(self, model: nn.Module, strict_model: bool = True) -> list[Target]:
        """The model's targets for these factors; refuse another width (naming both), or another model id."""
        tid = _model_id(model)
        targets = []
        for rec in self.targets:
            try:
                t = resolve_targets(model, [rec["path"] if not rec["site"] else rec["name"]])[0]
            except (ValueError, TypeError) as e:
                raise ValueError(f"factors of {self.model!r} name {rec['name']} ({rec['path']}), which model {tid!r} "
                                 f"does not have: {e}") from None
            if list(t.shape) != list(rec["shape"]):
                raise ValueError(f"factors of {self.model!r} were collected for {rec['name']} of shape "
                                 f"{tuple(rec['shape'])} [d_out, d_in], but model {tid!r} has {tuple(t.shape)}: "
                                 "these factors belong to another model or width; collect them on this model")
            targets.append(t)
        if strict_model and self.model and tid != self.model:
            raise ValueError(f"factors were collected on model {self.model!r}, not on {tid!r}: collect factors on "
                             "this model, or pass strict_model=False (--allow-other-model) if it is the same network")
        return targets

    # ------------------------------------------------------------------ saving
    def save(self, folder: str | Path) -> Path:
        """`factors.safetensors` (running sums, float64) + `factors.json`, both atomic (JSON written last)."""
        folder = Path(folder)
        tensors = {}
        for name in self.names:
            tensors[f"{name}/A_sum"] = self.a_sum[name]
            tensors[f"{name}/G_sum"] = self.g_sum[name]
        save_tensors(folder / "factors.safetensors", tensors)
        atomic_write_json(folder / "factors.json", {
            "format": FORMAT, "kind": "kfac-factors", "model": self.model, "fisher": self.fisher,
            "n_tokens": self.n_tokens, "n_batches": self.n_batches, "targets": self.targets,
            "sites": [t["site"] for t in self.targets], "meta": self.meta,
        })
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "KFACFactors":
        folder = Path(folder)
        cfg = read_artifact(folder, "factors.json", "kfac-factors", "a K-FAC factors file",
                            "`probescope curvature fit` (or KFACFactors.save)")
        ts = load_tensors(folder / "factors.safetensors")
        a, g = {}, {}
        for t in cfg["targets"]:
            n = t["name"]
            if f"{n}/A_sum" not in ts or f"{n}/G_sum" not in ts:
                raise ValueError(f"{folder}/factors.safetensors lacks the factors of {n}: the folder is incomplete")
            a[n], g[n] = ts[f"{n}/A_sum"], ts[f"{n}/G_sum"]
        f = cls(cfg["targets"], a, g, int(cfg["n_tokens"]), int(cfg["n_batches"]), cfg.get("model", ""),
                cfg.get("fisher", "empirical"), cfg.get("meta", {}))
        f.check_finite()
        return f

    def summary(self) -> dict:
        """Per matrix: shapes, traces, effective ranks and the share of mass in the top 1% of components."""
        out = {}
        for name in self.names:
            e = self.eigen(name)
            prod = torch.outer(e.lam_g, e.lam_a).flatten().sort(descending=True).values
            total = float(prod.sum())
            cum = prod.cumsum(0) / max(total, 1e-300)
            k99 = int((cum < 0.99).sum()) + 1
            out[name] = {"shape": self.record(name)["shape"], "site": self.record(name)["site"],
                         "trace_A": float(e.lam_a.sum()), "trace_G": float(e.lam_g.sum()),
                         "erank_A": _erank(e.lam_a), "erank_G": _erank(e.lam_g),
                         "components_for_99pct": k99, "share_components_for_99pct": k99 / prod.numel()}
        return out


def _erank(lam: torch.Tensor) -> float:
    """exp(entropy) of the normalised spectrum."""
    p = lam / lam.sum().clamp_min(1e-300)
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


# ---------------------------------------------------------------------------------------------------------- data
def token_windows(tokenizer: Any, texts: Sequence[str], context_len: int) -> torch.Tensor:
    """Concatenate texts (EOS between) and cut into [N, context_len] windows (the tail that does not fill one is
    dropped). Deterministic: the same texts give the same windows."""
    eos = getattr(tokenizer, "eos_token_id", None)
    ids: list[int] = []
    for t in texts:
        ids += tokenizer(t, add_special_tokens=False)["input_ids"]
        if eos is not None:
            ids.append(int(eos))
    n = len(ids) // context_len
    if n == 0:
        return torch.zeros(0, context_len, dtype=torch.long)
    return torch.tensor(ids[: n * context_len], dtype=torch.long).view(n, context_len)


def texts_hash(texts: Sequence[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------------------- collect
class _Collector:
    """Sites on the target modules: a aᵀ from each one's input on the forward, g gᵀ from a gradient tap on its
    output."""

    def __init__(self, model: nn.Module, targets: list[Target]):
        self.model = model
        self.targets = targets
        self.sel: torch.Tensor | None = None  # [B, T] bool: positions counted
        self.a = {t.name: torch.zeros(t.shape[1], t.shape[1], dtype=torch.float64) for t in targets}
        self.g = {t.name: torch.zeros(t.shape[0], t.shape[0], dtype=torch.float64) for t in targets}
        self._hooks = None

    def __enter__(self) -> "_Collector":
        edits = {}
        for t in self.targets:
            edits[f"module_in:{t.path}"] = self._read_input(t)
            edits[f"module_out:{t.path}"] = self._tap_output(t)
        self._hooks = site_hooks(self.model, edits)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        hooks, self._hooks = self._hooks, None
        if hooks is not None:
            hooks.__exit__(*exc)

    def _read_input(self, t: Target):
        def fn(x: torch.Tensor) -> None:
            a = x.detach()[self.sel].float()
            self.a[t.name] += (a.T @ a).double().cpu()

        return fn

    def _tap_output(self, t: Target):
        def fn(output: torch.Tensor) -> None:
            sel = self.sel

            def grad_hook(g: torch.Tensor) -> None:
                gs = g.detach()[sel].float()
                self.g[t.name] += (gs.T @ gs).double().cpu()

            tap_grad(output, grad_hook)

        return fn


def _logits(out: Any) -> torch.Tensor:
    return out.logits if hasattr(out, "logits") else (out[0] if isinstance(out, tuple) else out)


def collect_factors(
    model: nn.Module,
    tokenizer: Any,
    texts: Sequence[str] | None = None,
    matrices: "str | Sequence[str]" = (),
    config: FactorConfig | None = None,
    *,
    windows: torch.Tensor | None = None,
    resume_from: "KFACFactors | None" = None,
    out_dir: str | Path | None = None,
    quiet: bool | None = None,
) -> KFACFactors:
    """K-FAC factors for `matrices` (see `targets`) over `texts` (or pre-cut token `windows` [N, T]).

    Resumable: with `out_dir`, the running sums are saved every `save_every` batches, and a later call with the same
    data and config continues after the last saved batch (`resume_from` does the same from a loaded object). The model
    is left as it was (eval mode, requires_grad flags and weights untouched; nothing accumulates in `.grad`)."""
    cfg = config or FactorConfig()
    cfg.validate()
    targets = resolve_targets(model, matrices)
    if windows is None:
        if texts is None:
            raise ValueError("no data: pass texts (a list of strings) or windows (token ids [N, T])")
        if tokenizer is None:
            raise ValueError("texts need a tokenizer: pass the model's tokenizer, or pre-cut token windows")
        windows = token_windows(tokenizer, texts, cfg.context_len)
        data_id = texts_hash(texts)
    else:
        if windows.dim() != 2 or windows.shape[1] < 2:
            raise ValueError(f"windows must be token ids [N, T] with T ≥ 2, got shape {tuple(windows.shape)}")
        data_id = hashlib.sha256(windows.numpy().tobytes()).hexdigest()[:16]
    per_window = windows.shape[1] - 1
    n_avail = windows.shape[0] * per_window
    if cfg.max_tokens is not None:
        windows = windows[: max(1, math.ceil(cfg.max_tokens / per_window))]
    n_use = windows.shape[0] * per_window
    widest = max(max(t.shape) for t in targets)
    need = int(math.ceil(cfg.min_token_ratio * widest))
    if n_use < need:
        raise ValueError(f"too few tokens to estimate the factors: the data gives {n_use:,} counted tokens "
                         f"({n_avail:,} available), but a {widest}-wide factor needs at least {need:,} "
                         f"({cfg.min_token_ratio:g}× its width; many more is better): pass more text or raise max_tokens")
    mid = _model_id(model)
    meta = {"data": data_id, "context_len": int(windows.shape[1]), "batch_size": cfg.batch_size, "seed": cfg.seed,
            "windows": int(windows.shape[0])}
    state = resume_from
    if state is None and out_dir is not None and (Path(out_dir) / "factors.json").exists():
        state = KFACFactors.load(out_dir)
    if state is not None:
        same = (state.meta.get("data") == data_id and state.fisher == cfg.fisher and state.model == mid
                and state.names == [t.name for t in targets] and state.meta.get("batch_size") == cfg.batch_size
                and state.meta.get("context_len") == int(windows.shape[1]))
        if not same:
            raise ValueError(f"{out_dir or 'resume_from'} holds factors of another collection (model, data, matrices, "
                             "fisher or batch size differ): use a new folder, or delete it to start over")
    device = next(model.parameters()).device
    was_training = model.training
    flags = {id(p): p.requires_grad for p in model.parameters()}
    weights = [t.module.weight for t in targets]
    n_batches = math.ceil(windows.shape[0] / cfg.batch_size)
    start = state.n_batches if state is not None else 0
    col = _Collector(model, targets)
    tokens = state.n_tokens if state is not None else 0
    if state is not None:
        for t in targets:
            col.a[t.name] += state.a_sum[t.name]
            col.g[t.name] += state.g_sum[t.name]
    gen = torch.Generator(device="cpu")

    def snapshot(done: int) -> KFACFactors:
        return KFACFactors([t.record() for t in targets], {k: v.clone() for k, v in col.a.items()},
                           {k: v.clone() for k, v in col.g.items()}, tokens, done, mid, cfg.fisher,
                           {**meta, "seconds": meta.get("seconds", 0.0)})

    t0 = time.perf_counter()
    try:
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        for w in weights:
            w.requires_grad_(True)
        with col, progress(n_batches - start, f"K-FAC factors ({cfg.fisher})", unit="batch", quiet=quiet) as bar:
            for b in range(start, n_batches):
                ids = windows[b * cfg.batch_size:(b + 1) * cfg.batch_size].to(device)
                sel = torch.zeros_like(ids, dtype=torch.bool)
                sel[:, :-1] = True
                col.sel = sel
                logits = _logits(model(input_ids=ids, use_cache=False))[:, :-1].float()
                if cfg.fisher == "true":
                    gen.manual_seed(cfg.seed * 1_000_003 + b)
                    probs = torch.softmax(logits.detach(), -1).reshape(-1, logits.shape[-1]).cpu()
                    labels = torch.multinomial(probs, 1, generator=gen).view(ids.shape[0], -1).to(device)
                else:
                    labels = ids[:, 1:]
                loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                                         reduction="sum")
                torch.autograd.grad(loss, weights)
                tokens += int(sel.sum())
                done = b + 1
                bar.advance(1)
                if out_dir is not None and (done % cfg.save_every == 0) and done < n_batches:
                    snap = snapshot(done)
                    snap.check_finite()
                    snap.save(out_dir)
        meta["seconds"] = (state.meta.get("seconds", 0.0) if state is not None else 0.0) + time.perf_counter() - t0
        res = snapshot(n_batches)
        res.check_finite()
        if out_dir is not None:
            res.save(out_dir)
        return res
    finally:
        for p in model.parameters():
            p.requires_grad_(flags[id(p)])
        model.train(was_training)
