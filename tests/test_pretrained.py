"""Shipping the embedded default model (recipes/default/ship.py) and the shipped model itself.

`ship.py` runs on the tiny overfit model of the test session, into temporary folders. The tests of the
shipped default model (`speech_transformer/pretrained/default`) skip while none ships.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from speech_transformer.model import checkpoint
from speech_transformer.apps import evaluate
from speech_transformer import pretrained
from speech_transformer.audio.loading import load_audio
from speech_transformer.training.data import read_manifest, write_manifest
from speech_transformer.decoding.options import DecodingOptions
from speech_transformer.apps import regression
from speech_transformer.recognition.recognizer import Recognizer
from speech_transformer.apps.transcribe import transcribe

REPO = Path(__file__).resolve().parents[1]
SHIP = REPO / "recipes" / "default" / "ship.py"
DEFAULT = pretrained.PRETRAINED_DIR / pretrained.DEFAULT_MODEL
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
HARDWARE = "test rig: 1 CPU thread"
RECIPE_COMMAND = "conftest.train_overfit_model"
needs_default = pytest.mark.skipif(not (DEFAULT / checkpoint.CONFIG_FILE).is_file(),
                                   reason="no embedded default model shipped")


@pytest.fixture(scope="module")
def ship():
    """recipes/default/ship.py as a module."""
    spec = importlib.util.spec_from_file_location("ship", SHIP)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def exp(tmp_path_factory, overfit_model_dir, overfit_clips, data_dir) -> Path:
    """A recipe experiment folder around the overfit model: train.yaml, a training log of two sessions
    (steps 20-40, resumed at 60) plus a record past the shipped weights (step 80), and the model."""
    exp = tmp_path_factory.mktemp("exp")
    write_manifest(overfit_clips, exp / "train.jsonl")
    (exp / "train.yaml").write_text(yaml.safe_dump({
        "preset": "tiny", "train": [str(exp / "train.jsonl")], "valid": str(data_dir / "librispeech" / "dev.tsv"),
        "valid_utterances": 3, "batch_seconds": 40, "max_steps": 80, "tokenizer": "unused"}))
    log = [{"step": 20, "epoch": 0, "loss": 9.0, "audio_seconds_per_second": 36.0, "elapsed_s": 600.0},
           {"step": 40, "epoch": 0, "loss": 5.0, "audio_seconds_per_second": 36.0, "elapsed_s": 1200.0},
           {"step": 40, "valid_loss": 4.0, "valid_wer": 0.4321, "valid_cer": 0.1234, "valid_example": "x"},
           {"step": 60, "epoch": 1, "loss": 3.0, "audio_seconds_per_second": 36.0, "elapsed_s": 600.0},
           {"step": 80, "epoch": 1, "loss": 2.0, "audio_seconds_per_second": 36.0, "elapsed_s": 1200.0}]
    (exp / "train").mkdir()
    (exp / "train" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    shutil.copytree(overfit_model_dir, exp / "model")
    config = json.loads((exp / "model" / checkpoint.CONFIG_FILE).read_text())
    config["info"]["steps"] = 60  # the weights were taken at step 60
    (exp / "model" / checkpoint.CONFIG_FILE).write_text(json.dumps(config))
    return exp


def _evaluate(exp: Path, utterances, name: str) -> Path:
    """An evaluate report of the overfit model (beam and greedy) and a peer that never answers."""
    write_manifest(utterances, exp / f"{name}.jsonl")
    out = exp / "reports" / f"{name}.json"
    model = exp / "model"
    assert evaluate.main(["--data", str(exp / f"{name}.jsonl"), "--system", f"model:{model},beam=3,ctc=0.3,name=beam",
                          "--system", f"model:{model},beam=1,ctc=0,name=greedy", "--system", "cmd:silent=true {audio}",
                          "--output", str(out), "--no-progress", "--no-cache"]) == 0
    return out


@pytest.fixture(scope="module")
def held_out_report(exp, data_dir) -> Path:
    return _evaluate(exp, read_manifest(data_dir / "an4" / "test.tsv")[:3], "an4-test")


def test_stage_int8_matrices_decode_like_float32(ship, exp, overfit_clips, tmp_path):
    stage = ship.stage_model(exp / "model", tmp_path / "int8", "int8", {"beam_size": 1})
    stored = load_file(str(stage / checkpoint.WEIGHTS_FILE))
    original, tokenizer, _ = checkpoint.load_model(exp / "model")
    matrices = [k for k, p in original.named_parameters() if p.dim() > 1]
    assert all(stored[k].dtype == torch.int8 and k + checkpoint.SCALE_SUFFIX in stored for k in matrices)
    assert all(stored[k].dtype == torch.float16 for k, p in original.named_parameters() if p.dim() == 1)
    fp32 = (exp / "model" / checkpoint.WEIGHTS_FILE).stat().st_size
    assert (stage / checkpoint.WEIGHTS_FILE).stat().st_size < 0.35 * fp32
    assert checkpoint.read_config(stage)["info"]["shipped"]["dtype"] == "int8"
    audio = [load_audio(u.audio) for u in overfit_clips]
    options = DecodingOptions(beam_size=3, ctc_weight=0.3)
    int8 = [r.text for r in Recognizer.from_dir(stage).recognize(audio, options)]
    assert int8 == [r.text for r in Recognizer(original, tokenizer).recognize(audio, options)]


def test_ship_float16_copy_card_and_regression(ship, exp, held_out_report, overfit_clips, tmp_path, capsys):
    dest = tmp_path / "pretrained" / "default"
    argv = ["--exp", str(exp), "--dest", str(dest), "--hardware", HARDWARE, "--recipe-command", RECIPE_COMMAND,
            "--report", f"an4-test={held_out_report}", "--regression", "--limitation", "For tests only."]
    assert ship.main(argv) == 0, capsys.readouterr().err
    assert "card counts steps up to 60" in capsys.readouterr().err
    assert sorted(p.name for p in dest.iterdir()) == ["MODEL_CARD.md", "config.json", "model.safetensors",
                                                      "regression.json", "tokenizer.model"]  # one vocabulary

    # float16 parameters on disk, float32 buffers; the file about half the size
    source = exp / "model" / checkpoint.WEIGHTS_FILE
    stored = load_file(str(dest / checkpoint.WEIGHTS_FILE))
    original, tokenizer, _ = checkpoint.load_model(exp / "model")
    params = dict(original.named_parameters())
    assert all(stored[k].dtype == torch.float16 for k in params)
    assert all(stored[k].dtype == torch.float32 for k, _ in original.named_buffers() if k in stored)
    assert (dest / checkpoint.WEIGHTS_FILE).stat().st_size < 0.55 * source.stat().st_size

    # it loads through checkpoint.load_model (hashes checked) into the float32 model, values rounded to float16
    shipped, _, config = checkpoint.load_model(dest)
    assert config["info"]["shipped"]["dtype"] == "float16" and config["info"]["steps"] == 60
    for name, p in shipped.named_parameters():
        assert p.dtype == torch.float32 and torch.equal(p, params[name].detach().half().float()), name
    audio = [load_audio(u.audio) for u in overfit_clips]
    for options in (DecodingOptions(beam_size=3, ctc_weight=0.3), DecodingOptions(beam_size=1, ctc_weight=0.0)):
        fp32 = [r.text for r in Recognizer(original, tokenizer).recognize(audio, options)]
        fp16 = [r.text for r in Recognizer.from_dir(dest).recognize(audio, options)]
        assert fp16 == fp32 == [u.text for u in overfit_clips]

    # regression.json: the measured WER of the shipped copy, bound = measured + 3 points
    record = regression.read(dest)
    assert record["decoding"] == checkpoint.read_config(dest)["decoding"] and record["margin"] == 0.03
    assert set(record["sets"]) == {"samples", "an4-test-first20"}
    for s in record["sets"].values():
        assert s["max_wer"] == pytest.approx(s["wer"] + 0.03) and s["n_utts"] == len(s["hyps"])

    # the card: reported numbers, training facts, hardware, limitations
    card = (dest / ship.CARD_FILE).read_text()
    report = json.loads(held_out_report.read_text())
    for system in report["systems"]:
        assert f"{100 * system['wer']:.2f}" in card and f"{100 * system['cer']:.2f}" in card
    assert "| beam 3, CTC weight 0.3 |" in card and "| greedy (attention) |" in card and "| silent |" in card
    assert f"{shipped.num_parameters():,}" in card and "float16" in card
    assert "30 min of wall time in 2 session(s)" in card  # steps 20-60: 1200 s + 600 s
    assert "18.0 h of (speed-perturbed) audio" in card  # 36 audio-s/s over 1800 s
    assert "60 optimiser steps" in card and "WER 43.21 %" in card and f"`{RECIPE_COMMAND}`" in card
    assert HARDWARE in card and "For tests only." in card and "| an4-test (`" in card
    for s in record["sets"].values():
        assert f"{100 * s['max_wer']:.2f} %" in card


def test_ship_again_keeps_the_model_files(ship, exp, held_out_report, tmp_path, capsys):
    dest = tmp_path / "default"
    common = ["--exp", str(exp), "--dest", str(dest), "--recipe-command", RECIPE_COMMAND]
    assert ship.main([*common, "--hardware", HARDWARE]) == 0
    stamps = {f.name: f.stat().st_mtime_ns for f in dest.iterdir()}
    assert ship.main([*common, "--hardware", "another rig", "--report", f"an4-test={held_out_report}",
                      "--report", f"an4-test={held_out_report}"]) == 0
    for name in (checkpoint.WEIGHTS_FILE, checkpoint.TOKENIZER_FILE):  # kept; config.json written again
        assert (dest / name).stat().st_mtime_ns == stamps[name], f"{name} was rewritten"
    card = (dest / ship.CARD_FILE).read_text()
    assert "another rig" in card and not (dest / regression.REGRESSION_FILE).exists()
    assert card.count("| an4-test (`") == 6  # two reports of one set: their systems side by side
    assert card.count("speech-transformer evaluate --data") == 2
    # the same weights with another preferred decoding and grammar settings: config.json carries them
    assert ship.main([*common, "--hardware", HARDWARE, "--decoding", '{"beam_size": 2}',
                      "--commands", '{"reject_threshold": -5.0}']) == 0
    config = checkpoint.read_config(dest)
    assert DecodingOptions.from_dict(config["decoding"]) == DecodingOptions(beam_size=2)
    assert config["commands"] == {"reject_threshold": -5.0}
    checkpoint.load_model(dest)  # hashes still match the kept files

    # float32 keeps the weights exactly
    assert ship.main([*common, "--hardware", HARDWARE, "--dtype", "float32"]) == 0
    shipped, _, _ = checkpoint.load_model(dest)
    original, _, _ = checkpoint.load_model(exp / "model")
    assert all(torch.equal(a, b) for a, b in zip(shipped.state_dict().values(), original.state_dict().values()))


def test_ship_refuses_oversized_folders_and_training_audio(ship, exp, overfit_clips, tmp_path, capsys):
    dest = tmp_path / "default"
    common = ["--exp", str(exp), "--dest", str(dest), "--hardware", HARDWARE, "--recipe-command", RECIPE_COMMAND]
    result = subprocess.run([sys.executable, str(SHIP), *common, "--max-mb", "1"], capture_output=True, text=True,
                            env=ENV, timeout=300)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "over the 1 MB limit" in result.stderr and "Traceback" not in result.stderr
    assert not dest.exists() or not any(dest.iterdir())
    assert [p.name for p in dest.parent.iterdir() if p.name.startswith(".ship-")] == []  # staging cleaned up

    trained_on = _evaluate(exp, overfit_clips[:2], "train-clips")
    assert ship.main([*common, "--report", f"train={trained_on}"]) == 2
    assert "report train: 2 scored file(s) are in the training data" in capsys.readouterr().err
    assert ship.main([*common, "--report", f"bad={exp / 'train.yaml'}"]) == 2
    assert "cannot read the report" in capsys.readouterr().err
    assert ship.main(["--exp", str(exp), "--dest", str(dest), "--hardware", HARDWARE]) == 2
    assert "--recipe-command" in capsys.readouterr().err
    assert not dest.exists() or not any(dest.iterdir())


# --- the shipped default model --------------------------------------------------------------------

@needs_default
def test_default_model_regression(data_dir):
    """WER of the embedded model on the regression clips stays within the bounds stored when it shipped."""
    recognizer = Recognizer.from_dir(None)
    record = regression.read(DEFAULT)
    measured = regression.measure(recognizer, data_dir, record["decoding"])
    assert set(measured) == set(record["sets"])
    for name, stored in record["sets"].items():
        assert measured[name]["n_utts"] == stored["n_utts"]
        assert measured[name]["wer"] <= stored["max_wer"] + 1e-9, (
            f"{name}: WER {measured[name]['wer']:.4f} > bound {stored['max_wer']:.4f}; hyps {measured[name]['hyps']}")


@needs_default
def test_default_model_files():
    assert pretrained.resolve(None) == DEFAULT and "default" in pretrained.available()
    assert sum(f.stat().st_size for f in DEFAULT.iterdir()) <= 40e6
    card = (DEFAULT / "MODEL_CARD.md").read_text()
    assert "## Training data" in card and "## Evaluation" in card and "## Limitations" in card


@needs_default
def test_transcribe_without_model_uses_the_embedded_one(tmp_path, data_dir):
    jfk = data_dir / "samples" / "jfk.flac"
    result = subprocess.run([sys.executable, "-m", "speech_transformer.apps.cli", "transcribe", str(jfk), "-o",
                             str(tmp_path), "--format", "txt", "--no-progress"], capture_output=True, text=True,
                            env=ENV, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    expected = transcribe(str(DEFAULT), str(jfk)).text
    assert expected.strip() and (tmp_path / "jfk.txt").read_text().split() == expected.split()


def test_ship_a_distillation_run(ship, tmp_path, root, data_dir):
    """ship.py on a distil run folder (recipes/distil/train.py's --out beside labels/): a two-vocabulary model
    with both tokenizers, a card with the labelled sets and their teacher WER, the settings and the dev curve;
    the old model's tokenizer file goes."""
    from conftest import two_vocabulary_model

    _, _, model_dir = two_vocabulary_model(tmp_path, root)
    run = tmp_path / "run"
    (run / "labels" / "an4-train").mkdir(parents=True)
    (run / "data").symlink_to(data_dir)
    rows = read_manifest(data_dir / "an4" / "train.tsv")[:3]
    (run / "labels" / "an4-train" / "labels.jsonl").write_text("".join(json.dumps(
        {"index": i, "audio": str(Path(u.audio).relative_to(data_dir / "an4")), "duration_s": u.duration,
         "text": u.text, "tokens": [1, 2], "stop": "eot", "wer": 0.0}) + "\n" for i, u in enumerate(rows)))
    (run / "labels" / "an4-train" / "summary.json").write_text(json.dumps({"corpus_wer_pct": 39.99}))
    (run / "labels" / "an4-train" / "DONE").touch()
    (run / "student" / "init").mkdir(parents=True)
    (run / "student" / "init" / "config.json").write_text(json.dumps({"sets": ["an4-train"], "teacher_layers": [0, 3]}))
    settings = {"ctc_weight": 0.2, "max_wer": 0.1, "kl_weight": 0.8, "lr": 1e-4, "warmup": 100, "frames": 6000}
    (run / "student" / "sessions.jsonl").write_text(json.dumps(  # fsdd-train: not labelled (--human)
        {"step": 0, "settings": settings, "sets": ["an4-train", "fsdd-train"]}) + "\n")
    (run / "student" / "log.jsonl").write_text("".join(json.dumps(
        {"step": s, "train_cpu_s": 60.0 * s, "wer": w, "ctc_wer": 40.0}) + "\n" for s, w in ((0, 100.0), (10, 30.0))))
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "tokenizer.model").write_text("the old model's")
    argv = ["--exp", str(run / "student"), "--model", str(model_dir), "--dest", str(dest), "--dtype", "int8",
            "--hardware", HARDWARE, "--recipe-command", "recipes/distil/train.sh",
            "--decoding", '{"method": "attention", "attention": {"beam_size": 1}}']
    assert ship.main(argv) == 0
    assert sorted(p.name for p in dest.iterdir()) == ["MODEL_CARD.md", "config.json", "ctc_tokenizer.model",
                                                      "model.safetensors", "tokenizer.tiktoken"]
    card = (dest / "MODEL_CARD.md").read_text()
    assert "distilled from Whisper base" in card and "| `an4/train.tsv` | 3 |" in card and "39.99 |" in card
    assert "WER 30.00 %" in card and "0.8 x cross-entropy to the teacher's distributions" in card
    assert "learnt from their human transcripts alone (`--human`): fsdd/train.tsv." in card
    r = Recognizer.from_dir(dest)
    assert r.ctc_tokenizer.vocab_size == 256 and r.tokenizer.to_config()["pruned"]
