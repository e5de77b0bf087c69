import pytest
import torch

from speech_transformer.audio.loading import load_audio
from speech_transformer.decoding.options import DecodingOptions
from speech_transformer.decoding.search import decode
from speech_transformer.audio.features import pad_waveforms
from speech_transformer.model.transformer import PRESETS, SpeechTransformer, preset

from conftest import tiny_model


def test_presets_have_the_advertised_sizes():
    sizes = {name: SpeechTransformer(c).num_parameters() / 1e6 for name, c in PRESETS.items()}
    assert 4 <= sizes["tiny"] <= 6 and 20 <= sizes["small"] <= 30 and 60 <= sizes["base"] <= 80


def test_padding_invariance_of_encoder_and_decoding(librispeech_train):
    model = tiny_model()
    waves = [load_audio(u.audio) for u in librispeech_train[:3]]
    with torch.no_grad():
        feats, n = model.frontend(*pad_waveforms(waves))
        memory, lengths = model.encode(feats, n)
        batch_hyps = decode(model, memory, lengths, DecodingOptions(beam_size=2, ctc_weight=0.3, max_length=20))
        for i, w in enumerate(waves):
            f1, n1 = model.frontend(*pad_waveforms([w]))
            m1, l1 = model.encode(f1, n1)
            torch.testing.assert_close(memory[i, : int(l1[0])], m1[0], atol=1e-4, rtol=1e-4)
            alone = decode(model, m1, l1, DecodingOptions(beam_size=2, ctc_weight=0.3, max_length=20))[0]
            assert alone.tokens == batch_hyps[i].tokens


def test_hypotheses_share_their_utterances_keys_and_values():
    """W hypotheses per utterance over the B utterances' cross-attention keys/values give what W copies of each
    utterance's memory give (beam search no longer repeats them per hypothesis)."""
    model, W = tiny_model(), 3
    with torch.no_grad():
        memory, lengths = model.encode(torch.randn(2, 200, 80), torch.tensor([200, 150]))
        tokens = torch.randint(2, 64, (2 * W, 6))
        shared, _ = model.decoder(tokens, model.decoder.memory_kv(memory), lengths)
        copied, _ = model.decoder(tokens, model.decoder.memory_kv(memory.repeat_interleave(W, 0)),
                                  lengths.repeat_interleave(W))
    torch.testing.assert_close(shared, copied, atol=1e-5, rtol=1e-5)


def test_loss_is_finite_and_backpropagates():
    model = tiny_model().train()
    feats = torch.randn(3, 120, 80)
    targets = torch.randint(2, 64, (3, 7))
    loss = model(feats, torch.tensor([120, 100, 60]), targets, torch.tensor([7, 5, 2]))
    assert torch.isfinite(loss.total) and loss.tokens == 7 + 5 + 2 + 3
    loss.total.backward()
    assert all(p.grad is not None for p in model.encoder.parameters())


def test_decoding_terminates_on_untrained_models():
    for seed in range(3):
        model = tiny_model(seed=seed)
        feats = torch.randn(2, 300, 80)
        memory, lengths = model.encode(feats, torch.tensor([300, 90]))
        for options in (DecodingOptions(beam_size=1, ctc_weight=0.0), DecodingOptions(beam_size=3),
                        DecodingOptions(method="ctc")):
            for hyp, n in zip(decode(model, memory, lengths, options), lengths.tolist()):
                assert len(hyp.tokens) <= max(n, int(n * options.max_tokens_per_frame))


