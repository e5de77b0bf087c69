"""`speech-transformer listen` as a user runs it: real subprocesses, real clips, JSON lines, Ctrl-C."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import soundfile as sf

from speech_transformer.text.scoring import normalize_english
from speech_transformer.training.data import read_manifest

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def listen(*args: str, stdin: bytes | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "speech_transformer.apps.cli", "listen", *args], input=stdin,
                          capture_output=True, timeout=timeout, env=ENV)


def events(out: bytes) -> list[dict]:
    return [json.loads(line) for line in out.decode().splitlines() if line.strip()]


def test_a_file_gives_partials_and_finals_with_the_words_of_transcribe(data_dir, tmp_path):
    jfk = str(data_dir / "samples" / "jfk.flac")
    # float32 on both sides: int8's dynamic input scales make a result depend on what else is in the batch
    run = listen("--input", jfk, "--end-silence", "1.4", "--compute", "float32")
    assert run.returncode == 0, run.stderr.decode()[-2000:]
    said = events(run.stdout)
    assert {e["type"] for e in said} == {"partial", "final"} and said[0]["type"] == "partial"
    assert all({"text", "start", "end", "latency_s"} <= set(e) for e in said)
    finals = [e for e in said if e["type"] == "final"]
    assert all(e["words"] and e["words"][0]["start"] >= e["start"] for e in finals)
    subprocess.run([sys.executable, "-m", "speech_transformer.apps.cli", "transcribe", jfk, "-o", str(tmp_path),
                    "--format", "json", "--no-progress", "--compute", "float32"],
                   check=True, capture_output=True, env=ENV)
    offline = json.loads((tmp_path / "jfk.json").read_text())["segments"]
    # transcribe joins speech runs whose padded ends are up to 1 s apart: 1.4 s of silence with the 0.2 s pads;
    # with that pause both cut the same utterances out of the file and decode them alike
    assert " ".join(e["text"] for e in finals).split() == " ".join(s["text"] for s in offline).split()


def test_raw_pcm_on_standard_input_with_a_grammar_gives_the_command(data_dir):
    clip = next(u for u in read_manifest(data_dir / "fsdd" / "test.tsv") if u.text == "THREE")
    digit, rate = sf.read(clip.audio, dtype="int16")  # FSDD is 8 kHz
    pcm = np.concatenate([np.zeros(rate // 4), digit, np.zeros(rate // 2)]).astype("<i2")
    run = listen("--input", "-", "--raw-rate", "8000", "--grammar", "digits", stdin=pcm.tobytes())
    assert run.returncode == 0, run.stderr.decode()[-2000:]
    said = [e for e in events(run.stdout) if e["type"] != "partial"]
    assert len(said) == 1 and said[0]["type"] == "command", said
    assert said[0]["command"] == "THREE" and said[0]["slots"] == {"digit": "3"} and 0 < said[0]["confidence"] <= 1


def test_text_format_and_errors(data_dir, tmp_path):
    # a short clear sentence (AN4's "ENTER FIFTY FOUR", used before, v5 writes "N-5-4.": a WER matter, not this test's)
    clip = next(u for u in read_manifest(data_dir / "librispeech" / "samples" / "samples.tsv")
                if u.text == "HE COULD WAIT NO LONGER")
    run = listen("--input", clip.audio, "--format", "text")
    last = run.stdout.decode().splitlines()[-1]  # "[   0.00    2.09] He could wait no longer."
    assert run.returncode == 0 and re.match(r"\[ *[\d.]+ +[\d.]+\] ", last), last
    final = [e for e in events(listen("--input", clip.audio).stdout) if e["type"] == "final"][-1]
    assert last.split("] ", 1)[1] == final["text"]  # the same final, for people
    assert normalize_english(final["text"]).split() == "he could wait no longer".split()
    assert listen("--input", str(tmp_path / "missing.wav")).returncode == 1
    (tmp_path / "bad.txt").write_text("open (the {app}\n")
    bad = listen("--input", clip.audio, "--grammar", str(tmp_path / "bad.txt"))
    assert bad.returncode == 2 and b"bad.txt" in bad.stderr


def test_no_audio_device_exits_2_with_the_reason():
    run = listen("--device", "no such microphone")
    assert run.returncode == 2
    message = run.stderr.decode()
    assert "--input" in message and ("PortAudio" in message or "no audio input device" in message), message


def _ctrl_c_as_in_a_shell() -> None:
    """In the child before exec: SIGINT as a terminal gives it. An ignored or blocked SIGINT survives exec; in
    the whole suite (not alone, not under CPU load) the child twice ran to its end and exited 0, which is what
    a child that never got the signal does."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def test_ctrl_c_flushes_the_last_utterance_and_exits_130(data_dir):
    long = max(read_manifest(data_dir / "librispeech" / "dev.tsv")[:20], key=lambda u: u.duration)
    process = subprocess.Popen([sys.executable, "-m", "speech_transformer.apps.cli", "listen", "--input", long.audio,
                                "--realtime"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV,
                               preexec_fn=_ctrl_c_as_in_a_shell)
    lines = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # speaking: a partial well before the end, then Ctrl-C mid-utterance
        lines.append(json.loads(process.stdout.readline()))
        if lines[-1]["type"] == "partial" and lines[-1]["end"] < long.duration - 5:
            break
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    lines += events(out)
    assert process.returncode == 130, err.decode()[-2000:]
    assert lines[-1]["type"] == "final" and lines[-1]["end"] < long.duration - 1, lines[-1]
    assert lines[-1]["text"], lines[-1]
