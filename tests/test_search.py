import numpy as np
import torch

from speech_transformer.decoding import search as decoding
from speech_transformer.decoding.scorers import DecoderScorer, default_filters
from speech_transformer.decoding.search import (Beams, DecodingOptions, Limits, TopK, attention_search, beam_decoder,
                                                ctc_greedy_search, max_lengths, repeats_too_often, search)
from speech_transformer.model.transformer import SpeechTransformer, preset
from speech_transformer.text.tokenizer import SOS_EOS_ID, SpecialTokens


def test_repetition_guard():
    assert repeats_too_often([5] * 5, max_repeats=4)
    assert not repeats_too_often([5] * 4, max_repeats=4)
    assert repeats_too_often([1, 2, 3] + [7, 8] * 5, max_repeats=4)
    assert not repeats_too_often([1, 2, 3, 4, 5, 6, 7, 8, 9], max_repeats=4)


def beam_search(model, memory, lengths, options, special=SpecialTokens()):
    """The beam-search chooser in the one loop, whatever the beam size (decode picks greedy for beam 1)."""
    limits = Limits(max_lengths(lengths, options), options.max_repeats)
    W = options.beam_size
    chooser = beam_decoder([], TopK(W), special, limits)
    decoder = DecoderScorer(model, memory, lengths, special, default_filters(special, memory.device), W)
    return search(decoder, chooser, Beams.start(memory.shape[0], W, memory.device), limits).best(1.0)


def test_beam_size_one_equals_greedy():
    for seed in range(3):
        torch.manual_seed(seed)
        model = SpeechTransformer(preset("tiny", vocab_size=50, encoder_layers=2, decoder_layers=2)).eval()
        with torch.no_grad():
            memory, lengths = model.encode(torch.randn(3, 400, 80), torch.tensor([400, 300, 120]))
            # avoid the untrained model's <eos> right at the start, so sequences have some length
            model.decoder.output.weight.data[SOS_EOS_ID] *= 0.0
        options = DecodingOptions(beam_size=1, ctc_weight=0.0, max_length=30)
        greedy = attention_search(model, memory, lengths, options)
        beam = beam_search(model, memory, lengths, options)
        assert [h.tokens for h in greedy] == [h.tokens for h in beam]
        assert any(len(h.tokens) > 3 for h in greedy)
        for g, b in zip(greedy, beam):
            assert abs(g.score - b.score) < 1e-3


def test_utterances_that_are_done_leave_the_batch_and_the_others_decode_as_alone(monkeypatch):
    torch.manual_seed(0)
    model = SpeechTransformer(preset("tiny", vocab_size=50, encoder_layers=2, decoder_layers=2)).eval()
    with torch.no_grad():
        memory, lengths = model.encode(torch.randn(3, 400, 80), torch.tensor([400, 130, 260]))
        model.decoder.output.weight.data[SOS_EOS_ID] *= 0.0  # hypotheses run to their own length limits
    left = []
    keep = DecoderScorer.keep
    monkeypatch.setattr(DecoderScorer, "keep", lambda self, utterances, rows: left.append(len(rows)) or
                        keep(self, utterances, rows))
    for beam, ctc_weight in ((1, 0.0), (3, 0.0), (3, 0.3)):  # the untrained decoder loops: no loop guard
        options = DecodingOptions(beam_size=beam, ctc_weight=ctc_weight, max_length=60, max_repeats=100)
        left.clear()
        batch = decoding.decode(model, memory, lengths, options)
        assert left and left == sorted(left, reverse=True) and left[-1] < 3 * options.beam_size
        for i, h in enumerate(batch):
            n = int(lengths[i])
            alone = decoding.decode(model, memory[i:i + 1, :n], lengths[i:i + 1], options)[0]
            assert alone.tokens == h.tokens and abs(alone.score - h.score) < 1e-3


def test_pure_ctc_beam_agrees_with_ctc_greedy_on_a_peaked_ctc():
    torch.manual_seed(1)
    model = SpeechTransformer(preset("tiny", vocab_size=20, encoder_layers=1, decoder_layers=1)).eval()
    path = [0, 5, 5, 0, 7, 0, 0, 9, 9, 9, 0, 5, 0] * 3  # blank-separated tokens: 5 7 9 5 repeated
    logits = torch.full((1, len(path), 20), -10.0)
    logits[0, torch.arange(len(path)), torch.tensor(path)] = 10.0
    model.ctc_log_probs = lambda memory: logits.log_softmax(-1)  # a CTC head that is sure of its path
    memory = torch.randn(1, len(path), model.config.d_model)
    lengths = torch.tensor([len(path)])
    ctc = ctc_greedy_search(logits.log_softmax(-1), lengths)[0]
    options = DecodingOptions(beam_size=3, ctc_weight=1.0, max_tokens_per_frame=1.0)
    beam = decoding.decode(model, memory, lengths, options)[0]
    assert ctc.tokens == [5, 7, 9, 5] * 3
    assert beam.tokens == ctc.tokens


def test_greedy_means_greedy_and_ctc_weight_makes_a_joint_search(monkeypatch):
    torch.manual_seed(0)
    model = SpeechTransformer(preset("tiny", vocab_size=30, encoder_layers=1, decoder_layers=1)).eval()
    with torch.no_grad():
        memory, lengths = model.encode(torch.randn(2, 200, 80), torch.tensor([200, 150]))
    called = []
    monkeypatch.setattr(decoding, "search", lambda decoder, chooser, beams, limits, start=0:
                        called.append((type(chooser).__name__, beams.W)) or beams)
    decoding.decode(model, memory, lengths, DecodingOptions(beam_size=1))
    decoding.decode(model, memory, lengths, DecodingOptions(beam_size=1, ctc_weight=0.3))
    decoding.decode(model, memory, lengths, DecodingOptions(beam_size=4))
    attention_search(model, memory, lengths, DecodingOptions(beam_size=4, best_of=3), temperature=0.5,
                     generator=torch.Generator())
    assert called == [("GreedyDecoder", 1), ("BeamSearchDecoder", 1), ("BeamSearchDecoder", 4), ("GreedyDecoder", 3)]
    assert DecodingOptions(beam_size=1).is_greedy and DecodingOptions().describe() == "greedy"
    assert DecodingOptions(beam_size=4, ctc_weight=0.3).describe() == "beam 4, CTC weight 0.3"


# --- Whisper's decoding pieces, on the real Whisper base weights that the test extra installs -------------

def test_whisper_suppresses_non_speech_tokens_and_a_blank_start_as_openai_whisper_does(whisper_base):
    import whisper.tokenizer

    theirs = whisper.tokenizer.get_tokenizer(True, num_languages=99, language="en", task="transcribe")
    special = whisper_base.tokenizer.special
    assert set(theirs.non_speech_tokens) <= set(special.suppress)
    assert special.suppress_at_start == (*theirs.encode(" "), theirs.eot) and special.no_speech == theirs.no_speech


def test_whisper_noise_gives_no_text_and_speech_gives_text(whisper_base, data_dir):
    from speech_transformer.audio.loading import load_audio

    noise = (np.random.default_rng(0).standard_normal(3 * 16_000) * 0.01).astype(np.float32)
    jfk = load_audio(data_dir / "samples" / "jfk.flac")
    speech, hiss = whisper_base.recognize([jfk, noise], DecodingOptions())
    assert speech.text.startswith("And so my fellow Americans") and speech.no_speech_prob < 0.1
    assert hiss.no_speech_prob > 0.6 and hiss.text == "" and hiss.tokens == []