def test_whisper_style_switches_build_one_configurable_model():
    import pytest

    from speech_transformer.model.transformer import ModelConfig

    with pytest.raises(ValueError, match="subsampling must be one of"):
        ModelConfig(subsampling="conv3d")
    c = preset("tiny", vocab_size=64, encoder_layers=1, decoder_layers=1, subsampling="conv1d", ctc=False,
               encoder_positions="learned", decoder_positions="learned", max_source_positions=60,
               max_target_positions=8, scale_embeddings=False, key_bias=False)
    torch.manual_seed(0)
    model = SpeechTransformer(c)
    assert model.ctc_head is None and model.encoder_frame_seconds == 0.02
    assert model.encoder.blocks[0].attn.key.bias is None and model.encoder.blocks[0].attn.query.bias is not None
    feats = torch.randn(2, 101, 80)
    memory, lengths = model.encode(feats, torch.tensor([101, 80]))
    assert memory.shape == (2, 51, c.d_model) and lengths.tolist() == [51, 40]
    targets = torch.randint(2, 64, (2, 5))
    loss = model(feats, torch.tensor([101, 80]), targets, torch.tensor([5, 3]), ctc_weight=0.0,
                 prompt=(1, 7, 9), eos=1)
    loss.total.backward()
    assert torch.isfinite(loss.total) and float(loss.ctc) == 0.0
    with pytest.raises(ValueError, match="no CTC head"):
        model(feats, torch.tensor([101, 80]), targets, torch.tensor([5, 3]), ctc_weight=0.3)
    with pytest.raises(ValueError, match="only 60"):
        model.encode(torch.randn(1, 200, 80), torch.tensor([200]))  # 100 frames > the 60-row table


