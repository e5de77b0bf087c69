"""Features: waveform -> normalised 80-bin log-mel frames, plus SpecAugment for training.

`WhisperFrontEnd` reproduces OpenAI Whisper's features for imported Whisper models.

Frames are computed without centre padding so that a frame depends only on the samples under
its window: an utterance padded inside a batch keeps exactly the same valid frames.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torchaudio
import torchaudio.functional as AF
from torch import Tensor, nn

from speech_transformer.audio.loading import HOP_LENGTH, N_FFT, N_MELS, SAMPLE_RATE

LOG_FLOOR = 1e-10


def num_frames(num_samples: Tensor | int) -> Tensor | int:
    """Frames produced for `num_samples` samples (at least 0)."""
    if isinstance(num_samples, Tensor):
        return torch.clamp((num_samples - N_FFT) // HOP_LENGTH + 1, min=0)
    return max(0, (num_samples - N_FFT) // HOP_LENGTH + 1)


def pad_waveforms(waveforms: list[np.ndarray | Tensor]) -> tuple[Tensor, Tensor]:
    """List of `(T_i,)` waveforms -> zero-padded `(B, T)` batch and `(B,)` lengths."""
    tensors = [torch.as_tensor(w, dtype=torch.float32) for w in waveforms]
    lengths = torch.tensor([len(t) for t in tensors], dtype=torch.long)
    batch = torch.zeros(len(tensors), int(lengths.max()) if tensors else 0)
    for i, t in enumerate(tensors):
        batch[i, : len(t)] = t
    return batch, lengths


def length_sorted_batches(lengths: Sequence[int], max_seconds: float) -> list[list[int]]:
    """Indices of items of `lengths` samples (16 kHz), shortest first, grouped so that each group padded to its
    longest item holds at most `max_seconds` of audio (an item longer than that gets a group of its own)."""
    batches: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        if batches and (len(batches[-1]) + 1) * lengths[i] <= max_seconds * SAMPLE_RATE:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


class FrontEnd(nn.Module):
    """Waveforms `(B, T)` at 16 kHz -> log-mel `(B, F, N_MELS)` and frame lengths `(B,)`.

    normalization: "global" subtracts the mean and divides by the std stored in the `mean`/`std`
    buffers (computed from training data with `fit_global_stats`, saved with the model);
    "utterance" uses each utterance's own statistics over its valid frames; "none" leaves log-mels as they are.
    """

    def __init__(self, n_mels: int = N_MELS, normalization: str = "global"):
        super().__init__()
        if normalization not in ("global", "utterance", "none"):
            raise ValueError(f"unknown normalization {normalization!r}")
        self.normalization = normalization
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=SAMPLE_RATE, n_fft=N_FFT, hop_length=HOP_LENGTH, n_mels=n_mels, center=False, power=2.0)
        self.register_buffer("mean", torch.zeros(n_mels))
        self.register_buffer("std", torch.ones(n_mels))

    def log_mel(self, waveforms: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """Un-normalised log-mel `(B, F, n_mels)`; frames past each length are zero."""
        if waveforms.shape[-1] < N_FFT:  # a too-short batch still gives one (empty) frame slot
            waveforms = nn.functional.pad(waveforms, (0, N_FFT - waveforms.shape[-1]))
        with torch.autocast(waveforms.device.type, enabled=False):
            mel = self.mel(waveforms.float()).transpose(1, 2)  # (B, F, n_mels)
        feats = torch.log(mel.clamp(min=LOG_FLOOR))
        frame_lengths = num_frames(lengths)
        valid = torch.arange(feats.shape[1], device=feats.device)[None, :] < frame_lengths[:, None]
        return feats * valid[..., None], frame_lengths

    def forward(self, waveforms: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        feats, frame_lengths = self.log_mel(waveforms, lengths)
        valid = (torch.arange(feats.shape[1], device=feats.device)[None, :] < frame_lengths[:, None])[..., None]
        if self.normalization == "global":
            feats = (feats - self.mean) / self.std
        elif self.normalization == "utterance":
            count = frame_lengths.clamp(min=1)[:, None].to(feats.dtype)
            mean = (feats * valid).sum(1) / count
            var = (((feats - mean[:, None]) * valid) ** 2).sum(1) / count
            feats = (feats - mean[:, None]) / (var[:, None] + 1e-5).sqrt()
        return feats * valid, frame_lengths

    @torch.no_grad()
    def fit_global_stats(self, waveforms: list[np.ndarray]) -> None:
        """Set the global mean/std from a sample of training waveforms (16 kHz, 1-D)."""
        total = torch.zeros(self.mean.shape[0], dtype=torch.float64)
        total_sq = torch.zeros_like(total)
        count = 0
        for w in waveforms:
            feats, n = self.log_mel(torch.as_tensor(w, dtype=torch.float32)[None], torch.tensor([len(w)]))
            f = feats[0, : int(n[0])].double()
            total += f.sum(0)
            total_sq += (f**2).sum(0)
            count += f.shape[0]
        if count == 0:
            raise ValueError("no frames to compute feature statistics from")
        mean = total / count
        self.mean.copy_(mean.float())
        self.std.copy_((total_sq / count - mean**2).clamp(min=1e-8).sqrt().float())


WHISPER_WINDOW_SECONDS = 30
WHISPER_WINDOW_SAMPLES = WHISPER_WINDOW_SECONDS * SAMPLE_RATE
WHISPER_WINDOW_FRAMES = WHISPER_WINDOW_SAMPLES // HOP_LENGTH  # 3000


def slaney_mel_filters(sample_rate: int, n_fft: int, n_mels: int) -> np.ndarray:
    """`(n_mels, n_fft // 2 + 1)` float32: librosa's `filters.mel` (Slaney's scale and area normalisation), which
    Whisper's filters are, bit for bit (rounded to float32 where librosa rounds), without importing librosa
    (127 MB of a process). Slaney's mel scale is linear below 1 kHz (200/3 Hz per mel), logarithmic above."""
    f_sp, min_log_hz, logstep = 200.0 / 3, 1000.0, np.log(6.4) / 27.0
    min_log_mel = min_log_hz / f_sp

    def hz_to_mel(f: np.ndarray) -> np.ndarray:
        return np.where(f >= min_log_hz, min_log_mel + np.log(np.maximum(f, min_log_hz) / min_log_hz) / logstep,
                        f / f_sp)

    def mel_to_hz(m: np.ndarray) -> np.ndarray:
        return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)

    fft_freqs = np.fft.rfftfreq(n=n_fft, d=1.0 / sample_rate)
    mel_f = mel_to_hz(np.linspace(hz_to_mel(np.float64(0.0)), hz_to_mel(np.float64(sample_rate / 2)), n_mels + 2))
    fdiff, ramps = np.diff(mel_f), np.subtract.outer(mel_f, fft_freqs)
    triangles = np.maximum(0, np.minimum(-ramps[:-2] / fdiff[:-1, None], ramps[2:] / fdiff[1:, None]))
    weights = triangles.astype(np.float32)
    weights *= (2.0 / (mel_f[2:n_mels + 2] - mel_f[:n_mels]))[:, None]  # each filter's area 1 (Slaney)
    return weights


