"""Batch transcription: messy folders, kill + resume, long input timestamps, subtitles, torchrun sharding.

A tiny model overfits five short real LibriSpeech utterances (module fixture, ~10 s), so the
tests can check exact words where the audio is one of those clips, and structure elsewhere.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio.functional as AF

from speech_transformer.apps import writers as subtitles
from speech_transformer.audio.loading import SAMPLE_RATE, AudioError, load_audio
from speech_transformer.audio.sources import FileSource, cut_chunks, expand_inputs, output_stems
from speech_transformer.apps.writers import Transcript
from speech_transformer.apps.transcribe import Transcriber, transcribe
from speech_transformer.apps.transcribe_cli import main
from speech_transformer.audio.vad import SpeechChunk

ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


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


# --- strict subtitle parsers ----------------------------------------------------------------

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


def check_outputs(stem: Path) -> dict:
    """All five outputs of one input exist, parse, and agree with each other."""
    t = json.loads(subtitles.output_path(stem, "json").read_text())
    srt = parse_srt(subtitles.output_path(stem, "srt").read_text())
    vtt = parse_vtt(subtitles.output_path(stem, "vtt").read_text())
    assert [c[2] for c in srt] == [c[2] for c in vtt]
    assert " ".join(c[2] for c in srt) == t["text"]
    txt = subtitles.output_path(stem, "txt").read_text()
    assert txt == "".join(s["text"] + "\n" for s in t["segments"])
    tsv = subtitles.output_path(stem, "tsv").read_text().splitlines()
    assert tsv[0] == "start\tend\ttext" and len(tsv) == len(t["segments"]) + 1
    return t


# --- tests ------------------------------------------------------------------------------------

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


def test_messy_folder(tmp_path, model_dir, clips, capsys):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    (w0, t0), (w1, t1), (w2, _), (w3, _), (w4, _) = clips
    sf.write(src / "clip0.wav", w0, SAMPLE_RATE, subtype="PCM_16")
    sf.write(src / "sub" / "clip1.flac", w1, SAMPLE_RATE)
    sf.write(src / "clip2.mp3", w2, SAMPLE_RATE, format="MP3")
    sf.write(src / "clip3.ogg", w3, SAMPLE_RATE, format="OGG", subtype="VORBIS")
    sf.write(src / "clip4_8k.flac", resampled(w4, 8000), 8000)
    stereo = resampled(w0, 48000)
    sf.write(src / "clip0_48k_stereo.wav", np.stack([stereo, 0.8 * stereo], axis=1), 48000)
    sf.write(src / "silence.wav", np.zeros(5 * SAMPLE_RATE, np.float32), SAMPLE_RATE, subtype="PCM_16")
    noise = np.random.default_rng(0).normal(size=4 * SAMPLE_RATE).astype(np.float32) * 0.03
    sf.write(src / "noise.flac", noise, SAMPLE_RATE)
    (src / "empty.wav").write_bytes(b"")
    (src / "random.wav").write_bytes(np.random.default_rng(0).bytes(6000))
    (src / "text.flac").write_text("this is not audio\n" * 20)
    out = tmp_path / "out"
    rc = main([str(src), "-o", str(out), "--model", str(model_dir), "--recursive", "--no-progress"])
    report = capsys.readouterr().out
    assert rc == 1
    assert "transcribed 8 file(s) (2 without speech)" in report and "failed 3" in report
    reasons = dict(re.findall(r"failed: (\S+): (.+)", report))
    assert "empty file" in reasons[str(src / "empty.wav")]
    assert "not an audio format we can decode (no known audio header" in reasons[str(src / "random.wav")]
    assert "not an audio format we can decode (looks like text)" in reasons[str(src / "text.flac")]
    texts = {}
    for stem in ["clip0", "sub/clip1", "clip2", "clip3", "clip4_8k", "clip0_48k_stereo", "silence", "noise"]:
        t = check_outputs(out / stem)
        texts[stem] = t["text"]
        for seg in t["segments"]:
            assert 0 <= seg["start"] < seg["end"] <= t["duration"] + 1e-3 and 0 < seg["confidence"] <= 1
    assert texts["clip0"] == t0 and texts["sub/clip1"] == t1  # lossless copies of training clips
    assert all(texts[s] for s in ["clip2", "clip3", "clip4_8k", "clip0_48k_stereo"])
    assert texts["silence"] == texts["noise"] == "" and (out / "silence.txt").read_text() == ""
    assert not any(out.glob("empty*")) and not any(out.glob("random*")) and not any(out.glob("text*"))


def _make_inputs(folder: Path, clips, n: int) -> None:
    folder.mkdir()
    for i in range(n):
        wave, _ = clips[i % len(clips)]
        sf.write(folder / f"f{i:02d}.flac", wave, SAMPLE_RATE)


def test_sigkill_then_resume(tmp_path, model_dir, clips):
    src, out = tmp_path / "in", tmp_path / "out"
    _make_inputs(src, clips, 16)
    cmd = [sys.executable, "-m", "speech_transformer.apps.transcribe_cli", str(src), "-o", str(out), "--model", str(model_dir),
           "--batch-seconds", "0", "--no-progress"]
    p = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while len(list(out.glob("*.json"))) < 3 and p.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert p.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    done = sorted(j.with_suffix("") for j in out.glob("*.json"))
    assert 3 <= len(done) < 16
    for f in out.iterdir():  # whatever has a final name is whole
        if not f.name.startswith("."):
            assert f.suffix in (".txt", ".json", ".srt", ".vtt", ".tsv")
            if f.suffix == ".json":
                assert json.loads(f.read_text())["segments"]
            elif f.suffix == ".srt":
                assert parse_srt(f.read_text())
    stamps = {f: f.stat().st_mtime_ns for stem in done for f in out.glob(stem.name + ".*")}
    assert len(stamps) == 5 * len(done)  # json is written last: its presence means all five are there

    again = subprocess.run(cmd + ["--resume"], env=ENV, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"transcribed {16 - len(done)} file(s)" in again.stdout
    assert f"skipped {len(done)} already done" in again.stdout
    assert all(f.stat().st_mtime_ns == t for f, t in stamps.items()), "finished outputs were redone"
    assert sorted(f.name for f in out.iterdir()) == sorted(f"f{i:02d}.{x}" for i in range(16)
                                                          for x in ("txt", "json", "srt", "vtt", "tsv"))
    for i in range(16):
        assert check_outputs(out / f"f{i:02d}")["text"] == clips[i % len(clips)][1]


def _trim(wave: np.ndarray) -> np.ndarray:
    """Cut a clip's leading and trailing silence by frame energy (independently of the VAD under test)."""
    frames = wave[: len(wave) // 160 * 160].reshape(-1, 160)
    energy = 10 * np.log10((frames ** 2).mean(axis=1) + 1e-10)
    loud = np.nonzero(energy > energy.max() - 35)[0]
    return wave[loud[0] * 160:(loud[-1] + 1) * 160]


def test_long_input_timestamps_follow_the_clips(tmp_path, model_dir, clips, monkeypatch):
    rng = np.random.default_rng(1)
    pieces, bounds, texts, t = [], [], [], 0
    for k in range(60):  # ~4 minutes: 60 clips with 1-2.5 s pauses of faint noise between them
        pause = (rng.normal(size=int(rng.uniform(1.0, 2.5) * SAMPLE_RATE)) * 1e-3).astype(np.float32)
        wave, text = clips[k % len(clips)]
        speech = _trim(wave)
        pieces += [pause, speech]
        t += len(pause)
        bounds.append((t / SAMPLE_RATE, (t + len(speech)) / SAMPLE_RATE))
        texts.append(text)
        t += len(speech)
    pieces.append(np.zeros(SAMPLE_RATE, np.float32))
    path = tmp_path / "long.flac"
    sf.write(path, np.concatenate(pieces), SAMPLE_RATE)
    assert sf.info(path).duration > 180

    # memory stays bounded: the chunk pool and each padded batch never exceed their budgets
    pools, batches = [], []
    flush, decode_chunks = Transcriber._flush, Transcriber.decode_chunks

    def spy_flush(self, pool, pending):
        pools.append(sum(len(p.audio) for p in pool) / SAMPLE_RATE)
        return flush(self, pool, pending)

    def spy_decode(self, waves, chunks):
        batches.append((len(waves), len(waves) * max(map(len, waves)) / SAMPLE_RATE))
        return decode_chunks(self, waves, chunks)

    monkeypatch.setattr(Transcriber, "_flush", spy_flush)
    monkeypatch.setattr(Transcriber, "decode_chunks", spy_decode)
    result = transcribe(str(model_dir), str(path), block_seconds=13.7, batch_seconds=12.0, pool_seconds=20.0)
    assert len(pools) >= 5 and max(pools) < 20.0 + 20.0  # at most one chunk past the pool budget
    assert all(n == 1 or padded <= 12.0 for n, padded in batches) and max(n for n, _ in batches) > 1
    assert isinstance(result, Transcript) and result.ok
    segs = result.segments
    assert len(segs) == len(bounds)
    previous = 0.0
    for seg, (start, end), text in zip(segs, bounds, texts):
        assert previous <= seg.start < seg.end
        assert abs(seg.start - start) <= 0.5 and abs(seg.end - end) <= 0.5, (seg.start, seg.end, start, end)
        previous = seg.end
        assert seg.words and " ".join(w.word for w in seg.words) == seg.text
        assert all(seg.start <= w.start <= w.end <= seg.end for w in seg.words)
        assert all(a.end <= b.start + 1e-6 for a, b in zip(seg.words, seg.words[1:]))
        assert seg.words[0].start >= start - 0.5 and seg.words[-1].end <= end + 0.5
    assert sum(s.text == t for s, t in zip(segs, texts)) >= 0.9 * len(texts)
    srt = parse_srt(subtitles.to_srt(result))
    assert len(srt) >= len(segs) and " ".join(c[2] for c in srt) == result.text
    assert len(parse_vtt(subtitles.to_vtt(result))) == len(srt)


def test_python_api_inputs_and_failures(model_dir, clips, data_dir, tmp_path):
    wave, text = clips[0]
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF....WAVEjunk")
    results = transcribe(str(model_dir), [wave, str(bad), (8000, resampled(wave, 8000)), np.zeros(SAMPLE_RATE * 3)])
    assert [r.ok for r in results] == [True, False, True, True]
    assert results[0].text == text and results[0].segments[0].words
    assert "not a readable audio file" in results[1].error
    assert results[2].text and results[3].segments == [] and results[3].duration == 3.0
    ctc = transcribe(str(model_dir), wave, method="ctc", threshold=0.6, max_chunk_seconds=5.0)
    assert ctc.text and all(w.confidence is not None for s in ctc.segments for w in s.words)
    with pytest.raises(AudioError):
        transcribe(str(model_dir), str(bad))
    with pytest.raises(TypeError):
        transcribe(str(model_dir), wave, no_such_option=1)


def test_torchrun_shards_inputs(tmp_path, model_dir, clips):
    src, out = tmp_path / "in", tmp_path / "out"
    _make_inputs(src, clips, 7)
    (src / "broken.wav").write_bytes(b"")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--master-addr=127.0.0.1",
           f"--master-port={port}", "-m", "speech_transformer.apps.transcribe_cli", str(src), "-o", str(out),
           "--model", str(model_dir), "--format", "json,srt", "--resume", "--no-progress"]
    (out).mkdir()
    stems = sorted(f.stem for f in src.iterdir())  # the order both ranks shard by: broken, f00..f06
    pre = out / "f06.json"  # done by an earlier run: skipped by its rank
    pre.write_text("{}")
    (out / "f06.srt").write_text("")
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0, r.stdout + r.stderr
    assert "transcribed 6 file(s)" in r.stdout and "skipped 1 already done" in r.stdout and "failed 1" in r.stdout
    assert r.stdout.count("transcribed") == 1  # one summary, gathered on rank 0
    assert pre.read_text() == "{}"
    for i in range(6):
        assert json.loads((out / f"f{i:02d}.json").read_text())["text"] == clips[i % len(clips)][1]
        parse_srt((out / f"f{i:02d}.srt").read_text())
    assert stems[0] == "broken" and not list(out.glob("broken*"))


