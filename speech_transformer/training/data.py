"""Training data: the lazy audio dataset, duration filtering and the duration-bucketed batch sampler.

Manifests (the lists of utterances they read) are `audio.manifests`; its names are also importable from here.
"""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path

import numpy as np
import torch
import torchaudio.functional as AF

from speech_transformer.audio.loading import SAMPLE_RATE, load_audio
from speech_transformer.audio.manifests import (  # noqa: F401 (manifests are read through here too)
    DATA_DIR_ENV,
    Utterance,
    default_data_dir,
    read_librispeech_dir,
    read_manifest,
    speaker_from_id,
    write_manifest,
)
from speech_transformer.utils.files import atomic_path
from speech_transformer.text.normalize import normalize_transcript

log = logging.getLogger(__name__)

def filter_by_duration(utterances: list[Utterance], max_duration: float, min_duration: float = 0.1) -> list[Utterance]:
    """Drop utterances outside [min_duration, max_duration] seconds, logging how many (long ones cause OOM)."""
    kept = [u for u in utterances if min_duration <= u.duration <= max_duration]
    if len(kept) < len(utterances):
        log.warning("filtered %d of %d utterances outside %.1f-%.1f s", len(utterances) - len(kept),
                    len(utterances), min_duration, max_duration)
    return kept


class SpeechDataset(torch.utils.data.Dataset):
    """Utterance i -> (waveform `(T,)` float32 at 16 kHz, token ids). Audio is decoded lazily.

    Speed perturbation resamples by a factor drawn per (seed, epoch, index), so the same epoch
    always sees the same audio, in any worker and after a resume. With `cache_dir`, each decoded
    waveform is stored once as int16 .npy (read back without pickle) so later epochs skip decoding.
    """

    def __init__(self, utterances: list[Utterance], tokenizer, speed_factors: tuple[float, ...] = (1.0,),
                 cache_dir: str | os.PathLike | None = None, seed: int = 0):
        self.utterances = utterances
        self.tokenizer = tokenizer
        self.speed_factors = tuple(speed_factors)
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.seed = seed
        self.epoch = 0
        self.targets = [tokenizer.encode(normalize_transcript(u.text)) for u in utterances]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.utterances)

    def waveform(self, index: int) -> np.ndarray:
        u = self.utterances[index]
        if self.cache_dir is None:
            return load_audio(u.audio)
        path = self.cache_dir / f"{u.id}.npy"
        if path.exists():
            return np.load(path, allow_pickle=False).astype(np.float32) / 32768.0
        audio = load_audio(u.audio)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.save(f, np.clip(audio * 32768.0, -32768, 32767).astype(np.int16), allow_pickle=False)
        return audio

    def __getitem__(self, index: int) -> tuple[torch.Tensor, list[int]]:
        audio = torch.from_numpy(self.waveform(index))
        factor = random.Random(hash((self.seed, self.epoch, index))).choice(self.speed_factors)
        if factor != 1.0:  # faster speech = fewer samples, as Kaldi's sox `speed`
            audio = AF.resample(audio, int(SAMPLE_RATE * factor), SAMPLE_RATE)
        return audio, self.targets[index]


