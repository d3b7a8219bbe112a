"""Save and load SAEs: probescope's own layout, and SAELens's and sparsify's saved layouts.

* probescope: `cfg.json` (with "format": "probescope-sae") + `weights.safetensors`; input normalisation is
  folded in, so a saved SAE takes raw activations.
* SAELens: `cfg.json` + `sae_weights.safetensors` with W_enc [d_in, d_sae], W_dec [d_sae, d_in], b_enc, b_dec
  (+ threshold or log_threshold for jumprelu).
* sparsify: `cfg.json` + `sae.safetensors` with encoder.weight [n_latents, d_in], encoder.bias, W_dec, b_dec;
  the hook point is the folder's name (e.g. "layers.10" → resid_post.10).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch

from ..core.sites import foreign_site, parse_site
from ..core.io import atomic_write_json, load_tensors, read_json, save_tensors
from .config import SAEConfig
from .core import SAE

FORMAT = "probescope-sae"
WEIGHTS = "weights.safetensors"


def save_sae(sae: SAE, path: str | Path) -> Path:
    """Write `sae` (a folded copy: raw activations in, raw out) to the folder `path`."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    sae = copy.deepcopy(sae).cpu()
    sae.fold_normalization()
    tensors = {k: v for k, v in sae.state_dict().items() if k not in ("in_scale", "out_scale")}
    save_tensors(path / WEIGHTS, tensors, finite=True)  # a NaN/inf SAE is refused, never saved
    atomic_write_json(path / "cfg.json", {"format": FORMAT, **sae.cfg.to_dict()})
    return path


