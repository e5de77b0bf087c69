"""Shared fixtures: the real-speech folder (../shared/data or $SPEECH_TRANSFORMER_DATA) and a tokenizer; and the
fixtures and helpers that several test modules use (they import the helpers: `from conftest import ...`).

Under CI=true nothing may be skipped: a test that would skip for a missing requirement (the data folder,
chromium, a test extra) fails instead, so a broken install cannot pass as a green run with few tests.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchaudio.functional as AF
from safetensors.torch import load_file

STRICT = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if STRICT and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, where every requirement must be installed: {reason}"

from speech_transformer.audio.loading import SAMPLE_RATE, load_audio
from speech_transformer.importers.whisper_convert import import_whisper
from speech_transformer.text.normalize import normalize_transcript
from speech_transformer.text.tokenizer import train_tokenizer
from speech_transformer.training.data import DATA_DIR_ENV, default_data_dir, read_manifest, write_manifest


def tiny_model(vocab_size: int = 64, seed: int = 0):
    """A small untrained model (2 encoder and 2 decoder blocks), in eval mode."""
    from speech_transformer.model.transformer import SpeechTransformer, preset

    torch.manual_seed(seed)
    return SpeechTransformer(preset("tiny", vocab_size=vocab_size, encoder_layers=2, decoder_layers=2)).eval()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = default_data_dir()
    if not (path / "README.md").is_file():
        pytest.skip(f"real speech data not found at {path} (set ${DATA_DIR_ENV} to the shared data folder)")
    return path


@pytest.fixture(scope="session")
def librispeech_train(data_dir):
    return read_manifest(data_dir / "librispeech" / "train.tsv")


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory, librispeech_train):
    """A 256-token unigram SentencePiece model trained on the LibriSpeech train transcripts."""
    return train_tokenizer([u.text for u in librispeech_train], tmp_path_factory.mktemp("tok") / "sp.model", 256)


def train_overfit_model(tokenizer, utterances, directory: Path, max_steps: int = 300) -> Path:
    """Train a tiny model on a few real utterances until beam search, greedy attention decoding and CTC
    greedy decoding all spell them exactly; save it as a model directory.

    This is the learning test of the whole stack (tokenizer, features, model, joint loss, decoding), and
    the model that the transcription and demo tests run on.
    """
    import torch

    from speech_transformer.audio.loading import load_audio
    from speech_transformer.model.checkpoint import save_model
    from speech_transformer.decoding.options import DecodingOptions
    from speech_transformer.audio.features import pad_waveforms
    from speech_transformer.model.transformer import SpeechTransformer, preset
    from speech_transformer.recognition.recognizer import Recognizer

    waves = [load_audio(u.audio) for u in utterances]
    expected = [u.text for u in utterances]
    torch.manual_seed(0)
    model = SpeechTransformer(preset("tiny", vocab_size=tokenizer.vocab_size, d_model=144, d_ff=576,
                                     encoder_layers=4, decoder_layers=2, dropout=0.0))
    model.frontend.fit_global_stats(waves)
    with torch.no_grad():
        feats, feat_lengths = model.frontend(*pad_waveforms(waves))
    ids = [tokenizer.encode(t) for t in expected]
    targets = torch.zeros(len(ids), max(map(len, ids)), dtype=torch.long)
    for i, x in enumerate(ids):
        targets[i, : len(x)] = torch.tensor(x)
    target_lengths = torch.tensor([len(x) for x in ids])
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    recognizer = Recognizer(model, tokenizer)
    searches = [DecodingOptions(beam_size=3, ctc_weight=0.3), DecodingOptions(beam_size=1, ctc_weight=0.0),
                DecodingOptions(method="ctc")]
    outputs: list[list[str]] = []
    for step in range(1, max_steps + 1):
        model.train()
        for group in optimizer.param_groups:
            group["lr"] = 2e-3 * min(1.0, step / 30)
        loss = model(feats, feat_lengths, targets, target_lengths, ctc_weight=0.3, label_smoothing=0.0)
        optimizer.zero_grad()
        loss.total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        if step >= 50 and step % 25 == 0:
            outputs = [[r.text for r in recognizer.recognize(waves, o)] for o in searches]
            if all(out == expected for out in outputs):
                break
    assert all(out == expected for out in outputs), f"after {step} steps: {outputs} != {expected}"
    info = {"preset": "tiny (test)", "train": ["the 5 shortest utterances of librispeech/train.tsv"],
            "steps": step}
    directory = save_model(model.eval(), tokenizer, directory, info)
    (directory / "MODEL_CARD.md").write_text("# Tiny test model\n\nOverfits five training clips; for tests only.\n")
    return directory


@pytest.fixture(scope="session")
def overfit_clips(librispeech_train):
    """The five shortest LibriSpeech training utterances."""
    return sorted(librispeech_train, key=lambda u: u.duration)[:5]


@pytest.fixture(scope="session")
def overfit_model_dir(tmp_path_factory, tokenizer, overfit_clips) -> Path:
    """A tiny model directory that transcribes `overfit_clips` exactly (trained once per test session)."""
    return train_overfit_model(tokenizer, overfit_clips, tmp_path_factory.mktemp("overfit") / "model")


@pytest.fixture(scope="session")
def fsdd(data_dir):
    """One FSDD training clip of every digit from jackson and one from lucas: speakers whose training clips
    the shipped model never mishears with the digit grammar (0 of 150 each, every third clip), so a miss
    here is a matching bug. The model's accuracy is measured by bench/commands.py."""
    rows = read_manifest(data_dir / "fsdd" / "train.tsv")
    out = []
    for digit in "ZERO ONE TWO THREE FOUR FIVE SIX SEVEN EIGHT NINE".split():
        for speaker in ("jackson", "lucas"):
            out.append(next(u for u in rows if u.text == digit and f"_{speaker}_" in str(u.audio)))
    return out


