"""Shared bits of the benchmarks: timing, peak memory, JSON output, argument parsing."""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="fewer repeats / smaller sizes (CI-friendly)")
    p.add_argument("--json", dest="json_path", required=True, help="where to write the figures")
    return p


def median_time(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def reset_peak_rss() -> None:
    """Reset the kernel's peak-RSS mark of this process (Linux: write 5 to /proc/self/clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_rss_mb() -> float:
    """Peak resident memory of this process since start (or the last reset), in MB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_facts() -> dict:
    """CPU model and the ISA flags that decide which kernels are fast (AVX2, AVX-512, avx512_bf16, AMX)."""
    model, flags = platform.processor() or "", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not model.strip(" x86_64"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("model name") and model in ("", "x86_64"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    isa = {k: (k in flags) for k in ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")}
    kind = "amx" if isa["amx_tile"] else ("avx512-bf16" if isa["avx512_bf16"] else (
        "avx512" if isa["avx512f"] else ("avx2" if isa["avx2"] else "other")))
    return {"cpu_model": model, "isa": isa, "cpu_kind": kind}


def machine() -> dict:
    import torch

    import re

    cfg = torch.__config__.show()
    keys = ("BLAS_INFO", "LAPACK_INFO", "USE_MKL", "USE_MKLDNN", "USE_OPENMP")
    build = {k: v for k, v in re.findall(r"(\w+)=([^,\s]+)", cfg) if k in keys}
    return {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
            "threads": torch.get_num_threads(), "cuda": torch.cuda.is_available(), **cpu_facts(),
            "torch_build": build}


def write_json(path: str, obj: dict) -> None:
    from probescope.core.io import atomic_write_json

    atomic_write_json(Path(path), obj)
    print(json.dumps(obj, indent=2, default=str))
