"""`speech-transformer commands`: JSON lines per input, errors named, exit codes."""

import json

import numpy as np
import soundfile as sf

from speech_transformer.apps import commands_cli
from speech_transformer.audio.loading import SAMPLE_RATE, load_audio


def _write(path, wave):
    sf.write(str(path), wave, SAMPLE_RATE, subtype="PCM_16")
    return path


def test_cli_json_lines_and_exit_codes(fsdd, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    _write(folder / "a.wav", load_audio(fsdd[6].audio))  # THREE
    (folder / "broken.wav").write_bytes(b"RIFF not really a wave file")
    gap = np.zeros(2 * SAMPLE_RATE, np.float32)
    _write(folder / "long.wav", np.concatenate([gap] + [x for u in (fsdd[2], fsdd[18]) for x in (load_audio(u.audio), gap)]))
    rc = commands_cli.main([str(folder), "--grammar", "digits"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rc == 1
    by_name = {line["file"].rsplit("/", 1)[-1]: line for line in lines}
    assert set(by_name) == {"a.wav", "broken.wav", "long.wav"}
    assert by_name["a.wav"]["command"] == "THREE" and by_name["a.wav"]["slots"] == {"digit": "3"}
    assert not by_name["a.wav"]["rejected"] and 0 <= by_name["a.wav"]["confidence"] <= 1
    assert "error" in by_name["broken.wav"]
    assert [u["command"] for u in by_name["long.wav"]["utterances"]] == ["ONE", "NINE"]

    assert commands_cli.main([str(folder / "a.wav"), "--grammar", "digits"]) == 0
    capsys.readouterr()
    bad = tmp_path / "bad.txt"
    bad.write_text("# ok\nopen {app\n")
    assert commands_cli.main([str(folder / "a.wav"), "--grammar", str(bad)]) == 2
    assert f"{bad}:2:" in capsys.readouterr().err
    assert commands_cli.main([]) == 2