@pytest.fixture(scope="module")
def whisper_base(tmp_path_factory):
    """The real Whisper base weights that the test extra installs, as a Recognizer."""
    from speech_transformer.recognition.recognizer import Recognizer
    from speech_transformer.importers.whisper import resolve

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPEECH_TRANSFORMER_CACHE", str(tmp_path_factory.mktemp("cache")))
        return Recognizer.from_dir(resolve("base"))


# --- the overfit model and its clips; subtitle parsers (test_transcribe, test_transcribe_cli) -------------

@pytest.fixture(scope="module")
def clips(overfit_clips):
    """The five shortest training utterances: (16 kHz waveform, transcript)."""
    return [(load_audio(u.audio), u.text) for u in overfit_clips]


@pytest.fixture(scope="module")
def model_dir(overfit_model_dir):
    """A tiny model that reproduces the five clips exactly (beam, greedy attention and CTC)."""
    return overfit_model_dir


def resampled(wave: np.ndarray, rate: int) -> np.ndarray:
    return AF.resample(torch.from_numpy(wave), SAMPLE_RATE, rate).numpy()


SRT_TIME = re.compile(r"^(\d{2}):([0-5]\d):([0-5]\d),(\d{3}) --> (\d{2}):([0-5]\d):([0-5]\d),(\d{3})$")
VTT_TIME = re.compile(r"^(\d{2}):([0-5]\d):([0-5]\d)\.(\d{3}) --> (\d{2}):([0-5]\d):([0-5]\d)\.(\d{3})$")


def _seconds(g: tuple[str, ...]) -> float:
    return int(g[0]) * 3600 + int(g[1]) * 60 + int(g[2]) + int(g[3]) / 1000


def _cues(blocks: list[list[str]], pattern: re.Pattern, numbered: bool) -> list[tuple[float, float, str]]:
    out, previous_end = [], 0.0
    for n, lines in enumerate(blocks, 1):
        if numbered:
            assert lines[0] == str(n), f"cue {n}: bad index line {lines[0]!r}"
            lines = lines[1:]
        m = pattern.match(lines[0])
        assert m, f"cue {n}: bad timing line {lines[0]!r}"
        start, end = _seconds(m.groups()[:4]), _seconds(m.groups()[4:])
        assert previous_end <= start < end, f"cue {n}: times {start}..{end} after {previous_end}"
        text = lines[1:]
        assert text and all(line.strip() for line in text), f"cue {n}: no text"
        out.append((start, end, " ".join(text)))
        previous_end = end
    return out


