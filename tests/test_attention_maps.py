"""Cross-attention weights recomputed outside the model, and CTC forced alignment."""


import pytest
import torch

from speech_transformer.model.attention_maps import cross_attention
from speech_transformer.audio.loading import load_audio
from speech_transformer.audio.features import pad_waveforms
from speech_transformer.model.transformer import SpeechTransformer, preset


@pytest.fixture(scope="module")
def encoded(librispeech_train):
    """An untrained small model and the encoder states of two real utterances of different lengths."""
    torch.manual_seed(0)
    model = SpeechTransformer(preset("tiny", vocab_size=64, d_model=64, d_ff=128, encoder_layers=2,
                                     decoder_layers=3)).eval()
    clips = sorted(librispeech_train, key=lambda u: u.duration)
    with torch.no_grad():
        memory, lengths = model.encode(*model.frontend(*pad_waveforms([load_audio(u.audio) for u in clips[:40:39]])))
    return model, memory, lengths


def test_weights_reproduce_the_models_own_cross_attention_output(encoded):
    model, memory, lengths = encoded
    assert lengths[0] != lengths[1]
    tokens = [[5, 9, 9, 3], [7, 2]]
    outputs = {}
    hooks = [block.cross_attn.register_forward_hook(lambda _m, _i, out, i=i: outputs.__setitem__(i, out))
             for i, block in enumerate(model.decoder.blocks)]
    try:
        weights = cross_attention(model, memory, lengths, tokens)  # runs the decoder: the hooks see its attention
    finally:
        for h in hooks:
            h.remove()
    B, L = 2, 5
    assert weights.shape == (B, 3, 4, L, memory.shape[1])
    for i, block in enumerate(model.decoder.blocks):
        v = block.cross_attn.project_kv(memory)[1]  # (B, H, S, D/H)
        mixed = (weights[:, i] @ v).transpose(1, 2).reshape(B, L, -1)
        expected = block.cross_attn.out(mixed)
        for b, t in enumerate(tokens):  # padded rows are zeroed, so compare the valid ones
            torch.testing.assert_close(expected[b, :len(t) + 1], outputs[i][b, :len(t) + 1], atol=1e-5, rtol=1e-4)


def test_rows_are_distributions_over_valid_frames_and_batching_changes_nothing(encoded):
    model, memory, lengths = encoded
    tokens = [[5, 9, 9, 3], [7, 2]]
    weights = cross_attention(model, memory, lengths, tokens)
    short = int(lengths.min())
    b = int(lengths.argmin())
    sums = weights.sum(-1)
    assert torch.allclose(sums[0, :, :, :5], torch.ones(3, 4, 5), atol=1e-5)
    assert torch.allclose(sums[1, :, :, :3], torch.ones(3, 4, 3), atol=1e-5)
    assert (sums[1, :, :, 3:] == 0).all()  # rows past the shorter hypothesis
    assert (weights[b, ..., short:] == 0).all()  # frames past the shorter utterance
    alone = cross_attention(model, memory[b:b + 1, :short], lengths[b:b + 1], [tokens[b]])
    torch.testing.assert_close(alone[0], weights[b, :, :, :len(tokens[b]) + 1, :short], atol=1e-5, rtol=1e-4)
    empty = cross_attention(model, memory[:1], lengths[:1], [[]])
    assert empty.shape[3] == 1 and torch.allclose(empty.sum(-1), torch.ones(1, 3, 4, 1), atol=1e-5)
