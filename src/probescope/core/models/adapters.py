"""LoRA adapters saved by PEFT, applied to a loaded model (the shipped reasoner is one)."""

from __future__ import annotations

from pathlib import Path

from torch import nn


def load_adapter(model: nn.Module, adapter_dir: str | Path, merge: bool = True) -> nn.Module:
    """Apply a saved PEFT LoRA adapter to `model`; `merge` folds it into the weights (a plain HF model again)."""
    from peft import PeftModel

    adapter_dir = Path(adapter_dir)
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        if not (adapter_dir / name).exists():
            raise FileNotFoundError(f"{adapter_dir / name} is missing: point to a folder written by train_lora "
                                    "(its adapter/ folder) or by PeftModel.save_pretrained")
    peft_model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False)
    return peft_model.merge_and_unload() if merge else peft_model
