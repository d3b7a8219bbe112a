"""Choose the SAE kernel path per machine by measuring it once, and cache the choice.

Which path trains fastest depends on the CPU (AMX makes the bf16 top-k selection pay; AVX2 alone does not) and
on the shape (d_in, latents, k, batch). `choose_path` times a few full training steps (forward, loss, backward)
of each candidate on random data of the run's shape — dense fp32, sparse fp32, sparse + bf16 top-k select — and
keeps the fastest. The result is cached in `~/.cache/probescope/kernel_paths.json` (or `$PROBESCOPE_CACHE`),
keyed by CPU model, ISA flags, torch version, threads and shape, so the next run on this machine reads it.
A corrupt cache is measured again and rewritten, never trusted. PROBESCOPE_AUTOTUNE=0 skips the measurement
and uses the CPU-flag rule of `kernels.kernel_path` (AMX or CUDA: bf16 select; else sparse fp32).
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any, NamedTuple

import torch

# (name, sparse kernels, bf16 top-k select)
PATHS: dict[str, tuple[bool, bool]] = {
    "dense fp32": (False, False),
    "sparse fp32": (True, False),
    "sparse + bf16 top-k select": (True, True),
}


class PathChoice(NamedTuple):
    path: str  # one of PATHS
    sparse: bool
    fast: bool
    why: str  # one line: measured figures or the rule that decided
    ms_per_step: dict[str, float]  # what was measured (empty when read from the cache or not measured)


def cache_file() -> Path:
    """Where choices are kept: $PROBESCOPE_CACHE/kernel_paths.json, else ~/.cache/probescope/kernel_paths.json."""
    root = os.environ.get("PROBESCOPE_CACHE") or Path.home() / ".cache" / "probescope"
    return Path(root) / "kernel_paths.json"


def _cpu_model() -> str:
    try:
        for ln in open("/proc/cpuinfo"):
            if ln.startswith("model name"):
                return ln.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_key(device: torch.device, d_in: int, n_latents: int, k: int, batch: int, arch: str) -> str:
    """The cache key: what the fastest path depends on."""
    from .kernels import cpu_isa

    if device.type == "cuda":
        where = f"cuda:{torch.cuda.get_device_name(device)}"
    else:
        flags = ",".join(f for f, on in sorted(cpu_isa().items()) if on)
        where = f"cpu:{_cpu_model()}:{flags}:threads={torch.get_num_threads()}"
    return f"{where}|torch={torch.__version__}|{arch}|d={d_in}|m={n_latents}|k={k}|n={batch}"


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}  # missing or corrupt: measure again


def _write_cache(path: Path, key: str, entry: dict[str, Any]) -> None:
    from ..core.io import atomic_write_json

    data = _read_cache(path)
    data[key] = entry
    try:
        atomic_write_json(path, data)
    except OSError:
        pass  # a read-only home only costs a measurement next time


def time_paths(d_in: int, n_latents: int, k: int, batch: int, arch: str = "topk", device: str | torch.device = "cpu",
               steps: int = 3, seed: int = 0) -> dict[str, float]:
    """Milliseconds per training step (forward, loss, backward) of each candidate path, median of `steps`."""
    from .config import SAEConfig
    from .core import SAE

    device = torch.device(device)
    g = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randn(batch, d_in, generator=g).to(device)
    cfg = SAEConfig(d_in=d_in, n_latents=n_latents, k=k, arch=arch)
    out = {}
    for name, (sparse, fast) in PATHS.items():
        if sparse and arch not in ("topk", "batchtopk"):
            continue
        sae = SAE(cfg, device=device, seed=seed)
        sae.sparse_kernels, sae.fast_select = sparse, fast
        times = []
        for i in range(steps + 1):  # the first step warms caches and allocators
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            res = sae(x)
            (res.fvu + res.auxk_loss).backward()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i:
                times.append((time.perf_counter() - t0) * 1e3)
            sae.zero_grad(set_to_none=True)
        out[name] = sorted(times)[len(times) // 2]
    return out


def choose_path(d_in: int, n_latents: int, k: int, batch: int, arch: str = "topk",
                device: str | torch.device = "cpu", sparse: bool = True, fast_select: str = "auto",
                measure: bool | None = None) -> PathChoice:
    """The kernel path for a run: the user's override (`sparse=False`, `fast_select` on/off), else the fastest
    one measured on this machine for this shape (measured once, then read from the cache). `measure=False` (or
    PROBESCOPE_AUTOTUNE=0, e.g. for bit-reproducible runs across machines) uses the CPU-flag rule instead."""
    device = torch.device(device)
    if measure is None:
        measure = os.environ.get("PROBESCOPE_AUTOTUNE", "1") not in ("0", "")
    if arch not in ("topk", "batchtopk") or not sparse:
        why = "--dense asked for" if not sparse else f"{arch} has no sparse kernels"
        return PathChoice("dense fp32", False, False, why, {})
    if fast_select in ("on", "off"):
        name = "sparse + bf16 top-k select" if fast_select == "on" else "sparse fp32"
        return PathChoice(name, True, fast_select == "on", f"--fast-select {fast_select}", {})
    if not measure:
        from .kernels import kernel_path

        name, why = kernel_path(True, "auto", device, arch)
        return PathChoice(name, *PATHS[name], why, {})
    key = machine_key(device, d_in, n_latents, k, batch, arch)
    path = cache_file()
    hit = _read_cache(path).get(key)
    if isinstance(hit, dict) and hit.get("path") in PATHS:
        ms = hit.get("ms_per_step", {})
        return PathChoice(hit["path"], *PATHS[hit["path"]], f"fastest measured on this machine ({_fmt(ms)}; cached "
                          f"in {path})", {})
    ms = time_paths(d_in, n_latents, k, min(batch, 4096), arch, device)
    name = min(ms, key=ms.__getitem__)
    _write_cache(path, key, {"path": name, "ms_per_step": {n: round(v, 2) for n, v in ms.items()},
                             "measured": time.strftime("%Y-%m-%d %H:%M:%S")})
    return PathChoice(name, *PATHS[name], f"fastest measured on this machine ({_fmt(ms)})", ms)


def _fmt(ms: dict[str, float]) -> str:
    return ", ".join(f"{n} {v:.1f} ms/step" for n, v in ms.items()) or "no figures"
