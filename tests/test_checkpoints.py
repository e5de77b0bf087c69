"""Tests of speech_transformer/training/checkpoints.py: a run killed mid-training resumes bit for bit."""

import json
import os
import signal
import time
from pathlib import Path

import torch

from conftest import final_weights, finish, run, settings


def test_kill_and_resume_is_bit_exact(setup):
    finish(run(settings(setup, "straight")))
    interrupted = run(settings(setup, "killed"), start_new_session=True)
    deadline = time.time() + 120
    while not (setup / "killed" / "checkpoints" / "step-00000004").exists():
        assert time.time() < deadline and interrupted.poll() is None, "training ended before it could be killed"
        time.sleep(0.05)
    os.killpg(interrupted.pid, signal.SIGKILL)
    interrupted.wait()
    assert not (setup / "killed" / "model").exists()  # it really died mid-run
    out = finish(run(settings(setup, "killed")))
    assert "resumed from" in out
    a, b = final_weights(setup / "straight"), final_weights(setup / "killed")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    summary = json.loads((setup / "killed" / "summary.json").read_text())
    assert summary["steps"] == 10 and Path(summary["model_dir"]).is_dir()
