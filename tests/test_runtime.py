"""The process helpers: torchrun set-up outside torchrun, and memory readings."""

import numpy as np
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
    block = np.ones(64 * 2**20 // 8)  # 64 MiB, touched
    during = rss_mb()
    del block
    assert during - before > 50
    assert rss_mb(peak=True) >= during - 1
