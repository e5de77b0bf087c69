"""End to end: a tiny model learns five real utterances (conftest.train_overfit_model), is saved,
and the loaded directory transcribes them with every search."""

import pytest

from speech_transformer.audio.loading import load_audio
from speech_transformer.decoding.options import DecodingOptions
from speech_transformer.recognition.recognizer import Recognizer


@pytest.mark.parametrize("options", [DecodingOptions(beam_size=3, ctc_weight=0.3),
                                     DecodingOptions(beam_size=1, ctc_weight=0.0),
                                     DecodingOptions(method="ctc")], ids=["beam3+ctc", "greedy", "ctc"])
def test_saved_model_transcribes_what_it_learned(overfit_model_dir, overfit_clips, options):
    recognizer = Recognizer.from_dir(overfit_model_dir)
    waves = [load_audio(u.audio) for u in overfit_clips]
    results = recognizer.recognize(waves, options, batch_seconds=4.0)  # several batches, padded
    assert [r.text for r in results] == [u.text for u in overfit_clips]
    assert all(r.avg_logprob <= 0 and r.tokens for r in results)


def test_one_call_gives_text_times_attention_and_posteriors(overfit_model_dir, overfit_clips):
    recognizer = Recognizer.from_dir(overfit_model_dir)
    waves = [load_audio(u.audio) for u in overfit_clips[:3]]
    plain = recognizer.recognize(waves)  # the model's preferred decoding (greedy: it stores none)
    full = recognizer.recognize(waves, align=True, attention=True, posteriors=True)
    for wave, p, r, u in zip(waves, plain, full, overfit_clips):
        assert p.text == r.text == u.text and p.tokens == r.tokens
        assert [w.word for w in r.words] == u.text.split()
        assert all(0 <= w.start <= w.end <= len(wave) / 16_000 for w in r.words)
        assert r.spans is not None and len(r.spans) == len(r.tokens)
        layers, heads = len(recognizer.model.decoder.blocks), recognizer.model.config.n_heads
        assert r.cross_attention.shape == (layers, heads, len(r.tokens) + 1, r.frames)
        assert r.ctc_log_probs.shape == (r.frames, recognizer.model.config.vocab_size)


def test_an_encoding_decodes_several_ways_without_encoding_again(overfit_model_dir, overfit_clips):
    recognizer = Recognizer.from_dir(overfit_model_dir)
    waves = [load_audio(u.audio) for u in overfit_clips]
    [(rows, enc)] = list(recognizer.batches(waves, batch_seconds=1e9))
    assert sorted(rows) == list(range(len(waves))) and len(enc) == len(waves)
    for options in (DecodingOptions(), DecodingOptions(method="ctc")):
        texts = [r.text for r in recognizer.decode(enc, options)]
        assert texts == [r.text for r in recognizer.recognize([waves[i] for i in rows], options)]


def test_a_draft_gives_the_same_greedy_text_in_fewer_decoder_steps(data_dir, monkeypatch):
    """The default model in float32 on jfk: greedy decoding reads a draft (a stream's last partial) in one pass
    and writes only where it differs; right, half-right or wrong, the text is greedy's own."""
    from speech_transformer.decoding.scorers import DecoderScorer

    recognizer = Recognizer.from_dir(None, compute="float32")
    enc = recognizer.encode([load_audio(data_dir / "samples" / "jfk.flac")])
    steps = []
    logits = DecoderScorer.logits
    monkeypatch.setattr(DecoderScorer, "logits", lambda self, seqs: steps.append(1) or logits(self, seqs))
    (plain,) = recognizer.decode(enc)
    greedy_steps, words = len(steps), plain.text.split()
    assert greedy_steps == len(plain.tokens) + 1 and len(words) > 15
    half = " ".join(words[:8] + ["elephant"] + words[9:])
    for draft, at_most in ((plain.text, 1), (" ".join(words[:-3]), 8), (half, greedy_steps - 5),
                           ("Nothing like it at all.", greedy_steps)):
        steps.clear()
        (r,) = recognizer.decode(enc, draft=draft)
        assert r.tokens == plain.tokens and r.text == plain.text
        assert len(steps) <= at_most, draft
