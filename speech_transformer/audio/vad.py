"""Voice-activity segmentation with Silero VAD, streamed, into chunks the recogniser handles well.

The model is the one the `silero-vad` package ships (`load_silero_vad()`, TorchScript, offline).
Silero scores 512-sample windows (32 ms at 16 kHz) one after another: a stateless convolutional
encoder per window (each window also sees the 64 samples before it), then an LSTM cell that
carries state from window to window. Calling the TorchScript model once per window costs ~1 ms
per 32 ms of audio on one core, so `SileroVad` runs the same weights, taken from the loaded
model, as one batched encoder pass over a block of windows plus one `nn.LSTM` pass over the
sequence: the same probabilities (to float rounding; `tests/test_vad.py` checks it) about ten
times faster. State (the LSTM's and the last 64 samples) carries over between blocks, so a file
is scored block by block and never has to be in memory whole.

Probabilities become speech runs with silero's own `get_speech_timestamps_from_probs`; runs are
merged across short pauses into chunks of at most `max_chunk_seconds`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from speech_transformer.audio.loading import SAMPLE_RATE

WINDOW = 512  # samples per silero window at 16 kHz
CONTEXT = 64  # samples of the previous window each window also sees
_WEIGHTS = {  # our name -> name in the TorchScript model's state_dict
    "stft": "stft.forward_basis_buffer",
    **{f"conv{i + 1}.{p}": f"encoder.{i}.reparam_conv.{p}" for i in range(4) for p in ("weight", "bias")},
    "final.weight": "decoder.decoder.2.weight", "final.bias": "decoder.decoder.2.bias",
}
_LSTM = {"weight_ih_l0": "decoder.rnn.weight_ih", "weight_hh_l0": "decoder.rnn.weight_hh",
         "bias_ih_l0": "decoder.rnn.bias_ih", "bias_hh_l0": "decoder.rnn.bias_hh"}


@dataclass(frozen=True)
class VadOptions:
    threshold: float = 0.5  # speech probability that starts speech (ends below threshold - 0.15)
    min_speech_seconds: float = 0.25  # shorter speech runs are dropped
    min_silence_seconds: float = 0.1  # a pause this long ends a run (runs are merged again below)
    speech_pad_seconds: float = 0.2  # context kept on both sides of a run
    max_chunk_seconds: float = 20.0  # no chunk is longer (longer runs are cut at their longest pause)
    merge_gap_seconds: float = 1.0  # runs closer than this are joined into one chunk while it fits (context)
    min_chunk_speech_seconds: float = 0.3  # chunks with less detected speech are skipped, not decoded

    def __post_init__(self):
        if not 0.0 < self.threshold < 1.0:
            raise ValueError("VAD threshold must be in (0, 1)")
        if self.max_chunk_seconds < 1.0:
            raise ValueError("max_chunk_seconds must be >= 1")


@dataclass(frozen=True)
class SpeechChunk:
    """A stretch of audio to decode: samples [start, end) at 16 kHz, holding `speech` s of speech windows."""

    start: int
    end: int
    speech: float

    @property
    def start_s(self) -> float:
        return self.start / SAMPLE_RATE

    @property
    def end_s(self) -> float:
        return self.end / SAMPLE_RATE

    @property
    def duration(self) -> float:
        return (self.end - self.start) / SAMPLE_RATE


def _load_torchscript():
    """silero's loader; its module sets torch's thread count to 1 on import, which we undo."""
    threads = torch.get_num_threads()
    try:
        from silero_vad import load_silero_vad
    except ImportError as e:
        raise ImportError("voice-activity detection needs silero-vad "
                          f"(it is a dependency of speech_transformer: pip install -e .): {e}") from None

    model = load_silero_vad(onnx=False)
    torch.set_num_threads(threads)
    return model


class SileroVad:
    """Speech probabilities of a 16 kHz stream and its speech chunks. One instance per thread."""

    def __init__(self, options: VadOptions = VadOptions()):
        self.options = options
        self.jit = _load_torchscript()
        state = self.jit._model.state_dict()
        if not all(v in state for v in [*_WEIGHTS.values(), *_LSTM.values()]):  # another silero layout
            self.weights = None
            return
        self.weights = {k: state[v].float() for k, v in _WEIGHTS.items()}
        self.lstm = nn.LSTM(128, 128, batch_first=True)
        self.lstm.load_state_dict({k: state[v] for k, v in _LSTM.items()})
        self.lstm.eval()

    @torch.inference_mode()
    def probabilities(self, blocks: Iterable[np.ndarray]) -> np.ndarray:
        """Blocks of one 16 kHz stream, in order, any sizes -> `(ceil(T / 512),)` speech probabilities.

        The tail window is zero-padded, as in silero's `get_speech_timestamps`.
        """
        context = torch.zeros(CONTEXT)
        state = None
        rest = torch.zeros(0)
        out = []
        if self.weights is None:
            self.jit.reset_states()
        for block in blocks:
            x = torch.cat([rest, torch.as_tensor(block, dtype=torch.float32)])
            n = len(x) // WINDOW * WINDOW
            if n:
                probs, context, state = self.score_windows(x[:n], context, state)
                out.append(probs)
            rest = x[n:]
        if len(rest):
            out.append(self.score_windows(F.pad(rest, (0, WINDOW - len(rest))), context, state)[0])
        return torch.cat(out).numpy() if out else np.zeros(0, np.float32)

    def score_windows(self, x: Tensor, context: Tensor, state) -> tuple[Tensor, Tensor, tuple | None]:
        """x `(N*512,)` -> `(N,)` probabilities, and the context/state to carry on with: a stream scores its
        windows as they come (`recognition.streaming`), a file in one pass (`probabilities`)."""
        if self.weights is None:  # unknown model layout: silero's own per-window calls
            probs = torch.cat([self.jit(x[i:i + WINDOW][None], SAMPLE_RATE)[:, 0] for i in range(0, len(x), WINDOW)])
            return probs, context, state
        w = self.weights
        n = len(x) // WINDOW
        padded = torch.cat([context, x])
        index = torch.arange(n)[:, None] * WINDOW + torch.arange(WINDOW + CONTEXT)[None, :]
        frames = F.pad(padded[index][:, None], (0, CONTEXT), mode="reflect")  # (N, 1, 640)
        spec = F.conv1d(frames, w["stft"], stride=128)  # (N, 258, 4): real and imaginary halves
        half = spec.shape[1] // 2
        h = (spec[:, :half] ** 2 + spec[:, half:] ** 2).sqrt()
        for i, stride in enumerate((1, 2, 2, 1)):
            h = F.relu(F.conv1d(h, w[f"conv{i + 1}.weight"], w[f"conv{i + 1}.bias"], stride=stride, padding=1))
        seq, state = self.lstm(h[:, :, 0][None], state)  # (1, N, 128)
        logits = F.conv1d(F.relu(seq[0])[:, :, None], w["final.weight"], w["final.bias"])
        return torch.sigmoid(logits).flatten(), padded[-CONTEXT:], state

    def chunks(self, probs: np.ndarray, num_samples: int) -> list[SpeechChunk]:
        """Speech probabilities of a stream of `num_samples` samples -> chunks to decode, in order."""
        from silero_vad.utils_vad import get_speech_timestamps_from_probs

        o = self.options
        if num_samples <= 0 or len(probs) == 0:
            return []
        runs = get_speech_timestamps_from_probs(
            [float(p) for p in probs], sampling_rate=SAMPLE_RATE, threshold=o.threshold,
            min_speech_duration_ms=int(o.min_speech_seconds * 1000), max_speech_duration_s=o.max_chunk_seconds,
            min_silence_duration_ms=int(o.min_silence_seconds * 1000), speech_pad_ms=int(o.speech_pad_seconds * 1000),
            audio_length_samples=num_samples)
        return [c for c in self._merge(runs, probs) if c.speech >= o.min_chunk_speech_seconds]

    def _merge(self, runs: list[dict], probs: np.ndarray) -> list[SpeechChunk]:
        max_len = int(self.options.max_chunk_seconds * SAMPLE_RATE)
        gap = int(self.options.merge_gap_seconds * SAMPLE_RATE)
        spans: list[list[int]] = []
        for r in runs:
            start, end = int(r["start"]), int(r["end"])
            if spans and start - spans[-1][1] <= gap and end - spans[-1][0] <= max_len:
                spans[-1][1] = end
            else:
                spans.append([start, end])
        speech = probs >= self.options.threshold
        return [SpeechChunk(s, e, float(speech[s // WINDOW:-(-e // WINDOW)].sum()) * WINDOW / SAMPLE_RATE)
                for s, e in spans]

    def __call__(self, audio: np.ndarray) -> list[SpeechChunk]:
        """A whole 16 kHz waveform `(T,)` -> its speech chunks."""
        return self.chunks(self.probabilities([audio]), len(audio))
