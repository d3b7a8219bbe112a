"""Transcoder sets written by other tools, read into our SAE objects (safetensors + JSON/YAML only, never pickle).

* circuit-tracer (`TranscoderSet.to_safetensors`, and our `export.export_circuit_tracer`): `layer_L.safetensors`
  per layer with W_enc [features, d], W_dec [features, d], b_enc, b_dec, optional W_skip [d, d] and optional
  `activation_function.threshold` (JumpReLU; without it circuit-tracer applies ReLU). Our export adds
  `export.json`, whose `activation` "TopK(k) then ReLU" makes them TopK(k). A `config.yaml` (circuit-tracer's own,
  read with yaml.safe_load) gives the hooks and the model; its `model_kind` must be `transcoder_set`.
* SAELens: one folder per layer with cfg.json + sae_weights.safetensors (architectures transcoder,
  skip_transcoder, jumprelu_transcoder, jumprelu_skip_transcoder), hook_name → mlp_in.L, hook_name_out → mlp_out.L
  (`probescope.sae.formats.read_saelens`).

A pickle file anywhere in the folder (.pt, .pth, .pkl, .pickle, .bin, .ckpt, .npy, .npz, .joblib) is refused by
name before anything is read: it is never opened.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ..core.io import load_tensors, read_json
from ..sae.config import SAEConfig
from ..sae.core import SAE

PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".bin", ".ckpt", ".npy", ".npz", ".joblib")
LAYER_RE = re.compile(r"^layer_(\d+)\.safetensors$")
EXPORT = "export.json"
CT_CONFIG = "config.yaml"
TOPK_ACT = re.compile(r"^TopK\((k|\d+)\) then ReLU$")
# circuit-tracer's hook names (TransformerLens names, or nnsight's mlp.hook_in/out) that are our mlp_in / mlp_out
CT_IN = ("mlp.hook_in", "ln2.hook_normalized")
CT_OUT = ("mlp.hook_out", "hook_mlp_out")
LAYER_KEYS = {"W_enc", "W_dec", "b_enc", "b_dec", "W_skip", "activation_function.threshold"}
FORMATS = ("probescope", "circuit-tracer", "saelens")


def refuse_pickles(path: Path) -> None:
    """Refuse a folder holding pickle files (this level and one below), naming them; none is opened."""
    found = [p for p in sorted(path.iterdir()) if p.is_file() and p.suffix.lower() in PICKLE_SUFFIXES]
    for sub in sorted(p for p in path.iterdir() if p.is_dir()):
        found += [p for p in sorted(sub.iterdir()) if p.is_file() and p.suffix.lower() in PICKLE_SUFFIXES]
    if found:
        names = ", ".join(str(p.relative_to(path)) for p in found[:5]) + (" …" if len(found) > 5 else "")
        raise ValueError(f"{path} holds pickle files ({names}): probescope never opens them (pickle-based formats, "
                         "numpy archives included, can run code when loaded). Convert the weights to safetensors "
                         "(safetensors.torch.save_file) in a separate step, then remove those files from the folder")


def detect_transcoder_format(path: str | Path) -> str:
    """"circuit-tracer" (layer_L.safetensors files), "saelens" (sub-folders with sae_weights.safetensors) or
    "probescope" (sub-folders of SAE folders: ours, sparsify's); a clear error otherwise."""
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"transcoders={str(path)!r} is not a folder: train a set with "
                         "`probescope circuit transcoders --model M --out DIR`, then pass --transcoders DIR")
    refuse_pickles(path)
    if any(LAYER_RE.match(p.name) for p in path.iterdir() if p.is_file()):
        return "circuit-tracer"
    subs = [p for p in path.iterdir() if p.is_dir() and (p / "cfg.json").exists()]
    if subs and all((p / "sae_weights.safetensors").exists() for p in subs):
        return "saelens"
    return "probescope"


def _ct_config(path: Path) -> dict:
    """circuit-tracer's config.yaml (safe_load), or {} when the folder has none."""
    f = path / CT_CONFIG
    if not f.exists():
        return {}
    try:
        import yaml
    except ImportError:
        raise ValueError(f"{f}: reading circuit-tracer's config.yaml needs PyYAML (pip install pyyaml); or move "
                         "config.yaml away (the layer files carry the weights; pass --model)") from None
    try:
        cfg = yaml.safe_load(f.read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"{f} is not YAML ({e}): fix or remove it") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{f} is not a mapping: fix or remove it")
    kind = cfg.get("model_kind", "transcoder_set")
    if kind != "transcoder_set":
        raise ValueError(f"{f}: model_kind={kind!r} is not supported: probescope reads per-layer transcoder sets "
                         "(model_kind: transcoder_set), not cross-layer transcoders")
    for key, ok, site in (("feature_input_hook", CT_IN, "mlp_in"), ("feature_output_hook", CT_OUT, "mlp_out")):
        v = cfg.get(key)
        if v is not None and v not in ok:
            raise ValueError(f"{f}: {key}={v!r} is not supported: probescope's transcoders read mlp_in.L and write "
                             f"mlp_out.L ({key} one of {', '.join(ok)}; {v!r} is another point of the block)")
    return cfg


