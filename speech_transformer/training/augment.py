"""Waveform augmentation for training: speed, simulated rooms, coloured noise and babble.

`Augmenter(options, pool)(audio, seed)` gives one augmented copy of a 16 kHz waveform `(T,)`, the same for
the same seed (a cached copy is reproducible): Kaldi's speed perturbation (tempo and pitch together), then
with some probability a simulated room, then with some probability noise at a random SNR: coloured noise
(white, pink or brown) or babble, several other training utterances of other speakers added together.
Text is unchanged, so labels made for the clean audio (the teacher's) teach the augmented copy too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torchaudio.functional as AF

from speech_transformer.audio.loading import SAMPLE_RATE
from speech_transformer.audio.manifests import speaker_from_id


@dataclass(frozen=True)
class AugmentOptions:
    speeds: tuple[float, ...] = (0.9, 1.0, 1.1)  # one is drawn; > 1 is faster (shorter)
    room_probability: float = 0.5
    rt60_range: tuple[float, float] = (0.2, 0.8)  # s: reverberation time of a simulated room
    noise_probability: float = 0.8
    babble_share: float = 0.5  # of the noisy copies: babble instead of coloured noise
    snr_range: tuple[float, float] = (5.0, 20.0)  # dB, speech to noise
    babble_speakers: tuple[int, int] = (3, 6)  # other utterances summed into babble

    def __post_init__(self):
        if not self.speeds or min(self.speeds) <= 0:
            raise ValueError("speeds must be positive factors")
        for p in (self.room_probability, self.noise_probability, self.babble_share):
            if not 0.0 <= p <= 1.0:
                raise ValueError("probabilities and shares must be in [0, 1]")


def change_speed(audio: np.ndarray, factor: float, rate: int = SAMPLE_RATE) -> np.ndarray:
    """Play `audio` `(T,)` `factor` times faster (tempo and pitch, as a tape would) -> `(~T / factor,)`."""
    if factor == 1.0:
        return audio
    source = int(round(rate * factor))
    g = np.gcd(source, rate)
    return AF.resample(torch.from_numpy(np.ascontiguousarray(audio, np.float32)), source // g, rate // g).numpy()


def coloured_noise(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """`(n,)` noise of unit RMS whose power falls as 1 / f**exponent: 0 white, 1 pink, 2 brown."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(len(spectrum), dtype=np.float64)
    f[0] = 1.0
    noise = np.fft.irfft(spectrum / f ** (exponent / 2), n)
    return (noise / (rms(noise) + 1e-12)).astype(np.float32)


def room_impulse(rt60: float, rng: np.random.Generator, rate: int = SAMPLE_RATE) -> np.ndarray:
    """A simulated room's impulse response: the direct sound, then a diffuse tail of noise whose energy falls
    60 dB in `rt60` seconds (Schroeder's exponential decay), from 2.5 ms on; unit peak."""
    n = int(rt60 * rate)
    t = np.arange(n) / rate
    tail = rng.standard_normal(n) * np.exp(-6.9078 * t / rt60) * 0.3
    tail[:int(0.0025 * rate)] = 0.0
    tail[0] = 1.0
    return (tail / np.abs(tail).max()).astype(np.float32)


def reverberate(audio: np.ndarray, impulse: np.ndarray) -> np.ndarray:
    """`audio` `(T,)` heard in the room of `impulse`, cut to its length and kept at its RMS."""
    wet = AF.fftconvolve(torch.from_numpy(np.ascontiguousarray(audio, np.float32)), torch.from_numpy(impulse))
    wet = wet[:len(audio)].numpy()
    return wet * (rms(audio) / (rms(wet) + 1e-12))


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if len(x) else 0.0


def add_noise(speech: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """`speech + noise` `(T,)`, the noise (tiled or cut to T) scaled to `snr_db` below the speech's RMS."""
    noise = np.resize(noise, len(speech))
    scale = rms(speech) / (rms(noise) + 1e-12) / 10 ** (snr_db / 20)
    return (speech + scale * noise).astype(np.float32)


def speaker_of(path: str) -> str:
    """The speaker of a training file where its name tells: LibriSpeech's SPEAKER-CHAPTER-UTTERANCE, FSDD's
    DIGIT_SPEAKER_N; else the file's folder."""
    name = Path(path).stem
    if speaker := speaker_from_id(name):
        return speaker
    if m := re.fullmatch(r"\d_([a-z]+)_\d+", name):
        return m.group(1)
    return str(Path(path).parent)


class Augmenter:
    """One augmented copy per (waveform, seed). `pool`: the paths babble is made of (other training
    utterances), read with `load` (16 kHz mono) when needed; utterances of the same speaker are left out."""

    def __init__(self, options: AugmentOptions = AugmentOptions(), pool: Sequence[str] = (),
                 load: Callable[[str], np.ndarray] | None = None):
        self.options, self.pool, self.load = options, list(pool), load
        self.speakers = [speaker_of(p) for p in self.pool]  # once: babble leaves each clip's speaker out

    def __call__(self, audio: np.ndarray, seed: int, path: str = "") -> np.ndarray:
        o, rng = self.options, np.random.default_rng(seed)
        x = change_speed(np.asarray(audio, np.float32), float(rng.choice(o.speeds)))
        if rng.random() < o.room_probability:
            x = reverberate(x, room_impulse(float(rng.uniform(*o.rt60_range)), rng))
        if rng.random() < o.noise_probability and len(x):
            snr = float(rng.uniform(*o.snr_range))
            noise = None
            if rng.random() < o.babble_share and self.load is not None:
                noise = self.babble(len(x), rng, speaker_of(path) if path else None)
            if noise is None:
                noise = coloured_noise(len(x), float(rng.choice([0.0, 1.0, 2.0])), rng)
            x = add_noise(x, noise, snr)
        return x

    def babble(self, n: int, rng: np.random.Generator, speaker: str | None) -> np.ndarray | None:
        """`(n,)` of several other speakers talking at once, each at unit RMS, from random offsets; None where
        the pool has no other speaker."""
        others = [p for p, s in zip(self.pool, self.speakers) if speaker is None or s != speaker]
        if not others:
            return None
        count = int(rng.integers(self.options.babble_speakers[0], self.options.babble_speakers[1] + 1))
        out = np.zeros(n, np.float32)
        for k in rng.choice(len(others), size=min(count, len(others)), replace=False):
            voice = self.load(others[int(k)])
            if len(voice):
                voice = np.resize(np.roll(voice, -int(rng.integers(len(voice)))), n)
                out += voice / (rms(voice) + 1e-12)
        return out
