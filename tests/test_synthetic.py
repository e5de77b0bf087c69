"""Synthetic speech from the machine's offline voices (espeak-ng, flite, festival; .ci/run installs them)."""

from __future__ import annotations

import shutil

import pytest
import soundfile as sf

from speech_transformer.training import synthetic
from speech_transformer.commands.matching import match
from speech_transformer.training.data import read_manifest
from speech_transformer.commands.grammar import Grammar
from speech_transformer.training.synthetic import VOICES, SynthesisError, Voice, make_set, sentences, speak


ENGINES = ("espeak-ng", "flite", "festival")


@pytest.fixture(autouse=True)
def engines():
    missing = [e for e in ENGINES if shutil.which(e) is None]
    if missing:
        pytest.skip(f"needs Debian's voices: apt-get install espeak-ng flite festival festvox-kallpc16k "
                    f"festvox-us-slt-hts (missing {missing})")


@pytest.mark.parametrize("engine", ENGINES)
def test_every_engine_speaks_a_digit_the_model_hears(engine, tmp_path):
    from speech_transformer.recognition.recognizer import Recognizer

    voice = next(v for v in VOICES if v.engine == engine)
    seconds = speak(voice, "seven", tmp_path / "seven.wav", rate=1.1, pitch=0.4)
    info = sf.info(str(tmp_path / "seven.wav"))
    assert info.samplerate == 16000 and info.channels == 1 and 0.3 < seconds < 2.0
    assert info.duration == pytest.approx(seconds, abs=1e-3)
    wave, _ = sf.read(str(tmp_path / "seven.wav"), dtype="float32")
    (m,) = match(Recognizer.from_dir(None), [wave], Grammar.load("digits"))
    assert m is not None and m.text == "SEVEN"


def test_manifest_sentences_and_resume(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("LJ1\tPrinting, in the only sense.\nLJ2\tIn 1450 or so.\nbare line without digits\n")
    assert sentences(text) == ["Printing, in the only sense.", "bare line without digits"]
    manifest = make_set(sentences(text) + ["NINE"], tmp_path / "out", seed=1)
    rows = read_manifest(manifest)
    assert [u.text for u in rows] == ["Printing, in the only sense.", "bare line without digits", "NINE"]
    assert all(u.speaker in {v.label for v in VOICES} and u.duration > 0.3 for u in rows)
    before = [(tmp_path / "out" / f"{u.id}.wav").stat().st_mtime_ns for u in rows]
    assert make_set(sentences(text) + ["NINE"], tmp_path / "out", seed=1) == manifest  # kept, not spoken again
    assert [(tmp_path / "out" / f"{u.id}.wav").stat().st_mtime_ns for u in rows] == before


def test_missing_voice_or_engine_is_named(tmp_path, monkeypatch, capsys):
    with pytest.raises(SynthesisError, match="flite:nobody: flite has no such voice"):
        speak(Voice("flite", "nobody", "flite"), "hello", tmp_path / "x.wav")  # flite would use kal, silently
    for voice in (Voice("espeak-ng", "nobody", "espeak-ng"), Voice("festival", "nobody", "festvox-kallpc16k")):
        with pytest.raises(SynthesisError, match=f"{voice.engine}:nobody: no audio for 'hello'"):
            speak(voice, "hello", tmp_path / "x.wav")
    text = tmp_path / "t.txt"
    text.write_text("one sentence\n")
    monkeypatch.setenv("PATH", str(tmp_path))  # no engine on the path
    with pytest.raises(SynthesisError, match="espeak-ng is not installed \\(Debian package espeak-ng\\)"):
        speak(VOICES[0], "hello", tmp_path / "x.wav")
    assert synthetic.main(["--text", str(text), "--out", str(tmp_path / "out")]) == 1
    assert "is not installed (Debian package" in capsys.readouterr().err