def test_no_speech_is_dropped_on_jfk(data_dir):
    """The shipped model's preferred decoding gives words for the first VAD chunk (0.15-2.44 s): they are kept."""
    from speech_transformer.recognition.recognizer import Recognizer

    recognizer = Recognizer.from_dir(None)
    t = transcribe(recognizer, str(data_dir / "samples" / "jfk.flac"))
    assert len(t.segments) == 3 and all(s.text for s in t.segments)
    assert t.segments[0].start < 0.5 and t.segments[0].words and t.segments[0].words[0].start < 0.5
    single = recognizer.recognize([load_audio(str(data_dir / "samples" / "jfk.flac"))[:int(2.44 * SAMPLE_RATE)]])
    assert single[0].text  # the same decoding of that stretch alone also hears words


def test_decoding_flags_change_one_field_of_the_models_preferred_decoding():
    from speech_transformer.decoding.options import DecodingOptions
    from speech_transformer.apps.transcribe import TranscribeOptions
    from speech_transformer.apps.transcribe_cli import _parser

    preferred = DecodingOptions(beam_size=4, ctc_weight=0.3)
    assert TranscribeOptions().decoding(preferred) == preferred
    assert TranscribeOptions.from_kwargs(beam_size=2).decoding(preferred) == DecodingOptions(beam_size=2, ctc_weight=0.3)
    assert TranscribeOptions.from_kwargs(method="ctc", ctc_weight=None).decoding(preferred).method == "ctc"
    text = " ".join(_parser().format_help().split())
    assert "preferred decoding" in text and "beam 4, CTC weight 0.3" in text
    for flag in ("--batch-seconds", "--max-chunk-seconds", "--vad-threshold", "--format", "--model", "--device"):
        assert flag in text
    assert text.count("(default:") >= 8


