"""Tests of speech_transformer/importers/whisper_convert.py: converted Whisper models match openai-whisper."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

whisper = pytest.importorskip("whisper", reason="openai-whisper is in the test extra: pip install -e '.[test]'")
from whisper.decoding import DecodingOptions as TheirOptions  # noqa: E402
from whisper.decoding import decode as their_decode  # noqa: E402
from whisper.model import Whisper  # noqa: E402

from conftest import SIZES, converted  # noqa: E402
from speech_transformer.model.checkpoint import CheckpointError, load_model, save_state_dict  # noqa: E402
from speech_transformer.decoding.options import DecodingOptions  # noqa: E402
from speech_transformer.decoding.search import decode  # noqa: E402
from speech_transformer.importers.whisper_convert import import_whisper  # noqa: E402

TOLERANCE = 1e-4


def their_greedy(model: Whisper, mel: torch.Tensor, n: int, suppress: str = "") -> list[list[int]]:
    options = TheirOptions(language="en", without_timestamps=True, suppress_tokens=suppress,
                           suppress_blank=bool(suppress), sample_len=n, fp16=False)
    return [r.tokens for r in their_decode(model, mel, options)]


def our_greedy(model, tokenizer, waves: list[np.ndarray], n: int, suppress: bool) -> list[list[int]]:
    special = tokenizer.special if suppress else dataclasses.replace(tokenizer.special, suppress=(),
                                                                     suppress_at_start=())
    audio = torch.zeros(len(waves), max(len(w) for w in waves))
    for i, w in enumerate(waves):
        audio[i, : len(w)] = torch.from_numpy(w)
    lengths = torch.tensor([len(w) for w in waves])
    memory, memory_lengths = model.encode(*model.frontend(audio, lengths))
    options = DecodingOptions(beam_size=1, ctc_weight=0.0, max_length=n, max_repeats=n)
    return [h.tokens for h in decode(model, memory, memory_lengths, options, special)]


@pytest.mark.parametrize("size,vocab", [("tiny", "en"), ("tiny", "multilingual"), ("base", "en"),
                                        ("base", "multilingual")])
def test_converted_model_matches_openai_whisper(size, vocab, root, speech):
    theirs, _, directory = converted(size, vocab, root)
    ours, tokenizer, _ = load_model(directory)
    wave = speech[0]
    mel = whisper.log_mel_spectrogram(whisper.pad_or_trim(torch.from_numpy(wave)))  # (80, 3000)
    feats, feat_lengths = ours.frontend(torch.from_numpy(wave)[None], torch.tensor([len(wave)]))
    assert feats.shape == (1, 3000, 80)
    assert (feats[0].T - mel).abs().max() <= TOLERANCE
    with torch.no_grad():
        their_memory = theirs.encoder(mel[None])
        memory, memory_lengths = ours.encode(feats, feat_lengths)
        assert memory.shape == their_memory.shape == (1, 1500, SIZES[size][0])
        assert (memory - their_memory).abs().max() <= TOLERANCE
        prompt = torch.tensor([list(tokenizer.special.prompt) + tokenizer.encode(" and so my fellow Americans")])
        their_logits = theirs.decoder(prompt, their_memory)
        logits, _ = ours.decoder(prompt, ours.decoder.memory_kv(memory), memory_lengths)
        assert (logits - their_logits).abs().max() <= TOLERANCE
        assert their_logits.std() > 1.0  # the comparison is not between near-constant numbers
    theirs_20 = their_greedy(theirs, mel[None], 20)
    assert our_greedy(ours, tokenizer, [wave], 20, suppress=False) == theirs_20
    assert len(theirs_20[0]) > 0


def test_batched_greedy_and_suppression_match(root, speech):
    theirs, _, directory = converted("tiny", "multilingual", root)
    ours, tokenizer, _ = load_model(directory)
    mels = torch.stack([whisper.log_mel_spectrogram(whisper.pad_or_trim(torch.from_numpy(w))) for w in speech])
    assert our_greedy(ours, tokenizer, speech, 20, suppress=False) == their_greedy(theirs, mels, 20)
    # our default: every special token but <|endoftext|> and the non-speech symbols are suppressed, and a blank
    # start (openai-whisper's suppress_blank); the same list given to openai-whisper
    suppress = ",".join(str(t) for t in tokenizer.special.suppress)
    assert our_greedy(ours, tokenizer, speech, 20, suppress=True) == their_greedy(theirs, mels, 20, suppress)


def to_hf_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """openai-whisper names -> the names of transformers' WhisperForConditionalGeneration (written out here)."""
    block = {"attn.query": "self_attn.q_proj", "attn.key": "self_attn.k_proj", "attn.value": "self_attn.v_proj",
             "attn.out": "self_attn.out_proj", "attn_ln": "self_attn_layer_norm",
             "cross_attn.query": "encoder_attn.q_proj", "cross_attn.key": "encoder_attn.k_proj",
             "cross_attn.value": "encoder_attn.v_proj", "cross_attn.out": "encoder_attn.out_proj",
             "cross_attn_ln": "encoder_attn_layer_norm", "mlp.0": "fc1", "mlp.2": "fc2", "mlp_ln": "final_layer_norm"}
    top = {"encoder.conv1": "model.encoder.conv1", "encoder.conv2": "model.encoder.conv2",
           "encoder.ln_post": "model.encoder.layer_norm", "decoder.token_embedding": "model.decoder.embed_tokens",
           "decoder.ln": "model.decoder.layer_norm"}
    out = {"model.encoder.embed_positions.weight": state["encoder.positional_embedding"],
           "model.decoder.embed_positions.weight": state["decoder.positional_embedding"],
           "proj_out.weight": state["decoder.token_embedding.weight"]}
    for name, tensor in state.items():
        module, leaf = name.rsplit(".", 1)
        if module in top:
            out[f"{top[module]}.{leaf}"] = tensor
        elif ".blocks." in module:
            side, _, index, rest = module.split(".", 3)
            out[f"model.{side}.layers.{index}.{block[rest]}.{leaf}"] = tensor
    assert len(out) == len(state) + 1  # every tensor placed, plus the tied proj_out
    return out


