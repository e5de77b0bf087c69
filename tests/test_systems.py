"""System adapters: spec parsing, the command adapter, and the PocketSphinx baseline on real speech."""

import shlex
import sys
import types

import numpy as np
import pytest

from speech_transformer.audio.loading import SAMPLE_RATE, load_audio
from speech_transformer.training.data import default_data_dir, read_manifest
from speech_transformer.text.scoring import score_utterances
from speech_transformer.apps.systems import (CommandSystem, PocketSphinxSystem, SpeechTransformerSystem,
                                        TranscriptionError, parse_system)

DATA = default_data_dir()
needs_data = pytest.mark.skipif(not (DATA / "samples" / "jfk.flac").exists(),
                                reason=f"speech data not found at {DATA} (set SPEECH_TRANSFORMER_DATA)")
PY = shlex.quote(sys.executable)


def test_parse_system_specs():
    assert isinstance(parse_system("pocketsphinx"), PocketSphinxSystem)
    c = parse_system("cmd:mine=my-asr --fast {audio}")
    assert isinstance(c, CommandSystem) and c.name == "mine" and c.command == "my-asr --fast {audio}"
    m = parse_system("model:runs/base,beam=4,ctc=0.3")
    assert isinstance(m, SpeechTransformerSystem)
    assert m.decoding == {"beam_size": 4, "ctc_weight": 0.3} and m.model_dir.name == "base"
    assert m.name == "speech-transformer:base(beam_size=4,ctc_weight=0.3)"
    assert parse_system("model:runs/base,name=base-greedy,beam=1").name == "base-greedy"
    assert parse_system("model:runs/base,method=ctc").decoding == {"method": "ctc"}


@pytest.mark.parametrize("spec, message", [
    ("whisper", "unknown system"),
    ("cmd:mine=my-asr", "no {audio} placeholder"),
    ("cmd:=x {audio}", "bad command system"),
    ("model:", "bad model system"),
    ("model:dir,beam", "bad model option"),
    ("model:dir,temperature=1", "bad model option"),
    ("model:dir,beam=four", "bad value for beam"),
])
def test_parse_system_rejects_bad_specs(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_system(spec)


def test_default_system_without_a_shipped_model_raises_clearly(monkeypatch):
    def missing():
        raise FileNotFoundError("no pretrained model is bundled with this build")

    monkeypatch.setitem(sys.modules, "speech_transformer.pretrained",
                        types.SimpleNamespace(default_model_dir=missing))
    with pytest.raises(FileNotFoundError, match="no pretrained model"):
        parse_system("default,beam=2")


@needs_data
def test_command_system_reads_original_files_and_waveforms():
    script = "import sys, soundfile as sf; i = sf.info(sys.argv[1]); print('rate', i.samplerate, i.channels)"
    probe = f"{PY} -c {shlex.quote(script)} {{audio}}"
    system = CommandSystem("probe", probe)
    jfk = str(DATA / "samples" / "jfk.flac")
    assert system.reads_files
    assert system.transcribe_paths([jfk]) == ["rate 44100 2"]
    # in-memory audio goes through a temporary 16 kHz mono WAV
    assert system.transcribe([np.zeros(SAMPLE_RATE // 2, np.float32)] * 2) == ["rate 16000 1"] * 2


def test_command_system_failure_names_status_and_stderr(tmp_path):
    system = CommandSystem("bad", f"{PY} -c \"import sys; sys.exit('decoder exploded')\" {{audio}}")
    with pytest.raises(TranscriptionError, match="status 1.*decoder exploded"):
        system.transcribe_paths([str(tmp_path / "x.wav")])


def test_command_system_output_is_one_line_of_words():
    system = CommandSystem("echo", "printf '  hello\\n  world  \\n' {audio}")
    assert system.transcribe_paths(["/dev/null"]) == ["hello world"]


@needs_data
def test_pocketsphinx_transcribes_jfk():
    utt = read_manifest(DATA / "samples" / "samples.tsv")[0]
    system = PocketSphinxSystem()
    hyps = system.transcribe([load_audio(utt.audio), np.zeros(SAMPLE_RATE // 4, np.float32)])
    assert len(hyps) == 2
    assert hyps[0].strip() and "country" in hyps[0].split()
    assert isinstance(hyps[1], str)
    score = score_utterances([utt.text], [hyps[0]])
    assert score.n_words == 22
    assert 0.0 < score.wer < 0.8  # PocketSphinx gets most of it: the baseline is weak but not noise
    assert score.hits + score.substitutions + score.deletions == 22


def test_model_system_runs_int8_compute_on_request(data_dir):
    from speech_transformer.audio.loading import load_audio
    from speech_transformer.model.quantize import Int8Linear

    system = parse_system("default,compute=int8,method=ctc")
    assert system.name == "speech-transformer:default(compute=int8,method=ctc)"
    wave = load_audio(data_dir / "samples" / "jfk.flac")
    int8 = system.transcribe([wave])[0]
    assert any(isinstance(m, Int8Linear) for m in system._recognizer.model.modules())
    assert int8 == parse_system("default,method=ctc").transcribe([wave])[0]  # CTC greedy: the same words here
