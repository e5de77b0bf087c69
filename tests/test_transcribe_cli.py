"""Tests of speech_transformer/apps/transcribe_cli.py: messy folders, kill + resume, torchrun sharding."""

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
import soundfile as sf

from conftest import parse_srt, parse_vtt, resampled
from speech_transformer.apps import writers as subtitles
from speech_transformer.apps.transcribe_cli import main
from speech_transformer.audio.loading import SAMPLE_RATE

ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


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


def _make_inputs(folder: Path, clips, n: int) -> None:
    folder.mkdir()
    for i in range(n):
        wave, _ = clips[i % len(clips)]
        sf.write(folder / f"f{i:02d}.flac", wave, SAMPLE_RATE)


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
