"""Manifests: TSV, JSONL and LibriSpeech-layout folders read into utterances, JSONL written back."""

import json

import pytest

from speech_transformer.audio.manifests import Utterance, read_manifest, write_manifest


def test_manifest_round_trip(tmp_path, data_dir):
    utts = read_manifest(data_dir / "an4" / "test.tsv")[:5]
    write_manifest(utts, tmp_path / "m.jsonl")
    assert read_manifest(tmp_path / "m.jsonl") == utts
    lines = (tmp_path / "m.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["audio"] == utts[0].audio
    (tmp_path / "bad.jsonl").write_text('{"audio": "x.wav"}\n{broken\n')
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        read_manifest(tmp_path / "bad.jsonl")
    ls = read_manifest(data_dir / "librispeech" / "LibriSpeech" / "train-clean-5" / "1088")
    assert ls and all(isinstance(u, Utterance) and u.speaker == "1088" for u in ls)
    (tmp_path / "audio_only.tsv").write_text("audio\nclips/a.flac\n")
    with pytest.raises(ValueError, match="lacks column"):
        read_manifest(tmp_path / "audio_only.tsv")
    only = read_manifest(tmp_path / "audio_only.tsv", require_text=False)
    assert only[0].audio == str(tmp_path / "clips" / "a.flac") and only[0].text == ""
