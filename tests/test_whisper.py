"""Whisper models in use: tokenizer ids against openai-whisper, imported models in the recogniser, the CLI,
the demo and the trainer, and checkpoint downloads (`importers/whisper.py`).

No download of real weights: each model is built by openai-whisper's own code with random weights, saved as
a `.pt` checkpoint and converted (conftest.converted; the conversion itself is tested in test_whisper_convert).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import http.server
import json
import threading

import numpy as np
import pytest
import torch

whisper = pytest.importorskip("whisper", reason="openai-whisper is in the test extra: pip install -e '.[test]'")
from whisper.model import ModelDimensions, Whisper  # noqa: E402

from conftest import VOCABS, converted  # noqa: E402
from speech_transformer.audio.loading import SAMPLE_RATE  # noqa: E402
from speech_transformer.model.checkpoint import CheckpointError, load_model  # noqa: E402
from speech_transformer.training.data import read_manifest  # noqa: E402
from speech_transformer.decoding.options import DecodingOptions  # noqa: E402
from speech_transformer.recognition.recognizer import Recognizer  # noqa: E402
from speech_transformer.importers.whisper import download_checkpoint, resolve  # noqa: E402
from speech_transformer.importers.whisper_convert import import_whisper  # noqa: E402
from speech_transformer.text.tokenizer import WhisperTokenizer  # noqa: E402


@pytest.mark.parametrize("multilingual", [False, True])
def test_tokenizer_ids_match_openai_whisper(multilingual):
    from whisper.tokenizer import get_tokenizer

    theirs = get_tokenizer(multilingual, language="en" if multilingual else None, task="transcribe")
    from speech_transformer.importers.whisper_convert import packaged_vocabulary

    ours = WhisperTokenizer(packaged_vocabulary(multilingual), multilingual)
    for text in ["And so, my fellow Americans: ask not what your country can do for you.",
                 " He hoped there would be stew for dinner, turnips and carrots (and 42 potatoes)!",
                 "It's 3:30 p.m. — don't they'll we've"]:
        ids = ours.encode(text)
        assert ids == theirs.encode(text)
        assert ours.decode(ids) == text == theirs.decode(ids)
    assert ours.special.prompt == tuple(theirs.sot_sequence_including_notimestamps)
    assert ours.special.eos == theirs.eot
    assert ours.vocab_size == theirs.encoding.n_vocab
    assert ours.special_ids["<|0.00|>"] == theirs.timestamp_begin
    assert ours.id_to_piece(ours.encode(" Americans")[0]).startswith("▁")
    if multilingual:
        german = WhisperTokenizer(packaged_vocabulary(True), True, language="de", task="translate")
        assert german.special.prompt == tuple(get_tokenizer(True, language="de", task="translate")
                                              .sot_sequence_including_notimestamps)
        with pytest.raises(ValueError, match="unsupported language"):
            WhisperTokenizer(packaged_vocabulary(True), True, language="klingon")


def test_recognizer_and_beam_search_run_on_an_imported_model(root, speech):
    _, _, directory = converted("tiny", "en", root)
    recognizer = Recognizer.from_dir(directory)
    greedy = recognizer.recognize(speech, DecodingOptions(beam_size=1, ctc_weight=0.0, max_length=20))
    beam1 = recognizer.recognize(speech, DecodingOptions(beam_size=1, ctc_weight=0.3, max_length=20))  # no CTC head
    beam3 = recognizer.recognize(speech, DecodingOptions(beam_size=3, ctc_weight=0.3, max_length=20))
    assert [r.tokens for r in beam1] == [r.tokens for r in greedy]
    assert all(len(r.tokens) <= 20 and r.score <= 0 for r in beam3)
    assert all(t < recognizer.tokenizer.special.eos for r in beam3 + greedy for t in r.tokens)
    with pytest.raises(ValueError, match="no CTC head"):
        recognizer.recognize(speech[:1], DecodingOptions(method="ctc"))
    with pytest.raises(ValueError, match="at most 30 s"):
        recognizer.recognize([np.zeros(31 * SAMPLE_RATE, dtype=np.float32)])


def test_transcribe_cli_runs_a_whisper_model_with_vad_chunking(root, data_dir, tmp_path):
    from speech_transformer.apps import transcribe_cli as transcribe

    _, checkpoint, _ = converted("tiny", "en", root)
    sample = data_dir / "samples" / "jfk.flac"
    env_cache = tmp_path / "cache"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPEECH_TRANSFORMER_CACHE", str(env_cache))
        code = transcribe.main([str(sample), "-o", str(tmp_path / "out"), "--format", "json",
                                "--model", f"whisper:{checkpoint}", "--temperatures", "0"])  # random weights: unsure
        assert code == 0
        first = resolve(str(checkpoint))
        assert resolve(str(checkpoint)) == first and first.parent.parent == env_cache  # converted once, cached
    result = json.loads(next((tmp_path / "out").glob("*.json")).read_text())
    assert result["segments"], result
    words = [w for s in result["segments"] for w in s["words"]]
    assert all(s["start"] <= w["start"] <= w["end"] <= s["end"] for s in result["segments"] for w in s["words"])
    assert words


def test_download_checks_the_sha256_in_the_url(tmp_path):
    payload = b"pretend checkpoint bytes" * 1000
    digest = hashlib.sha256(payload).hexdigest()
    served = tmp_path / "served" / digest
    served.mkdir(parents=True)
    (served / "tiny.en.pt").write_bytes(payload)
    wrong = tmp_path / "served" / ("0" * 64)
    wrong.mkdir()
    (wrong / "tiny.en.pt").write_bytes(payload)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path / "served"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"
    try:
        got = download_checkpoint(f"{base}/{digest}/tiny.en.pt", tmp_path / "cache" / "tiny.en.pt")
        assert got.read_bytes() == payload
        with pytest.raises(CheckpointError, match="does not match"):
            download_checkpoint(f"{base}/{'0' * 64}/tiny.en.pt", tmp_path / "cache2" / "tiny.en.pt")
        assert not any((tmp_path / "cache2").iterdir())  # nothing partial left behind
        with pytest.raises(ConnectionError, match="cannot download"):
            download_checkpoint(f"{base}/{digest}/missing.pt", tmp_path / "cache3" / "missing.pt")
    finally:
        server.shutdown()


def test_demo_draws_pictures_for_a_whisper_model(root, data_dir):
    from speech_transformer.apps.demo import Demo

    _, _, directory = converted("tiny", "en", root)
    demo = Demo(Recognizer.from_dir(directory))
    text, details, spectrogram, attention = demo.transcribe(str(data_dir / "samples" / "jfk.flac"), beam_size=2)
    assert "beam 2" in details and spectrogram.ndim == attention.ndim == 3
    assert spectrogram.shape[1] == attention.shape[1]  # one time axis for both pictures
    from speech_transformer.apps.demo import model_card

    assert "Whisper features" in model_card(demo.recognizer, directory)


def test_fine_tune_an_imported_model_with_our_trainer(tmp_path, data_dir):
    """`init_from` a converted Whisper model: the trainer learns (loss falls), exports a loadable Whisper-format dir."""
    from speech_transformer.training.data import write_manifest
    from speech_transformer.training.trainer import main as train_main

    dims = ModelDimensions(n_mels=80, n_audio_ctx=1500, n_audio_state=64, n_audio_head=2, n_audio_layer=1,
                           n_vocab=VOCABS["en"], n_text_ctx=448, n_text_state=64, n_text_head=2, n_text_layer=1)
    torch.manual_seed(0)
    small = Whisper(dims)
    with torch.no_grad():
        small.decoder.positional_embedding.normal_(0.0, 0.02)  # torch.empty in openai-whisper
    torch.save({"dims": dataclasses.asdict(dims), "model_state_dict": small.state_dict()}, tmp_path / "small.pt")
    start = import_whisper(tmp_path / "small.pt", tmp_path / "start")
    write_manifest(read_manifest(data_dir / "fsdd" / "train.tsv")[:4], tmp_path / "train.jsonl")
    settings = {"out_dir": tmp_path / "run", "train": f"[{tmp_path / 'train.jsonl'}]", "init_from": start,
                "ctc_weight": 0, "batch_seconds": 30, "max_steps": 12, "warmup_steps": 1, "lr": 0.003,
                "schedule": "constant", "log_every": 1, "save_every": 6, "average_last": 1, "num_workers": 0,
                "progress": "false", "speed_perturb": "[1.0]", "spec_augment": "null", "label_smoothing": 0}
    with pytest.raises(ValueError, match="no CTC head"):
        train_main([f"--set={k}={v}" for k, v in {**settings, "ctc_weight": 0.3}.items()])
    assert train_main([f"--set={k}={v}" for k, v in settings.items()]) == 0
    losses = [m["loss"] for m in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
              if "loss" in m]
    assert len(losses) == 12 and losses[-1] < 0.5 * losses[0], losses
    model, tokenizer, config = load_model(tmp_path / "run" / "model")
    assert config["tokenizer"]["type"] == "whisper" and model.config.frontend == "whisper"
