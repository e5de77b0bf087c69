"""Tests of speech_transformer/audio/sources.py: streaming audio blocks, cutting chunks, expanding inputs."""

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from speech_transformer.apps import writers as subtitles
from speech_transformer.apps.transcribe_cli import main
from speech_transformer.audio.loading import SAMPLE_RATE, AudioError, load_audio
from speech_transformer.audio.sources import FileSource, cut_chunks, expand_inputs, output_stems
from speech_transformer.audio.vad import SpeechChunk


def test_file_source_streams_what_load_audio_decodes(data_dir, tmp_path):
    for path in [data_dir / "samples/jfk.flac", data_dir / "ljspeech/clips/LJ001-0001.opus",
                 data_dir / "fsdd/recordings/0_george_0.flac"]:
        whole = load_audio(path)
        streamed = list(FileSource(path, block_seconds=0.077).blocks())
        assert len(streamed) > 3
        joined = np.concatenate(streamed)
        assert len(joined) == len(whole) and np.abs(joined - whole).max() < 1e-4, path
        n = len(whole)
        chunks = [SpeechChunk(10, n // 5, 0.5), SpeechChunk(n // 5, n // 2, 1.0), SpeechChunk(n * 3 // 5, n - 5, 1.0)]
        got = dict(cut_chunks(FileSource(path, block_seconds=0.05).blocks(), chunks))
        for k, c in enumerate(chunks):
            assert len(got[k]) == c.end - c.start and np.abs(got[k] - joined[c.start:c.end]).max() < 1e-5
    truncated = tmp_path / "cut.wav"
    sf.write(truncated, np.zeros(16000, np.float32), SAMPLE_RATE, subtype="PCM_16")
    truncated.write_bytes(truncated.read_bytes()[:20000])
    with pytest.raises(AudioError, match="truncated"):
        FileSource(truncated)


def test_inputs_folders_globs_manifests_and_output_names(tmp_path):
    (tmp_path / "in" / "sub").mkdir(parents=True)
    for name in ["a.wav", "a.flac", "b.mp3", "notes.txt", "sub/a.wav"]:
        (tmp_path / "in" / name).write_bytes(b"x")
    (tmp_path / "list.tsv").write_text("audio\tduration_s\ttext\nin/b.mp3\t1.0\tX\nin/sub/a.wav\t1.0\tY\n")
    files, problems = expand_inputs([str(tmp_path / "in")])
    assert [f.rel.as_posix() for f in files] == ["a.flac", "a.wav", "b.mp3"] and not problems
    files, _ = expand_inputs([str(tmp_path / "in")], recursive=True)
    assert [f.rel.as_posix() for f in files] == ["a.flac", "a.wav", "b.mp3", "sub/a.wav"]
    stems = output_stems(files, Path("OUT"))
    assert [s.as_posix() for s in stems] == ["OUT/a.flac", "OUT/a.wav", "OUT/b", "OUT/sub/a"]
    files, problems = expand_inputs([str(tmp_path / "in" / "*.wav"), str(tmp_path / "list.tsv"),
                                     str(tmp_path / "in" / "*.ogg"), str(tmp_path / "missing.wav")])
    assert [f.rel.as_posix() for f in files] == ["a.wav", "in/b.mp3", "in/sub/a.wav", "missing.wav"]
    assert problems == [(str(tmp_path / "in" / "*.ogg"), "no files match this pattern")]
    assert subtitles.parse_formats("srt, TXT") == ["txt", "srt"] and len(subtitles.parse_formats("all")) == 5
    with pytest.raises(ValueError):
        subtitles.parse_formats("docx")
    assert main([str(tmp_path), "--format", "docx"]) == 2
