"""Where audio comes from: input expansion (files, folders, globs, manifests) and streaming of long files.

`FileSource` streams a file as 16 kHz mono blocks, never the whole of a long file; `cut_chunks` cuts speech
chunks out of such a stream in one pass; `expand_inputs` and `output_stems` turn command-line arguments into
input files and output names.
"""

from __future__ import annotations

import glob
import math
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import soundfile as sf
import torch
import torchaudio

from speech_transformer.audio import loading as audio_io
from speech_transformer.audio.loading import (
    AUDIO_EXTENSIONS,
    MIN_INPUT_RATE,
    SAMPLE_RATE,
    AudioError,
    describe,
    load_audio,
    reason,  # noqa: F401 (callers of the sources report failures with it)
)
from speech_transformer.audio.manifests import read_manifest
from speech_transformer.audio.vad import SpeechChunk

MANIFEST_EXTENSIONS = (".tsv", ".jsonl")


# --- audio sources: 16 kHz blocks, never a whole long file ---------------------------------

class FileSource:
    """An audio file streamed as 16 kHz mono float32 blocks (equal to `load_audio`, to float rounding).

    Each block is resampled with whole-unit context from its neighbours (a unit being the smallest
    frame count that maps to a whole number of 16 kHz samples), so the blocks join seamlessly.
    """

    def __init__(self, path: str | os.PathLike, block_seconds: float = 30.0):
        self.name = str(path)
        self.path = Path(path)
        header = audio_io.info(self.path)  # AudioError: missing, empty, not audio
        missing = audio_io._wav_bytes_missing(str(self.path))
        if missing:
            raise AudioError(self.name, f"truncated: WAV data chunk is {missing} bytes shorter than its header says")
        if header.sample_rate < MIN_INPUT_RATE:
            raise AudioError(self.name, f"sample rate {header.sample_rate} Hz is too low (need >= {MIN_INPUT_RATE} Hz)")
        if header.frames == 0:
            raise AudioError(self.name, "no audio samples (zero length)")
        self.rate, self.frames = header.sample_rate, header.frames
        g = math.gcd(self.rate, SAMPLE_RATE)
        self.unit_in, self.unit_out = self.rate // g, SAMPLE_RATE // g
        self.block = self.unit_in * max(1, round(block_seconds * self.rate / self.unit_in))
        self.context = self.unit_in * math.ceil(1024 / self.unit_in)

    def _raw_blocks(self) -> Iterator[np.ndarray]:
        read = 0
        try:
            with sf.SoundFile(str(self.path)) as f:
                while True:
                    data = f.read(self.block, dtype="float32", always_2d=True)
                    if not len(data):
                        break
                    read += len(data)
                    mono = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
                    if not np.isfinite(mono).all():
                        raise AudioError(self.name, "audio contains NaN or infinite samples")
                    yield np.ascontiguousarray(mono, dtype=np.float32)
        except AudioError:
            raise
        except Exception as e:
            raise AudioError(self.name, f"decoding failed after {read / self.rate:.1f} s "
                                        f"({audio_io._short(e)})") from None
        if 0 < self.frames < (1 << 62) and read < self.frames:
            raise AudioError(self.name, f"truncated: header promises {self.frames} frames, only {read} decoded")

    def blocks(self) -> Iterator[np.ndarray]:
        if self.rate == SAMPLE_RATE:
            yield from self._raw_blocks()
            return
        resample = torchaudio.transforms.Resample(self.rate, SAMPLE_RATE)
        raw = self._raw_blocks()
        try:
            previous = np.zeros(0, np.float32)
            current = next(raw, None)
            while current is not None:
                following = next(raw, None)
                left = previous[-self.context:]
                right = following[:self.context] if following is not None else np.zeros(0, np.float32)
                with torch.inference_mode():
                    y = resample(torch.from_numpy(np.concatenate([left, current, right]))).numpy()
                start = len(left) // self.unit_in * self.unit_out
                yield y[start:start + math.ceil(len(current) * SAMPLE_RATE / self.rate)]
                previous, current = current, following
        finally:
            raw.close()


class ArraySource:
    """Audio already in memory (array, `(rate, array)` tuple, bytes), via `load_audio`."""

    def __init__(self, source: Any, block_seconds: float = 30.0):
        self.name = describe(source)
        self.audio = load_audio(source)
        self.block = int(block_seconds * SAMPLE_RATE)

    def blocks(self) -> Iterator[np.ndarray]:
        for i in range(0, len(self.audio), self.block):
            yield self.audio[i:i + self.block]