def pad_targets(token_lists: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids -> targets `(B, L)` (0-padded, L >= 1) and target_lengths `(B,)`."""
    target_lengths = torch.tensor([len(t) for t in token_lists])
    targets = torch.zeros(len(token_lists), max(1, int(target_lengths.max())), dtype=torch.long)
    for i, t in enumerate(token_lists):
        targets[i, : len(t)] = torch.tensor(t, dtype=torch.long)
    return targets, target_lengths


def collate(items: list[tuple[torch.Tensor, list[int]]]) -> dict[str, torch.Tensor]:
    """-> audio `(B, T)`, audio_lengths `(B,)`, targets `(B, L)` (0-padded), target_lengths `(B,)`."""
    lengths = torch.tensor([len(a) for a, _ in items])
    audio = torch.zeros(len(items), int(lengths.max()))
    for i, (a, _) in enumerate(items):
        audio[i, : len(a)] = a
    targets, target_lengths = pad_targets([t for _, t in items])
    return {"audio": audio, "audio_lengths": lengths, "targets": targets, "target_lengths": target_lengths}


def frame_batches(lengths: list[int], frames: int, rng: random.Random, pool: int = 1000,
                  share: list[float] | None = None) -> list[list[int]]:
    """Shuffled batches of row indices, each of at most `frames` padded frames (rows x longest), similar lengths
    together (sorted pools of `pool` rows): the batches of training on cached encoder states. `share`: the chance
    of each row to be in this epoch (1: always), so that many short clips do not crowd out the rest."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if share is not None:
        order = [i for i in order if share[i] >= 1.0 or rng.random() < share[i]]
    out: list[list[int]] = []
    for start in range(0, len(order), pool):
        batch: list[int] = []
        for i in sorted(order[start:start + pool], key=lambda i: lengths[i]):
            if batch and (len(batch) + 1) * lengths[i] > frames:
                out.append(batch)
                batch = []
            batch.append(i)
        if batch:
            out.append(batch)
    rng.shuffle(out)
    return out


class DurationBatchSampler:
    """Duration-bucketed dynamic batches, sharded over DDP ranks and gradient-accumulation steps.

    Utterances are sorted by (jittered) duration and cut into micro-batches whose padded audio,
    `len(batch) * longest`, stays within `batch_seconds / (world_size * accumulation)`. One optimiser
    step takes `world_size * accumulation` consecutive micro-batches: rank r gets those at
    r*accumulation .. r*accumulation+accumulation-1. Every rank computes the same plan, so the same
    `batch_seconds` gives the same steps whatever the number of processes, and each utterance is
    used exactly once per epoch. The step order is shuffled per epoch (deterministically from the
    seed), except that epoch 0 may run short-to-long, which helps a fresh model converge.
    """

    def __init__(self, durations: list[float], batch_seconds: float, world_size: int = 1, rank: int = 0,
                 accumulation: int = 1, shuffle: bool = True, seed: int = 0, sorted_first_epoch: bool = False):
        self.durations = durations
        self.group = world_size * accumulation
        self.budget = batch_seconds / self.group
        too_long = [d for d in durations if d > self.budget]
        if too_long:
            raise ValueError(f"{len(too_long)} utterances are longer than the micro-batch budget of "
                             f"{self.budget:.1f} s (batch_seconds / (world_size * accumulation)): filter them first")
        if len(durations) < self.group:
            raise ValueError(f"{len(durations)} utterances cannot fill {self.group} micro-batches")
        self.rank, self.accumulation = rank, accumulation
        self.shuffle, self.seed, self.sorted_first_epoch = shuffle, seed, sorted_first_epoch
        self.epoch, self.start_step = 0, 0

    def plan(self, epoch: int) -> list[list[list[int]]]:
        """All steps of an epoch: each a list of `group` micro-batches (lists of utterance indices)."""
        rng = random.Random(self.seed * 100_003 + epoch)
        jitter = [1.0] * len(self.durations) if not self.shuffle else [rng.uniform(0.9, 1.1) for _ in self.durations]
        order = sorted(range(len(self.durations)), key=lambda i: (self.durations[i] * jitter[i], i))
        micro: list[list[int]] = [[]]
        longest = 0.0
        for i in order:
            longest = max(longest, self.durations[i])
            if micro[-1] and (len(micro[-1]) + 1) * longest > self.budget:
                micro.append([])
                longest = self.durations[i]
            micro[-1].append(i)
        while len(micro) % self.group:  # split the largest batch so every rank gets the same number of steps
            largest = max(range(len(micro)), key=lambda k: len(micro[k]))
            if len(micro[largest]) < 2:  # only single-utterance batches: repeat the shortest utterance
                micro.append([order[0]])
                continue
            half = len(micro[largest]) // 2
            micro[largest: largest + 1] = [micro[largest][:half], micro[largest][half:]]
        steps = [micro[k: k + self.group] for k in range(0, len(micro), self.group)]
        if self.shuffle and not (self.sorted_first_epoch and epoch == 0):
            rng.shuffle(steps)
        return steps

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        """Start `epoch` at step `start_step` (resuming skips the steps already taken)."""
        self.epoch, self.start_step = epoch, start_step

    def step_sizes(self) -> list[int]:
        """Utterances in each remaining step of the epoch, over all ranks (to normalise the loss)."""
        return [sum(len(m) for m in step) for step in self.plan(self.epoch)[self.start_step:]]

    def __iter__(self):
        for step in self.plan(self.epoch)[self.start_step:]:
            for j in range(self.accumulation):
                yield step[self.rank * self.accumulation + j]

    def __len__(self) -> int:
        return (len(self.plan(self.epoch)) - self.start_step) * self.accumulation
