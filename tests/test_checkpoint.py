import json
import subprocess
from pathlib import Path

import pytest
import torch

from speech_transformer.checkpoint import CheckpointError, average_state_dicts, load_model, save_model, \
    save_state_dict
from speech_transformer.model import SpeechTransformer, preset


def make_model(tokenizer, seed=0):
    torch.manual_seed(seed)
    return SpeechTransformer(preset("tiny", vocab_size=tokenizer.vocab_size, encoder_layers=2, decoder_layers=1)).eval()


def test_save_load_gives_identical_outputs(tmp_path, tokenizer):
    model = make_model(tokenizer)
    model.frontend.mean.fill_(1.5)  # feature statistics travel with the weights
    directory = save_model(model, tokenizer, tmp_path / "m", info={"note": "test"})
    loaded, tok, config = load_model(directory)
    assert config["info"]["note"] == "test" and tok.encode("HELLO") == tokenizer.encode("HELLO")
    feats, lengths = torch.randn(2, 100, 80), torch.tensor([100, 70])
    with torch.no_grad():
        a, _ = model.encode(feats, lengths)
        b, _ = loaded.encode(feats, lengths)
    assert torch.equal(a, b)
    assert torch.equal(loaded.frontend.mean, model.frontend.mean)
    assert loaded.decoder.output.weight is loaded.decoder.embed.weight  # tying survives the round trip


def test_tampered_or_mismatched_files_are_refused(tmp_path, tokenizer):
    directory = save_model(make_model(tokenizer), tokenizer, tmp_path / "m")
    weights = directory / "model.safetensors"
    original = weights.read_bytes()
    data = bytearray(original)
    data[-10] ^= 0xFF  # flip bits inside a tensor: still valid safetensors, wrong content
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="do not match the sha256"):
        load_model(directory)
    weights.write_bytes(original[:100])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_model(directory)
    weights.write_bytes(original)
    config = json.loads((directory / "config.json").read_text())
    config["model"]["d_model"] = 32
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="do not match the config"):
        load_model(directory)
    (directory / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_model(directory)
    with pytest.raises(CheckpointError, match="not a model directory"):
        load_model(tmp_path / "nowhere")


def test_average_of_checkpoints(tmp_path, tokenizer):
    paths = []
    for seed in range(3):
        path = tmp_path / f"{seed}.safetensors"
        save_state_dict(make_model(tokenizer, seed).state_dict(), path)
        paths.append(path)
    avg = average_state_dicts(paths)
    states = [make_model(tokenizer, s).state_dict() for s in range(3)]
    key = "encoder.blocks.0.attn.query.weight"
    torch.testing.assert_close(avg[key], sum(s[key] for s in states) / 3)


def test_no_pickle_loading_anywhere():
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(["git", "grep", "-nE", r"torch\.load\(|pickle\.load", "--", "*.py"], cwd=root,
                         capture_output=True, text=True).stdout
    offending = [line for line in out.splitlines() if "weights_only=True" not in line and "test_checkpoint.py" not in line]
    assert not offending, offending