def open_source(source: Any, block_seconds: float = 30.0) -> FileSource | ArraySource:
    if isinstance(source, (str, os.PathLike)):
        return FileSource(source, block_seconds)
    return ArraySource(source, block_seconds)


def cut_chunks(blocks: Iterable[np.ndarray], chunks: Sequence[SpeechChunk]) -> Iterator[tuple[int, np.ndarray]]:
    """Stream blocks once, cutting out the (sorted) chunks: yields (chunk index, its samples)."""
    buffer, offset, k = np.zeros(0, np.float32), 0, 0  # buffer holds samples [offset, offset + len)
    for block in blocks:
        if k == len(chunks):
            break
        buffer = np.concatenate([buffer, block])
        while k < len(chunks) and chunks[k].end <= offset + len(buffer):
            c = chunks[k]
            yield k, buffer[c.start - offset:c.end - offset].copy()
            k += 1
        keep_from = chunks[k].start if k < len(chunks) else offset + len(buffer)
        drop = min(max(0, keep_from - offset), len(buffer))
        buffer, offset = buffer[drop:], offset + drop
    while k < len(chunks):  # chunks reaching past the decoded end (header longer than the audio)
        c = chunks[k]
        yield k, buffer[max(0, c.start - offset):max(0, c.end - offset)].copy()
        k += 1



# --- inputs and output names ---------------------------------------------------------------

@dataclass(frozen=True)
class InputFile:
    path: Path
    rel: PurePosixPath  # output name relative to the output folder, with the input's extension


def _is_glob(arg: str) -> bool:
    return any(c in arg for c in "*?[") and not os.path.exists(arg)


def _relative(path: Path, root: Path) -> PurePosixPath:
    try:
        return PurePosixPath(path.resolve().relative_to(root.resolve()).as_posix())
    except ValueError:
        return PurePosixPath(path.name)


def expand_inputs(args: Sequence[str], recursive: bool = False) -> tuple[list[InputFile], list[tuple[str, str]]]:
    """Files, folders (recursive with `recursive`), globs and manifests -> input files, and problems.

    Folder inputs keep their relative layout in the output names; every other input is named by its
    file name. The order is deterministic (arguments in order, each expanded sorted), as sharding needs.
    """
    files: list[InputFile] = []
    problems: list[tuple[str, str]] = []
    for arg in args:
        p = Path(arg)
        if _is_glob(arg):
            matches = sorted(Path(m) for m in glob.glob(arg, recursive=True) if Path(m).is_file())
            parts = p.parts
            fixed = next(k for k, part in enumerate(parts) if _is_glob(part))  # the folder before the first wildcard
            base = Path(*parts[:fixed]) if fixed else Path(".")
            files += [InputFile(m, _relative(m, base)) for m in matches]
            if not matches:
                problems.append((arg, "no files match this pattern"))
        elif p.is_dir():
            found = sorted(f for f in (p.rglob("*") if recursive else p.iterdir())
                           if f.is_file() and f.suffix.lower() in AUDIO_EXTENSIONS)
            files += [InputFile(f, _relative(f, p)) for f in found]
            if not found:
                hint = "" if recursive else " (use --recursive for subfolders)"
                problems.append((arg, f"no audio files in this folder{hint}"))
        elif p.is_file() and p.suffix.lower() in MANIFEST_EXTENSIONS:
            try:
                listed = [Path(u.audio) for u in read_manifest(p, require_text=False)]
            except (OSError, ValueError) as e:
                problems.append((arg, f"unreadable manifest ({reason(e)})"))
                continue
            files += [InputFile(f, _relative(f, p.parent)) for f in listed]
        else:  # a file, or a missing one: the transcriber reports "file not found"
            files.append(InputFile(p, PurePosixPath(p.name)))
    unique, seen = [], set()
    for f in files:
        key = os.path.abspath(f.path)
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique, problems


def output_stems(files: Sequence[InputFile], out_dir: Path) -> list[Path]:
    """Output path without the format suffix, per input: `a/b.wav` -> OUT/a/b, or OUT/a/b.wav when two inputs
    would share OUT/a/b (e.g. b.wav and b.flac), and a numbered name if that still collides."""
    plain = [rel.with_suffix("") for rel in (f.rel for f in files)]
    counts: dict[PurePosixPath, int] = {}
    for s in plain:
        counts[s] = counts.get(s, 0) + 1
    names = [f.rel if counts[s] > 1 else s for f, s in zip(files, plain)]
    seen: dict[PurePosixPath, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(out_dir / (n if seen[n] == 1 else n.with_name(f"{n.name}.{seen[n]}")))
    return out
