"""The shipped model's regression check: WER on a small fixed set of real clips, against a stored bound.

`recipes/default/ship.py --regression` measures the shipped copy and writes `regression.json` beside
it; `tests/test_pretrained.py` measures again and fails when a set's WER exceeds its bound. The clips
are never trained on: `samples/` (JFK, and four LibriSpeech test-clean utterances) and the first
utterances of the AN4 test split, from the shared data folder (`speech_transformer.training.data.default_data_dir`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from speech_transformer.audio.loading import load_audio
from speech_transformer.training.data import Utterance, read_manifest
from speech_transformer.decoding.options import DecodingOptions
from speech_transformer.text.scoring import DEFAULT_NORMALIZER, score_utterances

REGRESSION_FILE = "regression.json"
AN4_UTTERANCES = 20
DEFAULT_MARGIN = 0.03  # absolute WER added to the measurement to give the bound


def regression_sets(data_dir: str | os.PathLike) -> dict[str, list[Utterance]]:
    """Set name -> utterances: the samples (JFK + LibriSpeech test-clean) and the first AN4 test clips."""
    data_dir = Path(data_dir)
    samples = read_manifest(data_dir / "samples" / "samples.tsv")
    samples += read_manifest(data_dir / "librispeech" / "samples" / "samples.tsv")
    an4 = read_manifest(data_dir / "an4" / "test.tsv")[:AN4_UTTERANCES]
    return {"samples": samples, f"an4-test-first{AN4_UTTERANCES}": an4}


def measure(recognizer, data_dir: str | os.PathLike, decoding: dict | None = None) -> dict[str, dict]:
    """Set name -> {wer, n_utts, n_words, errors, hyps} of `recognizer` (a `Recognizer`) on `regression_sets`,
    with `decoding` (a stored `DecodingOptions.to_dict()`; default: the recognizer's preferred decoding)."""
    options = recognizer.options if decoding is None else DecodingOptions.from_dict(decoding)
    out = {}
    for name, utterances in regression_sets(data_dir).items():
        hyps = [r.text for r in recognizer.recognize([load_audio(u.audio) for u in utterances], options)]
        score = score_utterances([u.text for u in utterances], hyps, DEFAULT_NORMALIZER)
        out[name] = {"wer": score.wer, "n_utts": score.n_utts, "n_words": score.n_words, "errors": score.errors,
                     "hyps": hyps}
    return out


def write(directory: str | os.PathLike, measured: dict[str, dict], decoding: DecodingOptions,
          margin: float = DEFAULT_MARGIN) -> Path:
    """`regression.json`: per set the measured WER and the bound (measured + margin), and the decoding used."""
    record = {"normalizer": DEFAULT_NORMALIZER, "decoding": decoding.to_dict(), "margin": margin,
              "sets": {name: {"wer": m["wer"], "max_wer": m["wer"] + margin, "n_utts": m["n_utts"],
                              "n_words": m["n_words"], "hyps": m["hyps"]} for name, m in measured.items()}}
    path = Path(directory) / REGRESSION_FILE
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def read(directory: str | os.PathLike) -> dict:
    """The stored regression record of a model directory; FileNotFoundError when there is none."""
    path = Path(directory) / REGRESSION_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: ship the model with recipes/default/ship.py --regression")
    return json.loads(path.read_text())