def test_hugging_face_folder_converts_to_the_same_model(root, speech, tmp_path):
    theirs, _, _ = converted("tiny", "en", root)
    hf = tmp_path / "whisper-tiny.en"
    hf.mkdir()
    save_state_dict(to_hf_state_dict(theirs.state_dict()), hf / "model.safetensors")
    d = theirs.dims
    (hf / "config.json").write_text(json.dumps({
        "model_type": "whisper", "num_mel_bins": d.n_mels, "vocab_size": d.n_vocab, "d_model": d.n_audio_state,
        "encoder_attention_heads": d.n_audio_head, "decoder_attention_heads": d.n_text_head,
        "encoder_layers": d.n_audio_layer, "decoder_layers": d.n_text_layer, "encoder_ffn_dim": 4 * d.n_audio_state,
        "decoder_ffn_dim": 4 * d.n_text_state, "max_source_positions": d.n_audio_ctx,
        "max_target_positions": d.n_text_ctx}))
    ours, tokenizer, _ = load_model(import_whisper(hf, tmp_path / "converted"))
    wave = speech[1]
    mel = whisper.log_mel_spectrogram(whisper.pad_or_trim(torch.from_numpy(wave)))
    with torch.no_grad():
        memory, _ = ours.encode(*ours.frontend(torch.from_numpy(wave)[None], torch.tensor([len(wave)])))
        assert (memory - theirs.encoder(mel[None])).abs().max() <= TOLERANCE
    assert our_greedy(ours, tokenizer, [wave], 20, suppress=False) == their_greedy(theirs, mel[None], 20)


def test_bad_checkpoints_are_refused(tmp_path):
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not an openai-whisper checkpoint"):
        import_whisper(tmp_path / "other.pt", tmp_path / "out")
    (tmp_path / "text.pt").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="text.pt"):
        import_whisper(tmp_path / "text.pt", tmp_path / "out")
    assert not (tmp_path / "out").exists()
