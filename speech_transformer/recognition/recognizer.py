"""The recogniser: the one way from waveforms to hypotheses.

A loaded model, its tokenizer and its preferred decoding turn 16 kHz waveforms into `Recognition`s in
length-sorted padded batches: pad -> front end -> encoder -> decoding (`decoding.decode`), and on request
what callers need beside the text (token and word times from the one aligner, cross-attention weights),
so that nobody runs the encoder a second time. `transcribe`, `evaluate`'s systems, the demo and the
trainer's validation all call it.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from speech_transformer.model import checkpoint
from speech_transformer import pretrained
from speech_transformer.model.align import (
    TokenSpan,
    Word,
    align_tokens,
    display_words,
    token_times,
    words_from_tokens,
)
from speech_transformer.audio.loading import HOP_LENGTH, SAMPLE_RATE
from speech_transformer.decoding.options import DecodingOptions
from speech_transformer.decoding.fallback import decode_with_fallback
from speech_transformer.decoding.search import Hypothesis
from speech_transformer.audio.features import length_sorted_batches, pad_waveforms
from speech_transformer.decoding.lexicon import LexiconSearch
from speech_transformer.decoding.token_lm import LM_FILE, NgramLM
from speech_transformer.utils.runtime import malloc_trim
from speech_transformer.model.transformer import SpeechTransformer
from speech_transformer.text.normalize import normalize_transcript
from speech_transformer.text.tokenizer import TextTokenizer, respell


ENCODER_SECONDS = 30.0  # padded audio per encoder call (a batch's rows are encoded in groups this long)


@dataclass
class Encoding:
    """What the encoder made of a padded batch: everything a decoder, aligner or grammar matcher reads."""

    memory: torch.Tensor  # (B, S, D) encoder states
    lengths: torch.Tensor  # (B,) valid frames of each row
    ctc_log_probs: torch.Tensor | None  # (B, S, V) CTC log-posteriors (blank = special.blank); None: no CTC head
    seconds: list[float] = field(default_factory=list)  # each waveform's length

    def __len__(self) -> int:
        return self.memory.shape[0]


@dataclass
class Recognition:
    text: str
    tokens: list[int]
    score: float  # log-probability (joint score for beam search)
    avg_logprob: float  # per token (+ <eos>) for the decoder's searches, per frame for CTC greedy
    frames: int = 0  # valid encoder frames
    no_speech_prob: float | None = None  # models with a no-speech token (Whisper)
    spans: list[TokenSpan] | None = None  # with align=True: CTC forced alignment (None: could not align)
    words: list[Word] = field(default_factory=list)  # with align=True: times in seconds from the waveform's start
    cross_attention: torch.Tensor | None = None  # with attention=True: `(layers, heads, L + 1, S)`
    ctc_tokens: list[int] | None = None  # with align=True: the tokens of `spans`, in the CTC head's vocabulary
    decoder_tokens: list[int] | None = None  # with attention=True: the L tokens of `cross_attention`, the decoder's
    ctc_log_probs: torch.Tensor | None = None  # with posteriors=True: `(S, V)` of the valid frames


def uses_ctc(options: DecodingOptions) -> bool:
    """Whether a decoding reads the CTC head's posteriors."""
    return options.method in ("ctc", "lexicon") or options.ctc_weight > 0


def avg_logprob(h: Hypothesis, frames: int, options: DecodingOptions) -> float:
    per = max(1, frames) if options.method == "ctc" else len(h.tokens) + 1
    return h.score / per if math.isfinite(h.score) else h.score


