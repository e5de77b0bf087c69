"""Shared fixtures: the real-speech folder (../shared/data or $SPEECH_TRANSFORMER_DATA) and a tokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest

from speech_transformer.data import DATA_DIR_ENV, default_data_dir, read_manifest


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
    from speech_transformer.tokenizer import train_tokenizer

    return train_tokenizer([u.text for u in librispeech_train], tmp_path_factory.mktemp("tok") / "sp.model", 256)
