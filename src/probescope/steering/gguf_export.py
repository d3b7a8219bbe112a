"""llama.cpp control vectors: write and read `.gguf` files with the `gguf` package.

Layout (what llama.cpp's `common_control_vector_load_one` reads): architecture "controlvector", keys
`controlvector.model_hint` (a model type such as "llama") and `controlvector.layer_count`, and one F32 1-D tensor
`direction.N` per steered layer.

Layer numbering, checked against llama.cpp's source: `direction.N` is copied to `data[(N - 1) * n_embd]`, which
`llama_adapter_cvec::apply` loads into `tensors[N]`, and the graph adds `tensors[il]` by `build_cvec(cur, il)` at
the end of block `il` (0-based). So `direction.N` is added to the output of block N, which is probescope's layer
N (HF `hidden_states[N + 1]`): the numbers are the same. `direction.0` is rejected by llama.cpp ("invalid
(zero) direction tensor layer index"): the output of block 0 cannot be steered there, so exporting a layer-0
direction raises. Use it with `llama-cli --control-vector-scaled FILE SCALE` (SCALE plays the multiplier).
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .vector import SteeringVector

ARCH = "controlvector"


def export_gguf(vector: "SteeringVector", path: str | Path, model_hint: str | None = None,
                n_layers: int | None = None, multiplier: float = 1.0) -> Path:
    """Write `vector` (times `multiplier`) as a llama.cpp control vector; atomic. Returns the path."""
    import gguf

    path = Path(path)
    if 0 in vector.directions:
        raise ValueError("layer 0 cannot be exported: llama.cpp never steers the output of block 0 (direction.0 is "
                         "rejected); train the vector at layers >= 1")
    if n_layers is not None and max(vector.layers) >= n_layers:
        raise ValueError(f"layer {max(vector.layers)} is out of range for a model with {n_layers} layers")
    hint = model_hint or vector.meta.get("model_type") or "llama"
    if path.is_dir():  # refused before the temp file is written beside it
        raise IsADirectoryError(errno.EISDIR, "the control vector is a file, but this path is a folder: give a "
                                "file path such as out/vector.gguf", str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        w = gguf.GGUFWriter(tmp, arch=ARCH)
        w.add_string(f"{ARCH}.model_hint", hint)
        w.add_uint32(f"{ARCH}.layer_count", len(vector.layers))
        for layer, v in vector.directions.items():
            w.add_tensor(f"direction.{layer}", (v.float() * multiplier).numpy().astype(np.float32))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_gguf(path: str | Path) -> "SteeringVector":
    """Read a llama.cpp control-vector GGUF back into a SteeringVector (direction.N → layer N)."""
    import gguf
    import torch

    from .vector import SteeringVector

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    r = gguf.GGUFReader(str(path))
    arch = _field(r, "general.architecture")
    if arch != ARCH:
        raise ValueError(f"{path} is a '{arch}' GGUF, not a control vector (architecture '{ARCH}')")
    dirs = {}
    for t in r.tensors:
        if not t.name.startswith("direction."):
            continue
        layer = int(t.name.split(".", 1)[1])
        dirs[layer] = torch.from_numpy(np.array(t.data, dtype=np.float32).reshape(-1))
    if not dirs:
        raise ValueError(f"{path} has no direction.N tensors")
    meta = {"source": "gguf", "model_type": _field(r, f"{ARCH}.model_hint"),
            "layer_count": _field(r, f"{ARCH}.layer_count")}
    return SteeringVector(dirs, None, meta)


def _field(reader, key: str):
    f = reader.fields.get(key)
    if f is None:
        return None
    try:
        return f.contents()
    except Exception:  # older gguf: decode by hand
        val = f.parts[f.data[0]]
        return bytes(val).decode() if val.dtype == np.uint8 else val.tolist()[0]