def _activation(path: Path, export: dict) -> tuple[str, int | None]:
    """("topk", k), ("relu", None) or ("jumprelu", None) from our export.json; without one ("circuit-tracer", None):
    per layer, JumpReLU where a threshold is stored, else ReLU."""
    if not export:
        return "circuit-tracer", None
    act = str(export.get("activation", ""))
    if act in ("ReLU", "JumpReLU"):
        return act.lower(), None
    m = TOPK_ACT.match(act)
    if not m:
        raise ValueError(f"{path / EXPORT}: activation={act!r} is not supported: probescope reads "
                         "'TopK(k) then ReLU' (with k), ReLU, or JumpReLU (activation_function.threshold per layer)")
    k = export.get("k") if m.group(1) == "k" else int(m.group(1))
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"{path / EXPORT}: k={k!r} must be a positive integer (the TopK of the activation)")
    return "topk", k


def load_circuit_tracer(path: str | Path) -> list[SAE]:
    """A set in circuit-tracer's per-layer layout as our transcoders (with W_skip attached where stored)."""
    from .transcoders import attach_skip

    path = Path(path)
    refuse_pickles(path)
    cfg = _ct_config(path)
    export = read_json(path / EXPORT) if (path / EXPORT).exists() else {}
    if export and not isinstance(export, dict):
        raise ValueError(f"{path / EXPORT} is not a JSON object: re-export the set")
    kind, k = _activation(path, export)
    files = {int(m.group(1)): p for p in path.iterdir() if p.is_file() and (m := LAYER_RE.match(p.name))}
    n = max(files) + 1
    if export.get("n_layers") is not None:
        n = max(n, int(export["n_layers"]))
    if isinstance(cfg.get("transcoders"), list):
        n = max(n, len(cfg["transcoders"]))
    missing = [layer for layer in range(n) if layer not in files]
    if missing:
        raise ValueError(f"{path} has no layer_{missing[0]}.safetensors: the transcoder of layer {missing[0]} is "
                         f"missing (layers present: {sorted(files)}); circuit-tracer sets need one file per layer")
    model = str(cfg.get("model_name") or export.get("model") or "")
    out = []
    for layer in range(n):
        f = files[layer]
        sd = load_tensors(f)
        extra = sorted(set(sd) - LAYER_KEYS)
        if extra:
            raise ValueError(f"{f}: tensors {extra} are not part of circuit-tracer's SingleLayerTranscoder "
                             f"(log_thresholds: store activation_function.threshold instead)")
        lack = [key for key in ("W_enc", "W_dec", "b_enc", "b_dec") if key not in sd]
        if lack:
            raise ValueError(f"{f} has no tensor {lack[0]!r}: it is not a circuit-tracer transcoder")
        w_enc, w_dec = sd["W_enc"].float(), sd["W_dec"].float()
        m_, d = w_enc.shape if w_enc.ndim == 2 else (0, 0)
        if w_enc.ndim != 2 or w_dec.ndim != 2 or w_dec.shape[0] != m_ or tuple(sd["b_enc"].shape) != (m_,) \
                or tuple(sd["b_dec"].shape) != (w_dec.shape[1],):
            raise ValueError(f"{f}: W_enc {tuple(w_enc.shape)}, W_dec {tuple(w_dec.shape)}, b_enc "
                             f"{tuple(sd['b_enc'].shape)}, b_dec {tuple(sd['b_dec'].shape)} do not fit together "
                             "(W_enc and W_dec [features, d]): the file is damaged")
        thr = sd.get("activation_function.threshold")
        if kind == "topk":
            if thr is not None:
                raise ValueError(f"{f}: a JumpReLU threshold in a set exported as {export.get('activation')!r}: "
                                 "the files do not belong together")
            arch, kk = "topk", min(k, m_)
        elif (kind == "relu" and thr is not None) or (kind == "jumprelu" and thr is None):
            raise ValueError(f"{f}: {'a' if thr is not None else 'no'} JumpReLU threshold (activation_function."
                             f"threshold) in a set exported as {export.get('activation')!r}: the files do not belong "
                             "together; re-export the set")
        elif thr is not None:
            thr = thr.float().reshape(-1) if thr.numel() > 1 else thr.float().reshape(()).expand(m_)
            if thr.shape != (m_,):
                raise ValueError(f"{f}: activation_function.threshold has {thr.numel()} values for {m_} features")
            if not bool((thr > 0).all()):
                bad = float(thr[~(thr > 0)][0])
                raise ValueError(f"{f}: JumpReLU threshold {bad} ≤ 0 is not supported (probescope's JumpReLU keeps "
                                 "a positive threshold per feature); clamp it to a small positive value first")
            arch, kk = "jumprelu", min(32, m_)
        else:
            arch, kk = "relu", min(32, m_)
        tc = SAE(SAEConfig(d_in=d, d_out=w_dec.shape[1], arch=arch, n_latents=m_, k=kk, hook_in=f"mlp_in.{layer}",
                           hook_out=f"mlp_out.{layer}", model=model, normalize_decoder=False))
        with torch.no_grad():
            tc.W_enc.copy_(w_enc)
            tc.W_dec.copy_(w_dec)
            tc.b_enc.copy_(sd["b_enc"].float())
            tc.b_dec.copy_(sd["b_dec"].float())
            if arch == "jumprelu":
                tc.log_threshold.copy_(thr.log())
        if "W_skip" in sd:
            attach_skip(tc, sd["W_skip"].float())
        tc.eval()
        out.append(tc)
    return out