def test_lexicon_decoding_through_transcribe_and_the_demo(data_dir, tmp_path):
    """method="lexicon" is one more decoding of the one path: the CLI's flags and the demo's control reach it."""
    import dataclasses

    from speech_transformer.decoding.arpa import read_corpus, write_arpa
    from speech_transformer.decoding.word_lm import build_kneser_ney
    from speech_transformer.apps.demo import Demo
    from speech_transformer.recognition.recognizer import Recognizer

    lm = write_arpa(build_kneser_ney(read_corpus(data_dir / "librispeech" / "train.tsv")[:400], 3), tmp_path / "lm.arpa")
    words = {w for line in lm.read_text().splitlines() if line.count("\t") >= 1 for w in line.split("\t")[1].split()}
    recognizer = Recognizer.from_dir(None)
    clip = str(data_dir / "librispeech" / "samples" / "1089-134686-0000.flac")
    t = transcribe(recognizer, clip, method="lexicon", beam_size=20, lm_weight=0.4, word_score=1.0, word_lm=str(lm))
    said = t.text.lower().split()
    assert said and set(said) <= words  # only words of the lexicon (the LM's vocabulary)
    out = tmp_path / "out"
    assert main([clip, "-o", str(out), "--format", "txt", "--method", "lexicon", "--beam", "20", "--lm-weight", "0.4",
                 "--word-score", "1.0", "--word-lm", str(lm), "--no-progress"]) == 0
    assert (out / "1089-134686-0000.txt").read_text().split() == t.text.split()
    recognizer.options = dataclasses.replace(recognizer.options, word_lm=str(lm))
    text = Demo(recognizer).transcribe(clip, layer="mean", method="lexicon")[0]
    assert text and set(text.lower().split()) <= words
