"""Training settings: a YAML file, `--set key=value` overrides parsed as YAML, $SPEECH_TRANSFORMER_DATA expanded."""

import pytest

from speech_transformer.training.config import TrainConfig


def test_yaml_and_overrides(tmp_path, monkeypatch):
    monkeypatch.setenv("SPEECH_TRANSFORMER_DATA", str(tmp_path / "data"))
    path = tmp_path / "c.yaml"
    path.write_text("train: [$SPEECH_TRANSFORMER_DATA/a.tsv]\nlr: 0.002\nmodel: {dropout: 0.2}\n")
    c = TrainConfig.load(path, ["lr=5e-4", "freeze=[encoder.blocks.0.]", "max_minutes=1.5"])
    assert c.train == [f"{tmp_path}/data/a.tsv"] and c.lr == 5e-4 and c.model == {"dropout": 0.2}
    assert c.freeze == ["encoder.blocks.0."] and c.max_minutes == 1.5 and c.preset == "tiny"
    with pytest.raises(ValueError, match="lr: not a number: 'fast'"):
        TrainConfig.load(None, ["lr=fast"])
    with pytest.raises(ValueError, match="unknown training settings: \\['lrr'\\]"):
        TrainConfig.load(None, ["lrr=1"])