def test_importing_the_model_pulls_in_no_demo_or_feature_libraries():
    import subprocess
    import sys

    code = ("import sys, speech_transformer.model.transformer, speech_transformer.decoding.search; "
            "print(sorted(m for m in ('gradio', 'librosa', 'sentencepiece', 'tiktoken', 'jiwer') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def encoder_variant(seed: int = 0, **overrides) -> SpeechTransformer:
    torch.manual_seed(seed)
    c = preset("tiny", vocab_size=64, encoder_layers=2, decoder_layers=1, dropout=0.0, **overrides)
    return SpeechTransformer(c).eval()


def test_cheaper_stems_and_conformer_blocks_never_see_padding():
    """Stacking (x4, x6), conv2d x6/x8 and the Conformer convolution: a padded batch row equals the row alone."""
    import pytest

    feats = torch.randn(2, 203, 80)
    lengths = torch.tensor([203, 117])
    for overrides, factor in (({"subsampling": "stack"}, 4), ({"subsampling": "stack", "subsampling_factor": 6}, 6),
                              ({"subsampling_factor": 6}, 6), ({"subsampling_factor": 8}, 8),
                              ({"conformer_conv": True, "conv_kernel": 7}, 4)):
        model = encoder_variant(**overrides)
        assert model.encoder_frame_seconds == pytest.approx(factor * 0.01)
        with torch.no_grad():
            memory, out_lengths = model.encode(feats, lengths)
            alone, alone_lengths = model.encode(feats[1:, :117], lengths[1:])
        assert memory.shape[1] == int(out_lengths[0]) and abs(int(out_lengths[0]) - 203 // factor) <= 1
        assert out_lengths[1] == alone_lengths[0]
        torch.testing.assert_close(memory[1, : int(alone_lengths[0])], alone[0], atol=1e-4, rtol=1e-4)
    assert encoder_variant(subsampling="stack").num_parameters() < encoder_variant().num_parameters()
    with pytest.raises(ValueError, match="4, 6 or 8"):
        preset("tiny", subsampling_factor=5)


def test_intermediate_ctc_is_a_training_loss_only():
    """Same weights with and without the intermediate layer: identical encoder output, a different CTC loss."""
    plain, inter = encoder_variant(), encoder_variant(intermediate_ctc_layer=1)
    inter.load_state_dict(plain.state_dict())  # no extra parameters
    feats, lengths = torch.randn(2, 150, 80), torch.tensor([150, 120])
    targets, target_lengths = torch.randint(2, 64, (2, 6)), torch.tensor([6, 4])
    with torch.no_grad():
        torch.testing.assert_close(inter.encode(feats, lengths)[0], plain.encode(feats, lengths)[0])
        a = plain(feats, lengths, targets, target_lengths, intermediate_ctc_weight=0.5)
        b = inter(feats, lengths, targets, target_lengths, intermediate_ctc_weight=0.5)
        c = inter(feats, lengths, targets, target_lengths, intermediate_ctc_weight=0.0)
    assert float(a.ctc) == float(c.ctc) and float(b.ctc) != float(a.ctc)
    assert float(a.attention) == float(b.attention)


def test_a_ctc_branch_reads_its_own_top_blocks_and_leaves_the_memory_alone():
    """`ctc_branch_layers`: the encoder states are the plain model's; the CTC head reads the branch's copy of the
    top block, so with the same weights as the top block it gives what the plain model gives."""
    plain, branched = encoder_variant(), encoder_variant(ctc_branch_layers=1)
    state = plain.state_dict()
    top = len(plain.encoder.blocks) - 1
    state.update({k.replace(f"encoder.blocks.{top}.", "encoder.ctc_blocks.0."): v for k, v in plain.state_dict().items()
                  if k.startswith(f"encoder.blocks.{top}.")})
    state.update({k.replace("encoder.norm.", "encoder.ctc_norm."): v for k, v in plain.state_dict().items()
                  if k.startswith("encoder.norm.")})
    branched.load_state_dict(state)
    feats, lengths = torch.randn(2, 150, 80), torch.tensor([150, 120])
    with torch.no_grad():
        memory, n, ctc = branched.encode_with_ctc(feats, lengths)
        torch.testing.assert_close(memory, plain.encode(feats, lengths)[0])
        alone, _, none = branched.encode_with_ctc(feats, lengths, ctc=False)  # where nothing reads CTC
        assert none is None and torch.equal(alone, memory)
        torch.testing.assert_close(ctc, plain.ctc_log_probs(memory))
        branched.encoder.ctc_blocks[0].ff[0].weight.mul_(0.5)  # the branch alone changes
        memory2, _, ctc2 = branched.encode_with_ctc(feats, lengths)
    assert torch.equal(memory2, memory) and not torch.allclose(ctc2, ctc)
    with pytest.raises(ValueError, match="encode_with_ctc"):
        branched.ctc_log_probs(memory)  # the encoder states are not what its head reads
    with pytest.raises(ValueError, match="ctc_branch_layers"):
        preset("tiny", ctc_branch_layers=1, intermediate_ctc_layer=1)


def concatenated(*linears: torch.nn.Linear) -> torch.nn.Linear:
    out = torch.nn.Linear(linears[0].in_features, sum(x.out_features for x in linears))
    with torch.no_grad():
        out.weight.copy_(torch.cat([x.weight for x in linears]))
        out.bias.copy_(torch.cat([x.bias if x.bias is not None else torch.zeros(x.out_features) for x in linears]))
    return out


def test_fused_projections_compute_what_the_separate_ones_do():
    """`quantize_model` gives each attention one product for query, key and value (and one for key and value):
    in float32 they must compute what the separate projections compute, masked and unmasked."""
    from speech_transformer.model.transformer import MultiHeadAttention

    model = tiny_model()
    feats = torch.randn(2, 200, 80)
    with torch.no_grad():
        expected = [model.encode(feats, torch.tensor(n)) for n in ([200, 200], [200, 150])]
        memory_kv = model.decoder.memory_kv(expected[1][0])
        for attention in (m for m in model.modules() if isinstance(m, MultiHeadAttention)):
            attention.fused_qkv = concatenated(attention.query, attention.key, attention.value)
            attention.fused_kv = concatenated(attention.key, attention.value)
        for (memory, _), n in zip(expected, ([200, 200], [200, 150])):
            torch.testing.assert_close(model.encode(feats, torch.tensor(n))[0], memory, atol=1e-5, rtol=1e-5)
        for (k, v), (fk, fv) in zip(memory_kv, model.decoder.memory_kv(expected[1][0])):
            torch.testing.assert_close((fk, fv), (k, v), atol=1e-5, rtol=1e-5)
