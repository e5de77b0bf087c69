"""Tests of speech_transformer/decoding/fallback.py: Whisper's temperature fallback."""

import torch

from speech_transformer.decoding.options import DecodingOptions


def test_temperature_fallback_samples_again_only_where_needed(whisper_base, data_dir):
    from speech_transformer.audio.loading import load_audio
    from speech_transformer.decoding.fallback import compression_ratio, decode_with_fallback, needs_fallback, sample_search

    assert compression_ratio("the cat " * 20) > 2.4 > compression_ratio("And so my fellow Americans, ask not")
    model, special, text = whisper_base.model, whisper_base.tokenizer.special, whisper_base.tokenizer.decode
    enc = whisper_base.encode([load_audio(data_dir / "samples" / "jfk.flac")])
    plain = DecodingOptions(max_length=12)
    fallback = DecodingOptions(max_length=12, temperatures=(0.0, 1.0), best_of=2)
    first = decode_with_fallback(model, enc.memory, enc.lengths, plain, special, text)
    assert not needs_fallback(first[0], text(first[0].tokens), fallback)  # a sure result is kept as it is
    assert decode_with_fallback(model, enc.memory, enc.lengths, fallback, special, text)[0].tokens == first[0].tokens
    unsure = DecodingOptions(max_length=12, temperatures=(0.0, 1.0), best_of=2, logprob_threshold=0.0)  # all unsure
    again = decode_with_fallback(model, enc.memory, enc.lengths, unsure, special, text)
    sampled = sample_search(model, enc.memory, enc.lengths, unsure, special, 1.0,
                            torch.Generator().manual_seed(unsure.seed))
    assert again[0].tokens == sampled[0].tokens  # the temperature-1 samples, seeded, replaced the greedy result
