"""Whisper's temperature fallback and no-speech decision around `search.decode`."""

from __future__ import annotations

import zlib
from typing import Callable

import torch
from torch import Tensor

from speech_transformer.decoding.options import DecodingOptions
from speech_transformer.decoding.search import Hypothesis, attention_search, decode
from speech_transformer.text.tokenizer import SpecialTokens


def compression_ratio(text: str) -> float:
    """gzip's ratio of a text: high for a decoder stuck repeating itself."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def needs_fallback(h: Hypothesis, text: str, options: DecodingOptions) -> bool:
    """Whisper's test for decoding again at a higher temperature: a loop, or an unsure result that is not silence."""
    if h.no_speech_prob is not None and h.no_speech_prob > options.no_speech_threshold:
        return False
    return (compression_ratio(text) > options.compression_ratio_threshold
            or h.normalized(1.0) < options.logprob_threshold)


def is_silence(h: Hypothesis, options: DecodingOptions) -> bool:
    """Whisper's no-speech decision: the no-speech token is likely and the text unsure."""
    return (h.no_speech_prob is not None and h.no_speech_prob > options.no_speech_threshold
            and h.normalized(1.0) < options.logprob_threshold)


def sample_search(model, memory: Tensor, lengths: Tensor, options: DecodingOptions, special: SpecialTokens,
                  temperature: float, generator: torch.Generator) -> list[Hypothesis]:
    """`options.best_of` samples per utterance at `temperature`; the most probable (length-normalised) is kept."""
    return attention_search(model, memory, lengths, options, special, temperature=temperature, generator=generator)


@torch.no_grad()
def decode_with_fallback(model, memory: Tensor, lengths: Tensor, options: DecodingOptions, special: SpecialTokens,
                         text: Callable[[list[int]], str], lm=None, words=None,
                         ctc_log_probs: Tensor | None = None, draft: list[int] | None = None) -> list[Hypothesis]:
    """`decode`, then Whisper's temperature fallback for the results `needs_fallback` picks (method "attention"),
    then its no-speech decision (an empty hypothesis where `is_silence`)."""
    hyps = decode(model, memory, lengths, options, special, lm, words, ctc_log_probs, draft)
    if options.method == "attention" and len(options.temperatures) > 1:
        generator = torch.Generator(device=memory.device).manual_seed(options.seed)
        for temperature in options.temperatures[1:]:
            redo = [b for b, h in enumerate(hyps) if needs_fallback(h, text(h.tokens), options)]
            if not redo:
                break
            rows = torch.tensor(redo, device=memory.device)
            again = sample_search(model, memory[rows], lengths[rows], options, special, temperature, generator)
            for b, h in zip(redo, again):
                h.no_speech_prob = hyps[b].no_speech_prob
                hyps[b] = h
    return [Hypothesis([], h.score, h.no_speech_prob) if is_silence(h, options) else h for h in hyps]
