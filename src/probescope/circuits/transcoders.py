"""One transcoder per layer (`mlp_in.L → mlp_out.L`): load, save and check a set against a model.

On disk a set is a folder with `transcoders.json` (model, layers, widths) and one SAE folder per layer
(`layer_L/`, the SAE wing's layout). Any folder of SAE folders whose configs read `mlp_in.L` and write
`mlp_out.L` loads too (e.g. sparsify's transcoder folders `layers.L.mlp`, SAELens's transcoder folders), and so
does circuit-tracer's per-layer layout (`layer_L.safetensors`; `circuits/formats.py`): the layout is detected.

Skip connection (Paulo et al. 2025, "Transcoders beat sparse autoencoders"): a transcoder may carry a linear
`W_skip` [d_out, d_in] (raw units), its output then `decode(encode(x)) + x·W_skipᵀ`. It rides on the SAE module
as a tensor named `W_skip` (`attach_skip`) and is stored beside the layer's SAE folder as `layer_L/skip.safetensors`,
so the SAE folder itself stays the SAE wing's format.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from ..core.io import atomic_write_json, load_tensors, read_json, save_tensors
from ..core.sites import d_model, n_layers, parse_site
from ..sae.core import SAE
from ..sae.formats import load_sae, save_sae

MANIFEST = "transcoders.json"
SKIP_FILE = "skip.safetensors"


def attach_skip(sae: SAE, w_skip: torch.Tensor, trainable: bool = False) -> SAE:
    """Give `sae` the skip connection `w_skip` [d_out, d_in] (a parameter if `trainable`, else a buffer)."""
    want = (sae.cfg.d_out, sae.cfg.d_in)
    if tuple(w_skip.shape) != want:
        raise ValueError(f"W_skip of shape {tuple(w_skip.shape)} for a transcoder {sae.cfg.d_in} → {sae.cfg.d_out}: "
                         f"it must be {want}")
    w = w_skip.detach().to(sae.W_enc.dtype).clone()
    if trainable:
        sae.W_skip = nn.Parameter(w)
    else:
        sae.register_buffer("W_skip", w)
    return sae


def skip_of(sae: SAE) -> torch.Tensor | None:
    """The transcoder's W_skip [d_out, d_in], or None."""
    return getattr(sae, "W_skip", None)


def transcode(sae: SAE, x: torch.Tensor) -> torch.Tensor:
    """The transcoder's output for MLP inputs `x` ([..., d]): decode(encode(x)) + x·W_skipᵀ where it has a skip."""
    out = sae.decode(sae.encode(x.float())).reshape(*x.shape[:-1], sae.cfg.d_out)
    w = skip_of(sae)
    return out if w is None else out + x.float() @ w.T


def layer_dir(root: str | Path, layer: int) -> Path:
    return Path(root) / f"layer_{layer}"