class WhisperFrontEnd(nn.Module):
    """Whisper's log-mel: waveforms `(B, T)`, T <= 30 s -> `(B, 3000, n_mels)` and lengths `(B,)` (all 3000).

    Every waveform is zero-padded to a 30 s window (the encoder always reads whole windows, as Whisper was
    trained), framed by a centred 400-sample Hann STFT whose last frame is dropped, projected onto Slaney
    mel filters, then log10, floored 8 below the window's maximum and scaled to (x + 4) / 4.

    With `window=False` the same features cover only the audio given, `(B, F, n_mels)` with F = T // 160
    frames per waveform: for encoders fine-tuned from Whisper on variable-length batches, which need not
    pay for 30 s of silence per utterance. `silence_seconds` of zeros are then appended to each waveform (as
    far as the 30 s allow): Whisper's decoder stops where it sees the speech end, and 1 s of silence is enough
    for it (recipes/distil/RESULTS.md: Whisper base unwindowed 4.26 % on dev[:40] with 1 s, 166.85 % without).
    """

    def __init__(self, n_mels: int = N_MELS, window: bool = True, silence_seconds: float = 0.0):
        super().__init__()
        self.window_audio = window
        self.silence = 0 if window else round(silence_seconds * SAMPLE_RATE)
        filters = torch.from_numpy(slaney_mel_filters(SAMPLE_RATE, N_FFT, n_mels))  # the filters Whisper ships
        self.register_buffer("filters", filters, persistent=False)
        self.register_buffer("window", torch.hann_window(N_FFT), persistent=False)

    def forward(self, waveforms: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        if waveforms.shape[-1] > WHISPER_WINDOW_SAMPLES:
            raise ValueError(f"a Whisper model reads at most {WHISPER_WINDOW_SECONDS} s at a time, got "
                             f"{waveforms.shape[-1] / SAMPLE_RATE:.1f} s (split longer audio, e.g. with "
                             "`speech-transformer transcribe`)")
        if self.silence:  # the rows are zero after their lengths: each gets its `silence` after its own end
            extra = min(self.silence, WHISPER_WINDOW_SAMPLES - waveforms.shape[-1])
            waveforms, lengths = nn.functional.pad(waveforms, (0, extra)), lengths + extra
        pad = (WHISPER_WINDOW_SAMPLES if self.window_audio else N_FFT) - waveforms.shape[-1]
        audio = nn.functional.pad(waveforms.float(), (0, max(0, pad)))
        with torch.autocast(waveforms.device.type, enabled=False):
            stft = torch.stft(audio, N_FFT, HOP_LENGTH, window=self.window, return_complex=True)
            mel = self.filters @ stft[..., :-1].abs() ** 2  # (B, n_mels, F)
            log = mel.clamp(min=LOG_FLOOR).log10()
            log = torch.maximum(log, log.amax(dim=(1, 2), keepdim=True) - 8.0)
        frames = torch.full_like(lengths, WHISPER_WINDOW_FRAMES) if self.window_audio else lengths // HOP_LENGTH
        return ((log + 4.0) / 4.0).transpose(1, 2), frames

    def log_mel(self, waveforms: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """The same features (Whisper's are already scaled) with the frames that hold audio: `(B, F, n_mels)`."""
        feats, _ = self.forward(waveforms, lengths)
        return feats, torch.clamp(lengths // HOP_LENGTH, max=WHISPER_WINDOW_FRAMES)


@dataclass(frozen=True)
class SpecAugmentConfig:
    freq_masks: int = 2
    freq_width: int = 27  # bins, as in SpecAugment LD
    time_masks: int = 5
    time_width_ratio: float = 0.05  # a time mask covers at most this share of the utterance
    time_warp: int = 0  # frames; 0 disables warping


def mask_time(x: Tensor, lengths: Tensor, masks: int, width_ratio: float) -> Tensor:
    """`(B, F, D)` frames with `masks` random spans per utterance set to zero, each at most `width_ratio` x
    that utterance's valid length `lengths (B,)` (log-mel frames here, cached encoder states in training)."""
    B, F, _ = x.shape
    frames = torch.arange(F, device=x.device)[None, :]
    lengths = lengths.to(x.device)
    for _ in range(masks):
        width = (torch.rand(B, device=x.device) * lengths * width_ratio).long()
        start = (torch.rand(B, device=x.device) * (lengths - width).clamp(min=1)).long()
        masked = (frames >= start[:, None]) & (frames < (start + width)[:, None])
        x = x.masked_fill(masked[..., None], 0.0)
    return x


class SpecAugment(nn.Module):
    """Frequency and time masking (and optional time warping) of `(B, F, n_mels)` features.

    Each utterance gets its own masks; time masks scale with its valid length, so short
    utterances are not wiped out and padding is never counted as masked speech.
    """

    def __init__(self, config: SpecAugmentConfig = SpecAugmentConfig()):
        super().__init__()
        self.config = config

    def forward(self, feats: Tensor, lengths: Tensor) -> Tensor:
        if not self.training:
            return feats
        c = self.config
        if c.time_warp > 0:
            feats = self._time_warp(feats, lengths)
        x = feats.transpose(1, 2)  # (B, n_mels, F): torchaudio masks along an axis of (..., freq, time)
        for _ in range(c.freq_masks):
            x = AF.mask_along_axis_iid(x, c.freq_width, 0.0, axis=x.dim() - 2)
        return mask_time(x.transpose(1, 2), lengths, c.time_masks, c.time_width_ratio)

    def _time_warp(self, feats: Tensor, lengths: Tensor) -> Tensor:
        """Stretch the part before a random centre and squeeze the rest (or the reverse), per utterance."""
        out = feats.clone()
        w = self.config.time_warp
        for b in range(feats.shape[0]):
            n = int(lengths[b])
            if n <= 2 * w + 2:
                continue
            centre = int(torch.randint(w + 1, n - w - 1, ()))
            new_centre = centre + int(torch.randint(-w, w + 1, ()))
            x = feats[b, :n].T[None]  # (1, n_mels, n)
            left = nn.functional.interpolate(x[..., :centre], size=new_centre, mode="linear", align_corners=False)
            right = nn.functional.interpolate(x[..., centre:], size=n - new_centre, mode="linear", align_corners=False)
            out[b, :n] = torch.cat([left, right], dim=-1)[0].T
        return out