def detect_format(path: str | Path) -> str:
    """"probescope", "saelens" or "sparsify" for a folder (or a clear error)."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is not a folder: an SAE is a folder with cfg.json and a .safetensors file")
    if (path / "cfg.json").exists():
        cfg = read_json(path / "cfg.json")
        if cfg.get("format") == FORMAT and (path / WEIGHTS).exists():
            return "probescope"
        if (path / "sae_weights.safetensors").exists():
            return "saelens"
        if (path / "sae.safetensors").exists():
            return "sparsify"
    have = ", ".join(sorted(p.name for p in path.iterdir())) or "nothing"
    raise ValueError(
        f"{path} is not an SAE folder probescope can read (it has: {have}); expected cfg.json plus "
        f"{WEIGHTS} (probescope), sae_weights.safetensors (SAELens) or sae.safetensors (sparsify)"
    )


def saelens_hook(name: str) -> str:
    """Translate a TransformerLens hook name to our site ("blocks.10.hook_resid_post" → "resid_post.10")."""
    return foreign_site(name) or (name or "")


def sparsify_hook(folder_name: str) -> str:
    """sparsify names SAEs by module path: "layers.10" → resid_post.10, "layers.10.mlp" → mlp_out.10."""
    return foreign_site(folder_name)


def _cfg_error(path: Path, e: Exception) -> ValueError:
    return ValueError(f"{path}: {e}; fix that field of the file, or re-save the SAE")


def _check_shapes(path: Path, sae: SAE, w: dict[str, torch.Tensor], cfg_file: Path) -> None:
    """Name the tensor and the cfg.json fields when the weights do not fit the config (not a size-mismatch traceback)."""
    want = sae.state_dict()
    for k, v in w.items():
        if k in want and tuple(v.shape) != tuple(want[k].shape):
            c = sae.cfg
            raise ValueError(
                f"{path}: tensor '{k}' has shape {tuple(v.shape)}, but {cfg_file.name} (d_in={c.d_in}, "
                f"n_latents={c.n_latents}, d_out={c.d_out}) needs {tuple(want[k].shape)}: the config does not "
                "belong to these weights; fix d_in / n_latents in the cfg.json")


def _load_probescope(path: Path) -> SAE:
    raw = read_json(path / "cfg.json")
    if not isinstance(raw, dict):
        raise ValueError(f"{path / 'cfg.json'} is not a JSON object: the SAE folder is damaged")
    try:
        cfg = SAEConfig.from_dict(raw)
        sae = SAE(cfg)
    except (TypeError, ValueError) as e:
        raise _cfg_error(path / "cfg.json", e) from None
    w = load_tensors(path / WEIGHTS)
    _check_shapes(path / WEIGHTS, sae, w, path / "cfg.json")
    missing = sae.load_state_dict(w, strict=False)
    bad = [k for k in missing.missing_keys if k not in ("in_scale", "out_scale")]
    if bad or missing.unexpected_keys:
        raise ValueError(f"{path / WEIGHTS} does not match its cfg.json: missing {bad}, unexpected {missing.unexpected_keys}")
    return sae


def _field(raw: dict, key: str, path: Path, kind: type = int, default: object = None) -> object:
    """raw[key] as `kind` (an integral string like "32" is read as 32), or an error naming the field and file."""
    v = raw.get(key, default)
    if v is None:
        raise ValueError(f"{path}: the field {key!r} is missing; an SAE config needs it")
    if kind is int:
        if isinstance(v, bool) or not (isinstance(v, int) or (isinstance(v, str) and v.strip().lstrip("-").isdigit())
                                       or (isinstance(v, float) and v.is_integer())):
            raise ValueError(f"{path}: {key}={v!r} is not an integer: write it as a whole number, e.g. \"{key}\": 32")
        v = int(v)
        if v <= 0:
            raise ValueError(f"{path}: {key}={v} must be positive")
    return v


SAELENS_TRANSCODERS = {"transcoder": ("relu", False), "skip_transcoder": ("relu", True),
                       "jumprelu_transcoder": ("jumprelu", False), "jumprelu_skip_transcoder": ("jumprelu", True)}


def read_saelens(path: str | Path) -> tuple[SAE, torch.Tensor | None]:
    """An SAELens folder (cfg.json + sae_weights.safetensors) as our SAE, and its W_skip [d_out, d_in] (raw units)
    for SAELens's skip transcoders (else None). Transcoders (architecture transcoder, skip_transcoder,
    jumprelu_transcoder, jumprelu_skip_transcoder) read `hook_name` and write `hook_name_out` (top level or in
    `metadata`) with width d_out; their encoder does not subtract b_dec, as ours does not for a transcoder."""
    path = Path(path)
    raw = read_json(path / "cfg.json")
    if not isinstance(raw, dict):
        raise ValueError(f"{path / 'cfg.json'} is not a JSON object: the SAE folder is damaged")
    w = load_tensors(path / "sae_weights.safetensors")
    meta = raw.get("metadata") or {}
    arch = raw.get("architecture", "standard")
    cfg_file = path / "cfg.json"
    tc_arch = SAELENS_TRANSCODERS.get(arch)
    d_in, d_sae = _field(raw, "d_in", cfg_file), _field(raw, "d_sae", cfg_file)
    d_out = _field(raw, "d_out", cfg_file, default=d_in) if tc_arch else d_in
    for key in ("W_enc", "W_dec", "b_enc", "b_dec") + (("W_skip",) if tc_arch and tc_arch[1] else ()):
        if key not in w:
            raise ValueError(f"{path / 'sae_weights.safetensors'} has no tensor {key!r}: it is not an SAELens "
                             f"{'SAE' if tc_arch is None else arch}")
    if w["W_enc"].shape != (d_in, d_sae) or w["W_dec"].shape != (d_sae, d_out):
        raise ValueError(
            f"{path}: W_enc {tuple(w['W_enc'].shape)} / W_dec {tuple(w['W_dec'].shape)} do not match d_in={d_in}, "
            f"d_sae={d_sae}{f', d_out={d_out}' if tc_arch else ''} of cfg.json: the folder is inconsistent"
        )
    if tc_arch:
        ours = tc_arch[0]
    else:
        ours = {"standard": "relu", "topk": "topk", "jumprelu": "jumprelu", "batchtopk": "batchtopk"}.get(arch)
    if ours is None:
        raise ValueError(f"{path}: SAELens architecture {arch!r} is not supported (use standard, topk, jumprelu or "
                         f"batchtopk; transcoders: {', '.join(SAELENS_TRANSCODERS)})")
    if raw.get("normalize_activations") not in (None, "none"):
        raise ValueError(
            f"{path}: normalize_activations={raw['normalize_activations']!r} needs statistics SAELens keeps elsewhere; "
            "fold the normalisation into the weights first (SAELens: sae.fold_activation_norm_scaling_factor)"
        )
    k_raw = {"k": raw.get("k") or (raw.get("architecture_config") or {}).get("k") or min(32, d_sae)}
    k = _field(k_raw, "k", cfg_file)
    hook = saelens_hook(raw.get("hook_name") or meta.get("hook_name", ""))
    hook_out = ""
    if tc_arch:
        name_out = raw.get("hook_name_out") or meta.get("hook_name_out")
        if not name_out:
            raise ValueError(f"{cfg_file}: the field 'hook_name_out' is missing (top level or in metadata); an SAELens "
                             f"{arch} needs the hook it writes, e.g. \"hook_name_out\": \"blocks.3.hook_mlp_out\"")
        hook_out = saelens_hook(name_out)
        if not hook_out or hook_out == hook:
            raise ValueError(f"{cfg_file}: hook_name_out={name_out!r} is not a hook point probescope knows (or is the "
                             f"input hook): use a TransformerLens name such as blocks.3.hook_mlp_out")
    cfg = SAEConfig(d_in=d_in, d_out=d_out, arch=ours, n_latents=d_sae, k=k, hook_in=hook, hook_out=hook_out,
                    model=str(raw.get("model_name") or meta.get("model_name", "")), normalize_decoder=False)
    sae = SAE(cfg)
    with torch.no_grad():
        sae.W_enc.copy_(w["W_enc"].T.float())
        sae.W_dec.copy_(w["W_dec"].float())
        sae.b_enc.copy_(w["b_enc"].float())
        sae.b_dec.copy_(w["b_dec"].float())
        if ours == "jumprelu":
            if "threshold" not in w and "log_threshold" not in w:
                raise ValueError(f"{path / 'sae_weights.safetensors'} has no tensor 'threshold' (or 'log_threshold'): "
                                 f"an SAELens {arch} needs its thresholds")
            thr = w["threshold"].float() if "threshold" in w else w["log_threshold"].float().exp()
            sae.log_threshold.copy_(thr.clamp_min(1e-12).log())
    b_dec_in = raw.get("apply_b_dec_to_input")
    if sae.transcoder:
        if b_dec_in is True and d_in == d_out and not torch.all(sae.b_dec == 0):
            with torch.no_grad():  # (x − b_dec)·W_enc + b_enc: fold it, our transcoders read x as is
                sae.b_enc -= sae.W_enc @ sae.b_dec
    elif b_dec_in is False and not torch.all(sae.b_dec == 0):
        # SAELens without b_dec subtraction: fold W_enc·b_dec back into the encoder bias
        with torch.no_grad():
            sae.b_enc += sae.W_enc @ sae.b_dec
    skip = w["W_skip"].float() if tc_arch and tc_arch[1] else None
    if skip is not None and tuple(skip.shape) != (d_out, d_in):
        raise ValueError(f"{path}: W_skip {tuple(skip.shape)} must be (d_out, d_in) = {(d_out, d_in)}")
    return sae, skip


def _load_saelens(path: Path) -> SAE:
    sae, skip = read_saelens(path)
    if skip is not None:
        raise ValueError(f"{path}: an SAELens skip transcoder (W_skip): the SAE wing has no skip term; load its set "
                         "with probescope.circuits.load_transcoders (or `probescope circuit attribute --transcoders`)")
    return sae


def _load_sparsify(path: Path) -> SAE:
    raw = read_json(path / "cfg.json")
    w = load_tensors(path / "sae.safetensors")
    if "W_skip" in w:
        raise ValueError(f"{path}: sparsify SAEs with a skip connection (W_skip) are not supported")
    for key in ("encoder.weight", "encoder.bias", "W_dec", "b_dec"):
        if key not in w:
            raise ValueError(f"{path / 'sae.safetensors'} has no tensor {key!r}: it is not a sparsify SAE")
    enc, dec = w["encoder.weight"], w["W_dec"]
    cfg_file = path / "cfg.json"
    d_in = _field(raw, "d_in", cfg_file, default=enc.shape[1])
    m = enc.shape[0]
    if enc.shape[1] != d_in or dec.shape[0] != m:
        raise ValueError(f"{path}: encoder.weight {tuple(enc.shape)} / W_dec {tuple(dec.shape)} disagree with d_in={d_in}")
    act = raw.get("activation", "topk")
    if act != "topk":
        raise ValueError(f"{path}: sparsify activation {act!r} is not supported (only topk)")
    transcode = bool(raw.get("transcode", False))
    hook = sparsify_hook(path.name)
    cfg = SAEConfig(d_in=d_in, d_out=dec.shape[1], arch="topk", n_latents=m, k=_field(raw, "k", cfg_file, default=32),
                    hook_in=hook.replace("mlp_out", "mlp_in") if transcode else hook, hook_out=hook,
                    normalize_decoder=bool(raw.get("normalize_decoder", True)) and not transcode)
    if transcode and cfg.hook_in == cfg.hook_out:
        cfg.hook_in = cfg.hook_in + "/in"  # unknown hook point, but still a transcoder
    sae = SAE(cfg)
    with torch.no_grad():
        sae.W_enc.copy_(enc.float())
        sae.b_enc.copy_(w["encoder.bias"].float())
        sae.W_dec.copy_(dec.float())
        sae.b_dec.copy_(w["b_dec"].float())
    return sae


def load_sae(
    path: str | Path,
    *,
    d_in: int | None = None,
    hook: str | None = None,
    device: str | torch.device = "cpu",
) -> SAE:
    """Load an SAE folder in probescope's, SAELens's or sparsify's layout.

    With `d_in` and/or `hook` given, refuse an SAE of another width or hook point, naming both.
    """
    path = Path(path)
    fmt = detect_format(path)
    try:
        sae = {"probescope": _load_probescope, "saelens": _load_saelens, "sparsify": _load_sparsify}[fmt](path)
    except (ValueError, TypeError, KeyError) as e:
        msg = str(e) if not isinstance(e, KeyError) else f"the field or tensor {e} is missing"
        if str(path) in msg:
            raise
        raise ValueError(f"{path} ({fmt} layout): {msg}") from None
    if d_in is not None and sae.cfg.d_in != d_in:
        raise ValueError(
            f"the SAE in {path} reads width {sae.cfg.d_in}, but the activations have width {d_in}: "
            "it was trained for another model or hook point"
        )
    if hook is not None and sae.cfg.hook_in:
        if parse_site(hook) != parse_site(sae.cfg.hook_in.split("/")[0]):
            raise ValueError(
                f"the SAE in {path} reads hook point {sae.cfg.hook_in}, not {hook}: pick the SAE trained "
                f"at {hook}, or pass --hook {sae.cfg.hook_in}"
            )
    labels = path / "latents.json"  # written by `probescope sae latents`: labels for sparse probes and timelines
    if labels.exists():
        try:
            sae.latent_labels = {int(j): r["label"] for j, r in read_json(labels).get("latents", {}).items()
                                 if r.get("label")}
        except (ValueError, KeyError, AttributeError) as e:
            raise ValueError(f"{labels} is not a latents file written by `probescope sae latents` ({e}): "
                             "delete it or rerun that command") from None
    sae.eval()
    return sae.to(device)


def check_sae_sites(sae: SAE, model: Any, path: str | Path, model_name: str = "the model") -> None:
    """Resolve the SAE's hook points against `model`; a site that does not exist there (a layer out of range, a head
    the model lacks) is refused naming the file it was read from: cfg.json, or a sparsify folder's name."""
    from ..core.sites import check_forward_order

    path = Path(path)
    where = (f"the folder name {path.name!r} (sparsify layout)" if detect_format(path) == "sparsify"
             else str(path / "cfg.json"))
    hin, hout = (sae.cfg.hook_in or "").split("/")[0], (sae.cfg.hook_out or "").split("/")[0]
    if not hin:
        return  # trained on tensors given in memory: no hook point recorded
    try:
        check_forward_order(model, hin, hout or hin)
    except ValueError as e:
        raise ValueError(f"the SAE's hook point read from {where} does not fit {model_name}: {e}. The SAE was made "
                         f"for another model (pass --model with it), or fix hook_in/hook_out in {where}") from None


def to_saelens_tensors(sae: SAE) -> dict[str, torch.Tensor]:
    """Weights in SAELens's naming (used by tests and for export)."""
    s = copy.deepcopy(sae).cpu()
    s.fold_normalization()
    out = {"W_enc": s.W_enc.T.contiguous(), "W_dec": s.W_dec.detach(), "b_enc": s.b_enc.detach(), "b_dec": s.b_dec.detach()}
    if s.cfg.arch == "jumprelu":
        out["threshold"] = s.log_threshold.detach().exp()
    return out