class Recognizer:
    def __init__(self, model: SpeechTransformer, tokenizer: TextTokenizer, info: dict | None = None,
                 lm: NgramLM | None = None, options: DecodingOptions | None = None, words=None,
                 ctc_tokenizer: TextTokenizer | None = None):
        self.model = model.eval()
        self.tokenizer = tokenizer  # the decoder's vocabulary
        self.ctc_tokenizer = ctc_tokenizer or tokenizer  # the CTC head's (a distilled student's own pieces)
        self.info = info or {}  # the model directory's config.json
        self.lm = lm  # token LM fused by beam search when options.lm_weight > 0
        self.words = words or LexiconSearch(self.ctc_tokenizer, tokenizer)  # the word search of method "lexicon"
        self.options = options or DecodingOptions()  # the model's preferred decoding

    @classmethod
    def from_dir(cls, name_or_dir: str | os.PathLike | None = None, device: str = "cpu",
                 compute: str = "auto") -> "Recognizer":
        """Load a model directory, a shipped model's name, or (None) the embedded default model; `compute="int8"`
        runs its matrices in int8 (bfloat16 over frames where the CPU has it: `model.quantize`), "auto" (the
        default) does so for a model stored quantized (the shipped ones) on the CPU, "float32" never.

        The preferred decoding is config.json's "decoding" entry (its method, and the tuned settings of each
        search: `method=lexicon` alone gives the model's tuned lexicon search); greedy without one.
        """
        directory = pretrained.resolve(name_or_dir)
        model, tokenizer, config = checkpoint.load_model(directory, device, compute)  # checks every section
        lm = NgramLM.load(directory / LM_FILE) if (directory / LM_FILE).is_file() else None
        options = checkpoint.ModelDirectory.from_config(config, directory / checkpoint.CONFIG_FILE).decoding
        own_ctc = checkpoint.model_ctc_tokenizer(directory, config) if config.get("ctc_tokenizer") else None
        return cls(model, tokenizer, config, lm, options, ctc_tokenizer=own_ctc)

    def vocabulary(self, options: DecodingOptions) -> TextTokenizer:
        """The tokenizer of what `options`' search emits: the CTC head's for "ctc" and "lexicon"."""
        if self.ctc_tokenizer is not self.tokenizer and options.method == "attention" and options.ctc_weight > 0:
            raise ValueError("this model's CTC head and decoder have their own vocabularies: the attention search "
                             "cannot join CTC prefix scores (use ctc_weight=0, or method ctc or lexicon)")
        return self.ctc_tokenizer if options.method in ("ctc", "lexicon") else self.tokenizer

    @property
    def device(self) -> torch.device:
        return self.model.device

    def recognize(self, waveforms: list[np.ndarray], options: DecodingOptions | None = None,
                  batch_seconds: float = 120.0, align: bool = False, attention: bool = False,
                  posteriors: bool = False) -> list[Recognition]:
        """16 kHz mono waveforms `(T_i,)` -> one Recognition each, decoded in length-sorted padded batches.

        `options` default to the model's preferred decoding. `align` adds token spans and word times,
        `attention` the decoder's cross-attention weights over the encoder frames, `posteriors` the CTC head's.
        """
        results: list[Recognition | None] = [None] * len(waveforms)
        ctc = align or posteriors or uses_ctc(options or self.options)
        for rows, enc in self.batches(waveforms, batch_seconds, ctc):
            for i, r in zip(rows, self.decode(enc, options, align, attention, posteriors)):
                results[i] = r
            del enc
            if self.device.type == "cpu":  # the batch's freed activations go back to the OS: memory stays flat
                malloc_trim()  # from batch to batch instead of keeping each one's peak (~250 MB, Whisper base)
        return results  # type: ignore[return-value]

    def batches(self, waveforms: list[np.ndarray], batch_seconds: float = 120.0, ctc: bool = True
                ) -> Iterator[tuple[list[int], Encoding]]:
        """Length-sorted padded batches of at most `batch_seconds` padded audio: (indices, their Encoding)."""
        for batch in length_sorted_batches([len(w) for w in waveforms], batch_seconds):
            yield batch, self.encode([waveforms[j] for j in batch], ctc)

    @torch.inference_mode()
    def encode(self, waveforms: list[np.ndarray], ctc: bool = True) -> Encoding:
        """One padded batch of 16 kHz waveforms `(T_i,)` -> its Encoding; `ctc=False` leaves out the CTC head
        (and a CTC branch's blocks: a seventh of a distilled student's encoder) where nothing will read it."""
        audio, lengths = pad_waveforms(waveforms)
        feats, feat_lengths = self.model.frontend(audio.to(self.device), lengths.to(self.device))
        # the encoder a few rows at a time: its attention scores grow with rows x frames^2 (Whisper's 30 s windows:
        # 72 MB per row and layer), the decoder then searches the whole batch at once
        rows = max(1, int(ENCODER_SECONDS * SAMPLE_RATE / HOP_LENGTH / max(1, feats.shape[1])))  # feats (B, F, mels)
        parts = [self.model.encode_with_ctc(feats[i:i + rows], feat_lengths[i:i + rows], ctc)
                 for i in range(0, len(feats), rows)]
        S = max(m.shape[1] for m, _, _ in parts)
        memory = torch.cat([F.pad(m, (0, 0, 0, S - m.shape[1])) for m, _, _ in parts])
        memory_lengths = torch.cat([n for _, n, _ in parts])
        ctc = None if parts[0][2] is None else torch.cat([F.pad(c, (0, 0, 0, S - c.shape[1])) for _, _, c in parts])
        return Encoding(memory, memory_lengths, ctc, [len(w) / SAMPLE_RATE for w in waveforms])

    @torch.inference_mode()
    def decode(self, enc: Encoding, options: DecodingOptions | None = None, align: bool = False,
               attention: bool = False, posteriors: bool = False, draft: list[int] | str | None = None
               ) -> list[Recognition]:
        """An Encoding -> one Recognition per row (decode one encoding several ways without encoding again).

        `draft`: a guess of the tokens of a one-row Encoding, or of its text (a stream's last partial); greedy
        decoding reads them in one pass and writes only from where they differ (greedy's text in fewer decoder
        steps; in int8 a near tie may go the other way: `search.follow_draft`). A text's tokens may differ from
        how the decoder spells it: tokens are the better guess."""
        options = options or self.options
        vocab = self.vocabulary(options)
        tokens = None
        if options.is_greedy and draft:
            tokens = vocab.encode(" " + draft.strip()) if isinstance(draft, str) else draft
        hyps = decode_with_fallback(self.model, enc.memory, enc.lengths, options, vocab.special, vocab.decode,
                                    self.lm, self.words, enc.ctc_log_probs, tokens)
        out = []
        for b, h in enumerate(hyps):
            frames = int(enc.lengths[b])
            r = Recognition(vocab.decode(h.tokens).strip(), h.tokens, h.score,
                            avg_logprob(h, frames, options), frames, h.no_speech_prob)
            if align:
                self._align(r, enc, b, enc.seconds[b], vocab)
            if posteriors and enc.ctc_log_probs is not None:
                r.ctc_log_probs = enc.ctc_log_probs[b, :frames].cpu()
            out.append(r)
        if attention:
            self._add_cross_attention(out, enc, vocab)
        return out

    def _align(self, r: Recognition, enc: Encoding, b: int, seconds: float, vocab: TextTokenizer) -> None:
        """Token spans and word times by CTC forced alignment; where the text is in the decoder's own vocabulary
        (a distilled student's), of its words as the CTC head spells them (upper case, no punctuation)."""
        ctc = self.ctc_tokenizer
        tokens = respell(r.tokens, vocab, ctc)
        r.spans = (None if enc.ctc_log_probs is None else
                   align_tokens(enc.ctc_log_probs[b, :r.frames], tokens, ctc.special.blank))
        times = token_times(r.spans, tokens, ctc, 0.0, seconds, self.model.encoder_frame_seconds,
                            self.model.encoder_frame_offset)
        r.words = words_from_tokens(tokens, times, ctc, 0.0, seconds)
        r.ctc_tokens = tokens
        if vocab is not ctc:  # the decoder's own words, with the times of their spelling
            r.words = display_words(r.text, r.words, normalize_transcript)

    def _add_cross_attention(self, results: list[Recognition], enc: Encoding, vocab: TextTokenizer) -> None:
        from speech_transformer.model.attention_maps import cross_attention

        for r in results:
            r.decoder_tokens = respell(r.tokens, vocab, self.tokenizer)
        weights = cross_attention(self.model, enc.memory, enc.lengths, [r.decoder_tokens for r in results],
                                  self.tokenizer.special.prompt)
        for b, r in enumerate(results):
            r.cross_attention = weights[b, :, :, :len(r.decoder_tokens) + 1, :r.frames].cpu()
