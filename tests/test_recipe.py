"""The LibriSpeech recipe's stages, end to end, on a handful of real utterances with a tiny model."""

import subprocess
import sys
from pathlib import Path

import yaml

from speech_transformer.data import read_manifest, write_manifest

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "librispeech"


def test_mini_recipe_runs_all_stages(tmp_path, data_dir):
    train = sorted(read_manifest(data_dir / "librispeech" / "train.tsv"), key=lambda u: u.duration)[:12]
    dev = sorted(read_manifest(data_dir / "librispeech" / "dev.tsv"), key=lambda u: u.duration)[:3]
    write_manifest(train, tmp_path / "train.jsonl")
    write_manifest(dev, tmp_path / "dev.jsonl")
    config = yaml.safe_load((RECIPE / "conf" / "mini.yaml").read_text())
    config["recipe"]["manifests"] = {"train": str(tmp_path / "train.jsonl"), "dev": str(tmp_path / "dev.jsonl")}
    config["recipe"]["vocab_size"] = 64
    config["recipe"]["decode"] = {"beam_size": 2, "ctc_weight": 0.3}
    config["train"].update(preset="tiny", model={"encoder_layers": 1, "decoder_layers": 1, "d_model": 64, "d_ff": 128},
                           max_steps=4, warmup_steps=2, save_every=2, valid_every=4, batch_seconds=40,
                           num_workers=0, progress=False, average_last=2)
    (tmp_path / "mini.yaml").write_text(yaml.safe_dump(config))
    exp = tmp_path / "exp"
    result = subprocess.run([sys.executable, str(RECIPE / "run.py"), "--config", str(tmp_path / "mini.yaml"),
                             "--exp", str(exp)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    for stage in range(2, 7):
        assert f"=== stage {stage}:" in result.stdout
    assert (exp / "tokenizer.model").is_file() and (exp / "model" / "model.safetensors").is_file()
    results = (exp / "RESULTS.md").read_text()
    assert "| dev | 3 |" in results and "WER %" in results
    # a second run finds every stage done and still writes the table
    again = subprocess.run([sys.executable, str(RECIPE / "run.py"), "--config", str(tmp_path / "mini.yaml"),
                            "--exp", str(exp), "--stage", "3", "--stop-stage", "3"], capture_output=True, text=True)
    assert again.returncode == 0 and "tokenizer.model exists" in again.stdout
