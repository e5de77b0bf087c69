"""Training runs in real processes: kill-and-resume, and DDP (torchrun, gloo) against one process."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from speech_transformer.training.data import read_manifest, write_manifest
from speech_transformer.text.normalize import normalize_transcript
from speech_transformer.text.tokenizer import train_tokenizer


@pytest.fixture(scope="module")
def setup(tmp_path_factory, data_dir):
    """40 FSDD training digits as a JSONL manifest, and a small tokenizer for them."""
    root = tmp_path_factory.mktemp("train")
    utts = read_manifest(data_dir / "fsdd" / "train.tsv")[::60][:40]
    write_manifest(utts, root / "train.jsonl")
    train_tokenizer([normalize_transcript(u.text) for u in utts] * 5, root / "tok.model", vocab_size=40)
    return root


def settings(setup: Path, out: str, **extra) -> list[str]:
    base = {"out_dir": str(setup / out), "train": f"[{setup / 'train.jsonl'}]", "tokenizer": str(setup / "tok.model"),
            "preset": "tiny", "model": "{encoder_layers: 1, decoder_layers: 1, d_model: 64, d_ff: 128, "
                                       "subsampling_channels: 16}",
            "batch_seconds": 6, "max_steps": 10, "warmup_steps": 3, "save_every": 2, "log_every": 1,
            "num_workers": 0, "progress": "false", "lr": 0.003}
    base.update(extra)
    return [f"--set={k}={v}" for k, v in base.items()]


def run(args: list[str], torchrun: int = 0, **kwargs) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    if torchrun:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={torchrun}", "--master-addr=127.0.0.1",
               f"--master-port={port}", "-m", "speech_transformer.training.trainer"]
    else:
        cmd = [sys.executable, "-m", "speech_transformer.training.trainer"]
    return subprocess.Popen(cmd + args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


def finish(p: subprocess.Popen) -> str:
    out, _ = p.communicate(timeout=240)
    assert p.returncode == 0, out[-3000:]
    return out


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(sorted((out / "checkpoints").glob("step-*"))[-1] / "model.safetensors"))


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


def test_ddp_two_processes_match_one_process_with_the_same_global_batch(setup):
    same = {"model": "{encoder_layers: 1, decoder_layers: 1, d_model: 64, d_ff: 128, subsampling_channels: 16, "
                     "dropout: 0.0}", "spec_augment": "null", "max_steps": 6}
    finish(run(settings(setup, "ddp", **same), torchrun=2))
    finish(run(settings(setup, "single", accumulation=2, **same)))
    summary = json.loads((setup / "ddp" / "summary.json").read_text())
    assert summary["world_size"] == 2
    assert summary["rank_param_checksums"][0] == summary["rank_param_checksums"][1]
    a, b = final_weights(setup / "ddp"), final_weights(setup / "single")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=2e-5, rtol=1e-4)
    losses = lambda d: [json.loads(x)["loss"] for x in (setup / d / "metrics.jsonl").read_text().splitlines()]  # noqa
    assert len(losses("ddp")) == 6
    assert losses("ddp") == pytest.approx(losses("single"), rel=1e-4)


def test_validate_scores_what_the_recognizer_decodes(data_dir, setup):
    """validate() decodes through Recognizer.encode + decoding.decode: its scores are those of recognize()."""
    import jiwer

    from speech_transformer.audio.loading import load_audio
    from speech_transformer.decoding.options import DecodingOptions
    from speech_transformer.model.transformer import SpeechTransformer, preset
    from speech_transformer.recognition.recognizer import Recognizer
    from speech_transformer.text.tokenizer import Tokenizer
    from speech_transformer.training.trainer import validate

    torch.manual_seed(0)
    tokenizer = Tokenizer(setup / "tok.model")
    model = SpeechTransformer(preset("tiny", vocab_size=tokenizer.vocab_size, encoder_layers=1, decoder_layers=1))
    utts = read_manifest(data_dir / "fsdd" / "test.tsv")[:5]
    waves, texts = [load_audio(u.audio) for u in utts], [normalize_transcript(u.text) for u in utts]
    result = validate(model.train(), tokenizer, waves, texts, batch_size=2)
    assert model.training  # validate hands the model back in training mode
    recognizer = Recognizer(model, tokenizer)
    attention = [r.text for r in recognizer.recognize(waves, DecodingOptions(beam_size=1, ctc_weight=0.0))]
    ctc = [r.text for r in recognizer.recognize(waves, DecodingOptions(method="ctc"))]
    assert result["valid_wer"] == jiwer.wer(texts, attention) and result["valid_cer"] == jiwer.cer(texts, attention)
    assert result["valid_ctc_cer"] == jiwer.cer(texts, ctc) and result["valid_example"] == attention[0]
    assert result["valid_loss"] > 0
