"""Data: manifests, the lazy audio dataset, and the duration-bucketed batch sampler.

A manifest lists utterances. Three forms are read:
- TSV with a header `audio  duration_s  text` (optional `speaker`), audio paths relative to the TSV's folder;
- JSONL, one `{"audio", "duration", "text", "speaker"}` object a line (relative paths as for TSV);
- a LibriSpeech-layout folder (`<speaker>/<chapter>/<id>.trans.txt` beside the audio).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import random
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torchaudio.functional as AF

from speech_transformer.audio.loading import (
    AUDIO_EXTENSIONS,
    SAMPLE_RATE,
    AudioError,
    info,
    load_audio,
)
from speech_transformer.files import atomic_path, atomic_write
from speech_transformer.text.normalize import normalize_transcript

log = logging.getLogger(__name__)

DATA_DIR_ENV = "SPEECH_TRANSFORMER_DATA"  # where ../shared/data-style corpora live


@dataclass(frozen=True)
class Utterance:
    id: str
    audio: str  # absolute path
    duration: float  # seconds
    text: str
    speaker: str | None = None


def default_data_dir() -> Path:
    """The folder of real corpora: $SPEECH_TRANSFORMER_DATA, else ../shared/data beside the checkout."""
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3] / "shared" / "data"


def read_manifest(path: str | os.PathLike, require_text: bool = True) -> list[Utterance]:
    """Utterances of a TSV, JSONL, or LibriSpeech-layout folder, in file order (audio paths made absolute).

    Without `require_text`, a manifest of audio only (a TSV with just an `audio` column) is fine too.
    """
    path = Path(path)
    if path.is_dir():
        return read_librispeech_dir(path)
    if path.suffix == ".jsonl":
        return _read_jsonl(path)
    if path.suffix in (".tsv", ".txt", ".csv"):
        return _read_tsv(path, require_text)
    raise ValueError(f"{path}: unknown manifest type (expected .tsv, .jsonl or a LibriSpeech folder)")


def write_manifest(utterances: list[Utterance], path: str | os.PathLike) -> None:
    """Write JSONL with absolute audio paths, atomically."""
    atomic_write(path, "".join(json.dumps(asdict(u), ensure_ascii=False) + "\n" for u in utterances))


_LIBRISPEECH_ID = re.compile(r"^(\d+)-\d+-\d+$")


def speaker_from_id(utt_id: str) -> str | None:
    m = _LIBRISPEECH_ID.match(utt_id)
    return m.group(1) if m else None


def _read_tsv(path: Path, require_text: bool = True) -> list[Utterance]:
    out = []
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        missing = {"audio", "text"} - set(reader.fieldnames or []) - (set() if require_text else {"text"})
        if missing:
            raise ValueError(f"{path}: TSV header lacks column(s) {sorted(missing)}")
        for row in reader:
            audio = (path.parent / row["audio"]).resolve()
            uid = Path(row["audio"]).stem
            out.append(Utterance(uid, str(audio), float(row.get("duration_s") or 0.0), row.get("text") or "",
                                 row.get("speaker") or speaker_from_id(uid)))
    return out


def _read_jsonl(path: Path) -> list[Utterance]:
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
                audio = Path(d["audio"])
                audio = audio if audio.is_absolute() else (path.parent / audio).resolve()
                uid = d.get("id") or audio.stem
                out.append(Utterance(uid, str(audio), float(d.get("duration", 0.0)), d.get("text", ""),
                                     d.get("speaker") or speaker_from_id(uid)))
            except (KeyError, ValueError, TypeError) as e:
                raise ValueError(f"{path}:{n}: bad manifest line ({e})") from None
    return out


def read_librispeech_dir(root: Path) -> list[Utterance]:
    """All utterances under a LibriSpeech-layout folder (any depth), sorted by id.

    Durations come from the audio headers (cheap: no decoding).
    """
    out = []
    for trans in sorted(root.rglob("*.trans.txt")):
        audio_by_id = {p.stem: p for p in trans.parent.iterdir() if p.suffix in AUDIO_EXTENSIONS}
        for line in trans.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            uid, _, text = line.partition(" ")
            audio = audio_by_id.get(uid)
            if audio is None:
                raise ValueError(f"{trans}: no audio file for utterance {uid}")
            try:
                duration = info(audio).duration
            except AudioError:
                duration = 0.0  # unreadable: kept, so that scoring reports it as an error row
            out.append(Utterance(uid, str(audio.resolve()), round(duration, 3), text.strip(), speaker_from_id(uid)))
    if not out:
        raise ValueError(f"{root}: no *.trans.txt files found (not a LibriSpeech-layout folder?)")
    return sorted(out, key=lambda u: u.id)



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
