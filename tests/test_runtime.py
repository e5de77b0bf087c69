"""The process helpers: torchrun set-up outside torchrun, and memory readings."""

import mmap

import torch

from speech_transformer.utils.runtime import reset_peak_rss, rss_mb, setup_distributed


def test_setup_distributed_without_torchrun(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert setup_distributed("cpu") == (0, 1, torch.device("cpu"))
    rank, world, device = setup_distributed()
    assert (rank, world) == (0, 1) and device.type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_rss_grows_with_an_allocation_and_the_peak_stays():
    before = rss_mb()
    reset_peak_rss()
    # 64 MiB of fresh anonymous pages, touched 4 KiB at a time: a numpy array may reuse freed heap, or fault in
    # 32 huge pages, too few page faults for the kernel to fold its per-thread RSS counters into VmRSS
    block = mmap.mmap(-1, 64 * 2**20)
    if hasattr(mmap, "MADV_NOHUGEPAGE"):
        block.madvise(mmap.MADV_NOHUGEPAGE)
    for offset in range(0, len(block), 4096):
        block[offset] = 1
    during = rss_mb()
    block.close()
    assert during - before > 50
    assert rss_mb(peak=True) >= during - 1
