import json
import subprocess
from pathlib import Path

import pytest
import torch

from safetensors.torch import load_file, save_file

from speech_transformer.model import checkpoint
from speech_transformer.model.checkpoint import INT4_GROUP, INT4_OFFSET, INT4_SCALE, SCALE_SUFFIX, CheckpointError, \
    average_state_dicts, load_model, load_state_dict, save_model, save_state_dict
from speech_transformer.model.transformer import SpeechTransformer, preset


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


def test_int8_weights_a_quarter_of_the_size_and_close(tmp_path, tokenizer):
    model = make_model(tokenizer)
    full = save_model(model, tokenizer, tmp_path / "fp32")
    small = save_model(model, tokenizer, tmp_path / "int8", weights="int8")
    stored = load_file(str(small / "model.safetensors"))
    key = "encoder.blocks.0.attn.query.weight"
    assert stored[key].dtype == torch.int8 and stored[key + SCALE_SUFFIX].shape == (stored[key].shape[0],)
    assert stored["encoder.blocks.0.attn.query.bias"].dtype == torch.float32  # vectors stay as they are
    assert (small / "model.safetensors").stat().st_size < 0.35 * (full / "model.safetensors").stat().st_size
    loaded, _, _ = load_model(small)
    for name, p in loaded.named_parameters():  # within half a step of each row's grid
        original = dict(model.named_parameters())[name].detach()
        step = original.reshape(len(original), -1).abs().amax(1) / 127 if original.dim() > 1 else torch.zeros(1)
        error = (p - original).abs().reshape(len(original), -1).amax(1) if original.dim() > 1 else (p - original).abs()
        assert p.dtype == torch.float32 and bool((error <= step / 2 + 1e-7).all()), name
    assert loaded.decoder.output.weight is loaded.decoder.embed.weight
    feats, lengths = torch.randn(2, 100, 80), torch.tensor([100, 70])
    with torch.no_grad():
        a, _ = model.encode(feats, lengths)
        b, _ = loaded.encode(feats, lengths)
    assert torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0) > 0.999

    stored[key + SCALE_SUFFIX] = stored[key + SCALE_SUFFIX][:3]  # scales that do not fit: refused, named
    save_file(stored, str(tmp_path / "bad.safetensors"))
    with pytest.raises(CheckpointError, match=f"bad.safetensors: {key}{SCALE_SUFFIX}"):
        load_state_dict(tmp_path / "bad.safetensors")


def test_int4_weights_an_eighth_of_the_size_and_close(tmp_path, tokenizer):
    torch.manual_seed(0)
    model = SpeechTransformer(preset("tiny", vocab_size=tokenizer.vocab_size, encoder_layers=2, decoder_layers=1,
                                     d_model=128, n_heads=4, d_ff=256)).eval()  # widths that are multiples of 64
    full = save_model(model, tokenizer, tmp_path / "fp32")
    small = save_model(model, tokenizer, tmp_path / "int4", weights="int4")
    stored = load_file(str(small / "model.safetensors"))
    key = "encoder.blocks.0.attn.query.weight"
    rows, columns = model.get_parameter(key).shape
    assert stored[key].dtype == torch.uint8 and stored[key].shape == (rows, columns // 2)
    assert stored[key + INT4_SCALE].shape == stored[key + INT4_OFFSET].shape == (rows, columns // INT4_GROUP)
    assert (small / "model.safetensors").stat().st_size < 0.2 * (full / "model.safetensors").stat().st_size
    assert checkpoint.stored_quantized(small / "model.safetensors")
    loaded, _, _ = load_model(small)
    for name, p in loaded.named_parameters():  # within one step of each group's grid (its range / 15)
        original = dict(model.named_parameters())[name].detach()
        if original.dim() == 2 and original.shape[1] % INT4_GROUP == 0:
            groups = original.reshape(len(original), -1, INT4_GROUP)
            step = (groups.amax(-1) - groups.amin(-1)) / 15
            error = (p.reshape(groups.shape) - groups).abs().amax(-1)
            assert bool((error <= step + 1e-3).all()), name
    feats, lengths = torch.randn(2, 100, 80), torch.tensor([100, 70])
    with torch.no_grad():
        a, _ = model.encode(feats, lengths)
        b, _ = loaded.encode(feats, lengths)
    assert torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0) > 0.99

    # finer groups for one part (what the default model's decoder blocks get): read back from their scales
    finer = save_model(model, tokenizer, tmp_path / "finer", weights="int4", int4_groups={"decoder.blocks.": 32})
    fine_key = "decoder.blocks.0.cross_attn.query.weight"
    again = load_file(str(finer / "model.safetensors"))
    assert again[fine_key + INT4_SCALE].shape[1] == columns // 32 and again[key + INT4_SCALE].shape[1] == columns // 64
    w = model.get_parameter(fine_key).detach()
    error = {name: (dict(load_model(d)[0].named_parameters())[fine_key] - w).abs().mean() for name, d in
             (("coarse", small), ("fine", finer))}
    assert error["fine"] < error["coarse"]  # a finer grid (on random weights only ~4 % finer; real ones gain more)

    del stored[key + INT4_OFFSET]  # scales without their offsets: refused, named
    save_file(stored, str(tmp_path / "bad.safetensors"))
    with pytest.raises(CheckpointError, match=f"bad.safetensors: {key}{INT4_SCALE}"):
        load_state_dict(tmp_path / "bad.safetensors")


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


def test_model_directory_reads_and_writes_the_config_sections(tmp_path, tokenizer):
    import json

    from speech_transformer.decoding.options import DecodingOptions
    from speech_transformer.model.checkpoint import ModelDirectory

    tuned = DecodingOptions(beam_size=4, ctc_weight=0.3).override(method="lexicon", beam_size=100).override(
        method="attention")
    directory = save_model(make_model(tokenizer), tokenizer, tmp_path / "m", info={"note": "test"}, decoding=tuned,
                           commands={"reject_threshold": -3.0})
    settings = ModelDirectory.read(directory)
    assert settings.decoding == tuned and settings.decoding.override(method="lexicon").lexicon.beam_size == 100
    assert settings.commands == {"reject_threshold": -3.0} and settings.info == {"note": "test"}
    assert settings.model == make_model(tokenizer).config and settings.weights_sha256
    settings.info["shipped"] = True
    settings.write(directory)  # same weights: the hashes still vouch for them
    assert load_model(directory)[2]["info"]["shipped"] is True
    config = json.loads((directory / "config.json").read_text())
    config["decoding"] = {"attention": {"beam": 3}}
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"config.json: bad decoding entry .*attention.beam"):
        ModelDirectory.read(directory)