def _blocks(body: str) -> list[list[str]]:
    assert "\r" not in body
    if not body:
        return []
    assert body.endswith("\n\n") and "\n\n\n" not in body, "cues must be separated by exactly one blank line"
    return [b.split("\n") for b in body[:-2].split("\n\n")]


def parse_srt(text: str) -> list[tuple[float, float, str]]:
    return _cues(_blocks(text), SRT_TIME, numbered=True)


def parse_vtt(text: str) -> list[tuple[float, float, str]]:
    assert text.startswith("WEBVTT\n\n"), "missing WEBVTT header"
    return _cues(_blocks(text[len("WEBVTT\n\n"):]), VTT_TIME, numbered=False)


# --- training runs in real processes (test_trainer, test_checkpoints) ---------------------------------

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


# --- random-weight openai-whisper models, converted (test_whisper, test_whisper_convert) ------------------

# (d_model, heads, layers): Whisper tiny and base; vocabularies: English-only and multilingual
SIZES = {"tiny": (384, 6, 4), "base": (512, 8, 6)}
VOCABS = {"en": 51864, "multilingual": 51865}


def random_whisper(size: str, vocab: str, seed: int = 0) -> Whisper:
    """openai-whisper's model class with random weights spread enough that argmax decisions are clear."""
    from whisper.model import ModelDimensions, Whisper

    d, heads, layers = SIZES[size]
    dims = ModelDimensions(n_mels=80, n_audio_ctx=1500, n_audio_state=d, n_audio_head=heads, n_audio_layer=layers,
                           n_vocab=VOCABS[vocab], n_text_ctx=448, n_text_state=d, n_text_head=heads,
                           n_text_layer=layers)
    torch.manual_seed(seed)
    model = Whisper(dims)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:  # layer-norm gains near 1, biases near 0
                p.normal_(1.0 if "ln" in name.rsplit(".", 2)[-2] and name.endswith("weight") else 0.0, 0.1)
            else:
                p.normal_(0.0, 2.0 / (p.shape[1] * p[0, 0].numel()) ** 0.5)
    return model.eval()


@functools.cache
def converted(size: str, vocab: str, root: str) -> tuple[Whisper, Path, Path]:
    model = random_whisper(size, vocab)
    checkpoint = Path(root) / f"{size}.{vocab}.pt"
    torch.save({"dims": dataclasses.asdict(model.dims), "model_state_dict": model.state_dict()}, checkpoint)
    return model, checkpoint, import_whisper(checkpoint, Path(root) / f"{size}.{vocab}")


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("whisper"))


@pytest.fixture(scope="module")
def speech(data_dir) -> list[np.ndarray]:
    """Three real utterances of different lengths: jfk (11 s) and two LibriSpeech dev ones."""
    dev = read_manifest(data_dir / "librispeech" / "dev.tsv")[:2]
    return [load_audio(data_dir / "samples" / "jfk.flac")] + [load_audio(u.audio) for u in dev]


def two_vocabulary_model(tmp_path: Path, root: str) -> tuple[Path, Path, Path]:
    """A distilled student over a random tiny Whisper (4 blocks a side, d=384): `student` makes the "v3" on its
    encoder with our CTC head, `distilled_student` the model with both vocabularies. Returns (teacher dir,
    top dir, the saved student dir)."""
    from speech_transformer.model.checkpoint import model_ctc_tokenizer, model_tokenizer, save_model
    from speech_transformer.pretrained import default_model_dir
    from speech_transformer.training.student import distilled_student, student

    _, checkpoint, teacher = converted("tiny", "multilingual", root)
    ours = model_ctc_tokenizer(default_model_dir())
    student(str(checkpoint), ours, tmp_path / "top", encoder_layers=4)
    keep = model_tokenizer(teacher).encode(" And so, my fellow Americans, ask not what your country can do for you.")
    model, vocab, _ = distilled_student(teacher, tmp_path / "top", keep, tmp_path / "v.tiktoken", 3, (0, 3))
    return teacher, tmp_path / "top", save_model(model, vocab, tmp_path / "distilled", ctc_tokenizer=ours)