def save_transcoders(saes: Sequence[SAE], path: str | Path, model: str = "", extra: dict | None = None) -> Path:
    """Write one SAE folder per layer and the manifest (written last: a set without it is incomplete)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    for layer, sae in enumerate(saes):
        w = skip_of(sae)
        if w is None:
            save_sae(sae, layer_dir(path, layer))
            continue
        plain = copy.deepcopy(sae)
        delattr(plain, "W_skip")
        save_sae(plain, layer_dir(path, layer))
        save_tensors(layer_dir(path, layer) / SKIP_FILE, {"W_skip": w.detach().float().cpu().contiguous()},
                     finite=True)
    atomic_write_json(path / MANIFEST, {"format": "probescope-transcoders", "model": model, "n_layers": len(saes),
                                        "d_in": saes[0].cfg.d_in, "n_latents": saes[0].cfg.n_latents,
                                        "k": saes[0].cfg.k, "skip": skip_of(saes[0]) is not None,
                                        **(extra or {})})
    return path


def _layer_of(sae: SAE) -> int | None:
    """L for a transcoder reading mlp_in.L and writing mlp_out.L, else None."""
    try:
        s_in, s_out = parse_site(sae.cfg.hook_in.split("/")[0]), parse_site(sae.cfg.hook_out)
    except (ValueError, TypeError):
        return None
    if s_in.kind == "mlp_in" and s_out.kind == "mlp_out" and s_in.layer == s_out.layer:
        return s_in.layer
    return None


def load_transcoders(path: str | Path, format: str = "auto") -> list[SAE]:
    """The transcoders in `path`, ordered by layer (a gap is an error naming the missing layer). `format`: "auto"
    (detected), "probescope" (folders of SAE folders: ours, sparsify's), "saelens" or "circuit-tracer"."""
    from ..sae.formats import read_saelens
    from .formats import FORMATS, detect_transcoder_format, load_circuit_tracer

    if format not in ("auto", *FORMATS):
        raise ValueError(f"transcoder format {format!r} is unknown: use auto, {', '.join(FORMATS)}")
    path = Path(path)
    fmt = detect_transcoder_format(path)  # a missing folder, or pickle files in it, refused here
    if format != "auto" and (format == "circuit-tracer") != (fmt == "circuit-tracer"):
        raise ValueError(f"{path} is in {fmt}'s layout, not {format}'s: pass --transcoder-format {fmt} (or auto)")
    if fmt == "circuit-tracer":
        return load_circuit_tracer(path)
    found: dict[int, SAE] = {}
    subs = sorted(p for p in path.iterdir() if p.is_dir() and (p / "cfg.json").exists())
    for sub in subs:
        if (sub / "sae_weights.safetensors").exists():
            try:
                sae, skip = read_saelens(sub)
            except (ValueError, TypeError, KeyError) as e:
                raise ValueError(f"{sub} (SAELens layout): {e}" if str(sub) not in str(e) else str(e)) from None
            if skip is not None:
                attach_skip(sae, skip)
            sae.eval()
        else:
            sae = load_sae(sub)
        if (sub / SKIP_FILE).exists():
            attach_skip(sae, load_tensors(sub / SKIP_FILE)["W_skip"])
        layer = _layer_of(sae)
        if layer is None:
            raise ValueError(f"{sub} holds an SAE at {sae.cfg.hook_in} → {sae.cfg.hook_out}, not a transcoder "
                             "mlp_in.L → mlp_out.L: remove it from the folder")
        if layer in found:
            raise ValueError(f"{path} holds two transcoders for layer {layer}: keep one")
        found[layer] = sae
    if not found:
        raise ValueError(f"{path} holds no transcoder folders (cfg.json + weights): train a set with "
                         "`probescope circuit transcoders --model M --out DIR`")
    n = max(found) + 1
    manifest = path / MANIFEST
    if manifest.exists():
        n = max(n, int(read_json(manifest).get("n_layers", n)))
    missing = [layer for layer in range(n) if layer not in found]
    if missing:
        raise ValueError(f"{path} has no transcoder for layer {missing[0]} (layers present: {sorted(found)}): train "
                         f"it (`probescope circuit transcoders` resumes into the same --out)")
    return [found[layer] for layer in range(n)]


def check_transcoders(model: nn.Module, saes: Sequence[SAE], where: str = "transcoders") -> list[SAE]:
    """`saes` checked against `model` (one per layer, matching widths, finite weights), folded, float32, on CPU, in
    eval mode: folded copies where that changes anything, else the same objects (nothing here writes to them)."""
    n, d = n_layers(model), d_model(model)
    saes = list(saes)
    if len(saes) != n:
        have = len(saes)
        raise ValueError(f"{where}: {have} transcoders for a model of {n} layers: "
                         + (f"layer {have} is missing" if have < n else f"layers {n}..{have - 1} do not exist")
                         + " (one transcoder per layer, mlp_in.L → mlp_out.L)")
    out = []
    for layer, sae in enumerate(saes):
        if not isinstance(sae, SAE):
            raise ValueError(f"{where}: entry {layer} is a {type(sae).__name__}, not a probescope SAE "
                             "(load it with probescope.sae.load_sae)")
        got = _layer_of(sae)
        if sae.cfg.hook_in and got is not None and got != layer:
            raise ValueError(f"{where}: entry {layer} is the transcoder of layer {got} "
                             f"({sae.cfg.hook_in} → {sae.cfg.hook_out}): order them by layer")
        if sae.cfg.d_in != d or sae.cfg.d_out != d:
            raise ValueError(f"{where}: the transcoder of layer {layer} has d_in={sae.cfg.d_in}, d_out={sae.cfg.d_out}, "
                             f"but this model's MLPs read and write width {d}: these transcoders belong to another "
                             f"model{' (' + sae.cfg.model + ')' if sae.cfg.model else ''}; train a set for this one")
        for name, t in sae.state_dict().items():
            if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t.abs().amax())):  # NaN propagates
                bad = int((~torch.isfinite(t)).sum())
                raise ValueError(f"{where}: the transcoder of layer {layer} has {bad} non-finite values in {name}: "
                                 "retrain it (or reload a good copy)")
        as_is = not sae.training and float(sae.in_scale) == 1.0 and float(sae.out_scale) == 1.0 and all(
            t.dtype == torch.float32 and t.device.type == "cpu" for t in sae.state_dict().values()
            if t.is_floating_point())
        if as_is:
            out.append(sae)
            continue
        c = copy.deepcopy(sae).float().cpu()
        c.fold_normalization()
        c.eval()
        out.append(c)
    return out
