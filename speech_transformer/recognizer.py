"""The recogniser: a loaded model + tokenizer that turns waveforms into text, in batches."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from speech_transformer import checkpoint, pretrained
from speech_transformer.audio import SAMPLE_RATE
from speech_transformer.decoding import DecodingOptions, decode
from speech_transformer.features import pad_waveforms
from speech_transformer.lm import LM_FILE, NgramLM
from speech_transformer.model import SpeechTransformer
from speech_transformer.tokenizer import Tokenizer


@dataclass
class Encoding:
    """What the encoder made of a padded batch: everything a decoder, aligner or grammar matcher reads."""

    memory: torch.Tensor  # (B, S, D) encoder states
    lengths: torch.Tensor  # (B,) valid frames of each row
    ctc_log_probs: torch.Tensor | None  # (B, S, V) CTC log-posteriors (blank = special.blank); None: no CTC head
    frame_seconds: float  # one encoder frame, in seconds

    def __len__(self) -> int:
        return self.memory.shape[0]


@dataclass
class Recognition:
    text: str
    tokens: list[int]
    score: float  # log-probability (joint score for beam search)
    avg_logprob: float


class Recognizer:
    def __init__(self, model: SpeechTransformer, tokenizer: Tokenizer, info: dict | None = None,
                 lm: NgramLM | None = None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.info = info or {}
        self.lm = lm  # used by beam search when DecodingOptions.lm_weight > 0

    @classmethod
    def from_dir(cls, name_or_dir: str | os.PathLike | None = None, device: str = "cpu") -> "Recognizer":
        """Load a model directory, a shipped model's name, or (None) the embedded default model."""
        directory = pretrained.resolve(name_or_dir)
        model, tokenizer, config = checkpoint.load_model(directory, device)
        lm = NgramLM.load(directory / LM_FILE) if (directory / LM_FILE).is_file() else None
        return cls(model, tokenizer, config, lm)

    @property
    def device(self) -> torch.device:
        return self.model.device

    @torch.inference_mode()
    def recognize(self, waveforms: list[np.ndarray], options: DecodingOptions = DecodingOptions(),
                  batch_seconds: float = 120.0) -> list[Recognition]:
        """16 kHz mono waveforms -> one Recognition each, decoded in length-sorted batches."""
        order = sorted(range(len(waveforms)), key=lambda i: len(waveforms[i]))
        results: list[Recognition | None] = [None] * len(waveforms)
        batch: list[int] = []
        for i in order + [None]:
            if i is not None and (not batch or (len(batch) + 1) * len(waveforms[i]) <= batch_seconds * SAMPLE_RATE):
                batch.append(i)
                continue
            for j, r in zip(batch, self._recognize_batch([waveforms[j] for j in batch], options)):
                results[j] = r
            batch = [] if i is None else [i]
        return results  # type: ignore[return-value]

    @torch.inference_mode()
    def encode(self, waveforms: list[np.ndarray]) -> Encoding:
        """One padded batch of 16 kHz waveforms `(T_i,)` -> its Encoding."""
        audio, lengths = pad_waveforms(waveforms)
        feats, feat_lengths = self.model.frontend(audio.to(self.device), lengths.to(self.device))
        memory, memory_lengths = self.model.encode(feats, feat_lengths)
        ctc = self.model.ctc_log_probs(memory).float() if self.model.ctc_head is not None else None
        return Encoding(memory, memory_lengths, ctc, self.model.encoder_frame_seconds)

    def _recognize_batch(self, waveforms: list[np.ndarray], options: DecodingOptions) -> list[Recognition]:
        enc = self.encode(waveforms)
        memory, memory_lengths = enc.memory, enc.lengths
        out = []
        for h in decode(self.model, memory, memory_lengths, options, self.tokenizer.special, self.lm):
            n = max(1, len(h.tokens) + 1)
            out.append(Recognition(self.tokenizer.decode(h.tokens), h.tokens, h.score, h.score / n))
        return out
