"""The running process: its devices and torchrun ranks, and its memory as the kernel counts it."""

from __future__ import annotations

import contextlib
import functools
import os
import resource
import sys
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist


def setup_distributed(device: str = "auto", backend: str | None = None,
                      timeout: timedelta | None = None) -> tuple[int, int, torch.device]:
    """(rank, world size, device). Under torchrun (WORLD_SIZE > 1) joins the process group, each rank on GPU
    LOCAL_RANK; `backend` defaults to NCCL on GPU and gloo on CPU. device: "auto" (a GPU when there is one),
    "cuda", "cpu" or a torch device name."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(f"cuda:{local_rank}" if device == "cuda" else device)
    if world > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend or ("nccl" if dev.type == "cuda" else "gloo"),
                                **({"timeout": timeout} if timeout else {}))
    return (dist.get_rank() if world > 1 else 0), world, dev


def rss_mb(peak: bool = False) -> float:
    """This process's resident memory in MiB: now (VmRSS), or its peak (VmHWM; since `reset_peak_rss`).
    Without Linux's /proc: the peak since the process started (getrusage)."""
    key = "VmHWM:" if peak else "VmRSS:"
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 * 1024 if sys.platform == "darwin" else 1024)


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux >= 4.0), so that a stage gets its own peak."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def limit_onednn_cache(capacity: int) -> None:
    """Cap oneDNN's primitive cache before the first convolution runs (an explicit environment variable wins).

    On CPU, oneDNN keeps one compiled primitive per convolution input shape, up to 1,024; variable-length
    batches make nearly every shape new, and the cache grew the trainer by GBs (bench/learning_curve.py logs
    RSS). The cache rarely hits with such batches, so a small one costs no speed.
    """
    if capacity >= 0:
        os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", str(capacity))


@functools.cache
def _libc():
    import ctypes
    import ctypes.util
    with contextlib.suppress(OSError):
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")  # find_library runs ldconfig: once
    return None


def malloc_trim() -> None:
    """Give freed heap memory back to the OS (glibc only; a no-op elsewhere)."""
    with contextlib.suppress(AttributeError, TypeError):
        _libc().malloc_trim(0)
