import subprocess
import sys

from speech_transformer.apps.cli import main
from speech_transformer.text.tokenizer import Tokenizer


def test_presets_lists_sizes(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert "tiny" in out and "small" in out and "base" in out and "M" in out


def test_tokenizer_command_trains_on_manifests(tmp_path, data_dir, capsys):
    out = tmp_path / "tok.model"
    assert main(["tokenizer", "--manifest", str(data_dir / "an4" / "train.tsv"), "--vocab-size", "48",
                 "--output", str(out)]) == 0
    tok = Tokenizer(out)
    assert tok.decode(tok.encode("ERASE SEVEN")) == "ERASE SEVEN"


def test_unknown_and_unfinished_commands_fail_clearly(capsys):
    assert main(["frobnicate"]) == 2
    assert "unknown command" in capsys.readouterr().err
    assert main([]) == 2


def test_console_script_entry_point():
    result = subprocess.run([sys.executable, "-m", "speech_transformer.apps.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "train" in result.stdout and "evaluate" in result.stdout
