"""Batch transcription of audio files: Python API and `speech-transformer transcribe`.

    speech-transformer transcribe talks/ -o out --recursive --format srt,json --resume
    torchrun --nproc-per-node 8 -m speech_transformer.transcribe archive/ -o out --recursive --resume

Pipeline, per input: the file is streamed in 30 s blocks (soundfile, resampled to 16 kHz block
by block) through Silero VAD; the speech probabilities give chunks of at most 20 s; the file is
streamed a second time to cut those chunks out. Chunks of many files share a pool that is sorted
by length and decoded in padded batches of `batch_seconds`; each decoded chunk becomes a segment
with VAD times, and its words get times from CTC forced alignment. A file's transcript is handed
out as soon as its last chunk is decoded. Memory is bounded by the block size, the pool and one
batch, whatever the length of a file. A file that fails (unreadable, truncated, decode error) is
reported with its reason and the others go on.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import soundfile as sf
import torch
import torchaudio
import torchaudio.functional as AF

from speech_transformer import audio as audio_io
from speech_transformer import subtitles
from speech_transformer.audio import (
    MIN_INPUT_RATE,
    SAMPLE_RATE,
    AudioError,
    describe,
    load_audio,
)
from speech_transformer.decoding import DecodingOptions, decode
from speech_transformer.features import pad_waveforms
from speech_transformer.recognizer import Recognizer
from speech_transformer.vad import SileroVad, SpeechChunk, VadOptions

FRAME_SECONDS = 0.04  # one encoder frame: 4 x 10 ms
# centre of encoder frame s is at 0.04 s + 42.5 ms (it sees feature frames 4s..4s+6); a frame's span
# is that centre -/+ 20 ms, so frames [a, b) cover [0.04 a + 22.5 ms, 0.04 b + 22.5 ms)
FRAME_OFFSET = 0.0225
AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".oga", ".opus", ".sph", ".aif", ".aiff", ".au", ".caf",
                    ".w64", ".m4a", ".aac", ".wma", ".webm")
MANIFEST_EXTENSIONS = (".tsv", ".jsonl")


# --- results -------------------------------------------------------------------------------

@dataclass
class Word:
    word: str
    start: float
    end: float
    confidence: float | None  # mean CTC posterior of its tokens over their aligned frames


@dataclass
class Segment:
    start: float  # seconds from the start of the input (VAD chunk bounds)
    end: float
    text: str
    confidence: float  # exp(avg_logprob)
    avg_logprob: float
    words: list[Word] = field(default_factory=list)


@dataclass
class Transcript:
    source: str
    duration: float = 0.0
    segments: list[Segment] = field(default_factory=list)
    error: str | None = None  # why the input failed; None when it did not

    @property
    def text(self) -> str:
        return " ".join(s.text for s in self.segments)

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d = {"audio": d.pop("source"), "duration": round(self.duration, 3), "text": self.text, **d}
        if self.error is None:
            d.pop("error")
        return d


@dataclass(frozen=True)
class TranscribeOptions:
    method: str = "attention"  # or "ctc" (CTC greedy: fastest)
    beam_size: int = 1
    ctc_weight: float = 0.3
    lm_weight: float = 0.0  # shallow fusion with the model directory's lm.json, if any
    batch_seconds: float = 120.0  # padded audio per decoding batch (0: one chunk at a time)
    pool_seconds: float | None = None  # chunk audio gathered before batching (default 4 x batch_seconds)
    word_timestamps: bool = True
    ctc_blank_guard: bool = True  # drop a hypothesis when the CTC head hears only blanks in the chunk
    block_seconds: float = 30.0  # audio read and resampled at a time
    vad: VadOptions = VadOptions()

    @classmethod
    def from_kwargs(cls, **kwargs) -> "TranscribeOptions":
        """Flat keyword options: our fields and VadOptions' fields (threshold, max_chunk_seconds, ...)."""
        own = {f.name for f in dataclasses.fields(cls)}
        vad_names = {f.name for f in dataclasses.fields(VadOptions)}
        unknown = set(kwargs) - own - vad_names
        if unknown:
            raise TypeError(f"unknown transcribe option(s): {sorted(unknown)}")
        vad = kwargs.pop("vad", VadOptions())
        vad = dataclasses.replace(vad, **{k: kwargs.pop(k) for k in list(kwargs) if k in vad_names})
        return cls(vad=vad, **kwargs)

    @property
    def decoding(self) -> DecodingOptions:
        return DecodingOptions(method=self.method, beam_size=self.beam_size, ctc_weight=self.ctc_weight,
                               lm_weight=self.lm_weight)


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


def find_speech(vad: SileroVad, source: FileSource | ArraySource) -> tuple[list[SpeechChunk], int]:
    """One streamed VAD pass over a source: its speech chunks, and its length in 16 kHz samples."""
    n = 0

    def counted(blocks: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        nonlocal n
        for b in blocks:
            n += len(b)
            yield b

    probs = vad.probabilities(counted(source.blocks()))
    return vad.chunks(probs, n), n


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


# --- the transcriber -----------------------------------------------------------------------

@dataclass
class _Piece:
    file: int
    index: int
    chunk: SpeechChunk
    audio: np.ndarray


@dataclass
class _Pending:
    source: str
    duration: float = 0.0
    expected: int | None = None  # chunk count, known once the file is fully read
    segments: dict[int, Segment | None] = field(default_factory=dict)
    error: str | None = None

    def finished(self) -> bool:
        return self.error is not None or (self.expected is not None and len(self.segments) == self.expected)

    def transcript(self) -> Transcript:
        if self.error is not None:
            return Transcript(self.source, self.duration, [], self.error)
        segs = [self.segments[k] for k in sorted(self.segments)]
        return Transcript(self.source, self.duration, [s for s in segs if s is not None])


def reason(e: BaseException) -> str:
    if isinstance(e, AudioError):
        return e.reason
    text = str(e).strip().splitlines()[-1][:300] if str(e).strip() else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


class Transcriber:
    """A recogniser, a VAD and options; `run(sources)` yields `(index, Transcript)` as inputs finish."""

    def __init__(self, recognizer: Recognizer, options: TranscribeOptions = TranscribeOptions()):
        self.recognizer = recognizer
        self.options = options
        self.vad = SileroVad(options.vad)
        self.decoding = options.decoding
        self.on_batch: Callable[[float], None] | None = None  # called with the chunk audio seconds of each batch

    def run(self, sources: Sequence[Any]) -> Iterator[tuple[int, Transcript]]:
        o = self.options
        pool_limit = (4 * o.batch_seconds if o.pool_seconds is None else o.pool_seconds) * SAMPLE_RATE
        pending: dict[int, _Pending] = {}
        pool: list[_Piece] = []
        for i, src in enumerate(sources):
            state = pending[i] = _Pending(describe(src))
            try:
                source = open_source(src, o.block_seconds)
                state.source = source.name
                chunks, n = find_speech(self.vad, source)
                state.duration = n / SAMPLE_RATE
                for k, samples in cut_chunks(source.blocks(), chunks):
                    pool.append(_Piece(i, k, chunks[k], samples))
                    if sum(len(p.audio) for p in pool) >= pool_limit:
                        yield from self._flush(pool, pending)
                        pool = []
                        if state.error:
                            break
                state.expected = len(chunks)
            except Exception as e:
                state.error = reason(e)
                pool = [p for p in pool if p.file != i]
            if i in pending and state.finished():  # (a failed chunk may have finished it inside _flush)
                yield i, pending.pop(i).transcript()
        yield from self._flush(pool, pending)
        for i in sorted(pending):  # cannot happen unless a chunk went missing; never drop an input silently
            yield i, Transcript(pending[i].source, pending[i].duration, [], "internal error: unfinished chunks")

    def _flush(self, pool: list[_Piece], pending: dict[int, _Pending]) -> Iterator[tuple[int, Transcript]]:
        limit = self.options.batch_seconds * SAMPLE_RATE
        batch: list[_Piece] = []
        for piece in sorted(pool, key=lambda p: len(p.audio)) + [None]:
            if piece is not None and (not batch or (len(batch) + 1) * len(piece.audio) <= limit):
                batch.append(piece)
                continue
            batch = [p for p in batch if p.file in pending and pending[p.file].error is None]
            for p, result in zip(batch, self._decode_safely(batch)):
                state = pending[p.file]
                if isinstance(result, BaseException):
                    state.error = f"decoding failed at {p.chunk.start_s:.1f} s ({reason(result)})"
                else:
                    state.segments[p.index] = result
            if self.on_batch and batch:
                self.on_batch(sum(len(p.audio) for p in batch) / SAMPLE_RATE)
            for i in [i for i, s in pending.items() if s.finished()]:
                yield i, pending.pop(i).transcript()
            batch = [] if piece is None else [piece]

    def _decode_safely(self, batch: list[_Piece]) -> list[Segment | None | BaseException]:
        if not batch:
            return []
        try:
            return self.decode_chunks([p.audio for p in batch], [p.chunk for p in batch])
        except Exception as e:
            if len(batch) == 1:
                return [e]
            return [r for p in batch for r in self._decode_safely([p])]  # find the culprit, keep the rest

    @torch.inference_mode()
    def decode_chunks(self, waves: list[np.ndarray], chunks: list[SpeechChunk]) -> list[Segment | None]:
        """Chunk waveforms `(T_i,)` -> a Segment each (None where nothing was said)."""
        model, tokenizer = self.recognizer.model, self.recognizer.tokenizer
        audio, lengths = pad_waveforms(waves)
        feats, feat_lengths = model.frontend(audio.to(model.device), lengths.to(model.device))
        memory, memory_lengths = model.encode(feats, feat_lengths)
        special = tokenizer.special
        hyps = decode(model, memory, memory_lengths, self.decoding, special, self.recognizer.lm)
        # no CTC head (Whisper): no blank guard, word times shared out by length
        log_probs = model.ctc_log_probs(memory).float().cpu() if model.ctc_head is not None else None  # (B, S, V)
        not_text = {*special.prompt, special.eos, special.blank, *special.suppress}
        out: list[Segment | None] = []
        for b, (hyp, chunk) in enumerate(zip(hyps, chunks)):
            frames = int(memory_lengths[b])
            lp = None if log_probs is None else log_probs[b, :frames]
            tokens = [t for t in hyp.tokens if t not in not_text]
            text = tokenizer.decode(tokens).strip()
            if not text or (lp is not None and self.options.ctc_blank_guard
                            and not bool((lp.argmax(-1) != special.blank).any())):
                out.append(None)
                continue
            avg = hyp.score / (max(1, frames) if self.decoding.method == "ctc" else len(hyp.tokens) + 1)
            words = (align_words(lp, tokens, tokenizer, chunk.start_s, chunk.end_s, model.encoder_frame_seconds)
                     if self.options.word_timestamps else [])
            out.append(Segment(round(chunk.start_s, 3), round(chunk.end_s, 3), text, round(math.exp(min(0.0, avg)), 4),
                               round(avg, 4), words))
        return out


def align_words(log_probs: torch.Tensor | None, tokens: list[int], tokenizer, start: float, end: float,
                frame_seconds: float = FRAME_SECONDS) -> list[Word]:
    """Word times from CTC forced alignment of `tokens` to `log_probs` `(S, V)` of a chunk at [start, end) s.

    When the tokens cannot be aligned (more tokens than frames allow, or no CTC head: log_probs None),
    words share the chunk's span in proportion to their length and carry no confidence.
    """
    groups: list[list[int]] = []  # token positions of each word ('▁' starts a word)
    for k, t in enumerate(tokens):
        if not groups or tokenizer.id_to_piece(t).startswith("▁"):
            groups.append([])
        groups[-1].append(k)
    try:
        if log_probs is None:
            raise ValueError("no CTC head")
        labels, scores = AF.forced_align(log_probs[None].contiguous(), torch.tensor([tokens], dtype=torch.int32),
                                         blank=tokenizer.special.blank)
        spans = AF.merge_tokens(labels[0], scores[0].exp(), blank=tokenizer.special.blank)
        if len(spans) != len(tokens):
            raise ValueError("alignment lost tokens")
        times = [(start + frame_seconds * s.start + FRAME_OFFSET, start + frame_seconds * s.end + FRAME_OFFSET, s.score)
                 for s in spans]
    except (RuntimeError, ValueError):
        weights = np.cumsum([0] + [max(1, len(tokenizer.id_to_piece(t))) for t in tokens], dtype=np.float64)
        edges = start + (end - start) * weights / weights[-1]
        times = [(edges[k], edges[k + 1], None) for k in range(len(tokens))]
    words = []
    for g in groups:
        text = tokenizer.decode([tokens[k] for k in g]).strip()
        if not text:
            continue
        scores = [times[k][2] for k in g]
        a, b = min(max(times[g[0]][0], start), end), min(max(times[g[-1]][1], start), end)
        conf = None if any(s is None for s in scores) else round(float(np.mean(scores)), 4)
        words.append(Word(text, round(a, 3), round(max(a, b), 3), conf))
    return words


# --- Python API ----------------------------------------------------------------------------

def load_model(name_or_dir: str | os.PathLike | None = None, device: str = "cpu") -> Recognizer:
    """A model directory, a shipped model's name, or None for the embedded default model."""
    return Recognizer.from_dir(name_or_dir, device=device)


def transcribe(model: Recognizer | str | os.PathLike | None, audio_or_paths: Any,
               **options) -> Transcript | list[Transcript]:
    """Transcribe one input or a list of inputs; keyword options are `TranscribeOptions`/`VadOptions` fields.

    An input is a file path, the bytes of a file, a 16 kHz array, or a `(rate, array)` tuple. A list
    gives a list of Transcripts in the same order; a failed input there has `.error` set and no
    segments. A single input gives its Transcript, or raises (AudioError for unreadable audio).
    """
    recognizer = model if isinstance(model, Recognizer) else load_model(model)
    transcriber = Transcriber(recognizer, TranscribeOptions.from_kwargs(**options))
    single = not isinstance(audio_or_paths, list)
    sources = [audio_or_paths] if single else audio_or_paths
    results: list[Transcript | None] = [None] * len(sources)
    for i, t in transcriber.run(sources):
        results[i] = t
    if single:
        t = results[0]
        if t.error is not None:
            raise AudioError(t.source, t.error)
        return t
    return results  # type: ignore[return-value]


# --- inputs and output names ---------------------------------------------------------------

@dataclass(frozen=True)
class InputFile:
    path: Path
    rel: PurePosixPath  # output name relative to the output folder, with the input's extension


def _is_glob(arg: str) -> bool:
    return any(c in arg for c in "*?[") and not os.path.exists(arg)


def _manifest_audio(path: Path) -> list[str]:
    """Audio paths of a TSV (header with an `audio` column) or JSONL (`audio` key) manifest."""
    if path.suffix == ".jsonl":
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        return [json.loads(line)["audio"] for line in lines]
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        if "audio" not in (reader.fieldnames or []):
            raise ValueError("TSV manifest has no `audio` column")
        return [row["audio"] for row in reader]


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
            import glob

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
                listed = _manifest_audio(p)
            except (OSError, ValueError, KeyError, json.JSONDecodeError) as e:
                problems.append((arg, f"unreadable manifest ({reason(e)})"))
                continue
            for a in listed:
                f = Path(a) if Path(a).is_absolute() else p.parent / a
                files.append(InputFile(f, _relative(f, p.parent)))
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


# --- CLI -----------------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="speech-transformer transcribe",
        description="Transcribe audio files, folders, globs or manifests (.tsv/.jsonl); one output per input "
                    "and format. Under torchrun the inputs are shared out across the processes.")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("-o", "--output-dir", default=".", help="where outputs go (default: the current folder)")
    p.add_argument("--format", default="all", help="comma list of txt,json,srt,vtt,tsv, or all (default)")
    p.add_argument("--model", default=None, help="model folder or shipped model name (default: the embedded model)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--method", default="attention", choices=["attention", "ctc"])
    p.add_argument("--beam", type=int, default=1, help="beam size (1: greedy)")
    p.add_argument("--ctc-weight", type=float, default=0.3)
    p.add_argument("--lm-weight", type=float, default=0.0, help="shallow fusion with the model's lm.json (beam search)")
    p.add_argument("--batch-seconds", type=float, default=120.0, help="padded audio per batch (0: one chunk at a time)")
    p.add_argument("--pool-seconds", type=float, default=None,
                   help="chunk audio collected across files before sorting into batches (default 4 x batch)")
    p.add_argument("--max-chunk-seconds", type=float, default=20.0)
    p.add_argument("--vad-threshold", type=float, default=0.5)
    p.add_argument("--recursive", action="store_true", help="descend into subfolders of folder inputs")
    p.add_argument("--resume", action="store_true", help="skip inputs whose outputs all exist")
    p.add_argument("--no-progress", action="store_true")
    return p


def _setup_distributed(device: str) -> tuple[int, int, torch.device]:
    """(rank, world size, device) under torchrun (gloo: only the summary travels), else (0, 1, device)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(f"cuda:{local_rank}" if device == "cuda" and world > 1 else device)
    if dev.type == "cuda" and dev.index is not None:
        torch.cuda.set_device(dev)
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():  # a long timeout: ranks finish their shares far apart
            dist.init_process_group("gloo", timeout=timedelta(days=7))
        return dist.get_rank(), world, dev
    return 0, 1, dev


@dataclass
class Summary:
    ok: int = 0
    skipped: int = 0  # already complete (--resume)
    silent: int = 0  # ok, but no speech found
    failed: list[tuple[str, str]] = field(default_factory=list)
    audio_seconds: float = 0.0
    wall_seconds: float = 0.0

    def merge(self, other: "Summary") -> None:
        self.ok += other.ok
        self.skipped += other.skipped
        self.silent += other.silent
        self.failed += other.failed
        self.audio_seconds += other.audio_seconds
        self.wall_seconds = max(self.wall_seconds, other.wall_seconds)


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
        formats = subtitles.parse_formats(args.format)
        options = TranscribeOptions.from_kwargs(
            method=args.method, beam_size=args.beam, ctc_weight=args.ctc_weight, lm_weight=args.lm_weight,
            batch_seconds=args.batch_seconds,
            pool_seconds=args.pool_seconds, max_chunk_seconds=args.max_chunk_seconds, threshold=args.vad_threshold)
        options.decoding  # validates
    except SystemExit as e:
        return int(e.code or 0)
    except ValueError as e:
        print(f"speech-transformer transcribe: error: {e}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    rank, world, device = _setup_distributed(args.device)
    out_dir = Path(args.output_dir)
    files, problems = expand_inputs(args.paths, args.recursive)
    stems = output_stems(files, out_dir)
    mine = [k for k in range(len(files)) if k % world == rank]
    summary = Summary(failed=list(problems) if rank == 0 else [])
    todo = []
    for k in mine:
        subtitles.remove_stale_temps(stems[k], formats)
        if args.resume and subtitles.is_complete(stems[k], formats):
            summary.skipped += 1
        else:
            todo.append(k)
    try:
        transcriber = Transcriber(load_model(args.model, str(device)), options) if todo else None
    except Exception as e:
        print(f"speech-transformer transcribe: cannot load the model: {reason(e)}", file=sys.stderr)
        return 1
    if transcriber is not None:
        try:
            _transcribe_files(transcriber, [files[k] for k in todo], [stems[k] for k in todo], formats, summary,
                              progress=not args.no_progress and rank == 0)
        except KeyboardInterrupt:
            print(f"interrupted: {summary.ok} file(s) finished and kept; run again with --resume to go on",
                  file=sys.stderr)
            return 130
    summary.wall_seconds = time.perf_counter() - start
    if world > 1:
        import torch.distributed as dist

        gathered: list[Summary | None] = [None] * world
        dist.all_gather_object(gathered, summary)
        summary = Summary()
        for s in gathered:
            summary.merge(s)
        dist.destroy_process_group()
    if rank == 0:
        _print_summary(summary, out_dir, world)
    return 1 if summary.failed else 0


def _transcribe_files(transcriber: Transcriber, files: list[InputFile], stems: list[Path], formats: list[str],
                      summary: Summary, progress: bool) -> None:
    from tqdm import tqdm

    started = time.perf_counter()
    bar = tqdm(total=len(files), unit="file", disable=not progress, file=sys.stderr, dynamic_ncols=True)
    decoded = 0.0

    def show() -> None:
        elapsed = time.perf_counter() - started
        bar.set_postfix(audio=f"{summary.audio_seconds / 3600:.2f}h", speech=f"{decoded / 3600:.2f}h",
                        rtf=f"{elapsed / summary.audio_seconds:.3f}" if summary.audio_seconds else "-")

    def on_batch(seconds: float) -> None:
        nonlocal decoded
        decoded += seconds
        show()

    transcriber.on_batch = on_batch
    for i, t in transcriber.run([str(f.path) for f in files]):
        if t.ok:
            try:
                subtitles.write_outputs(t, stems[i], formats)
            except OSError as e:
                t.error = f"cannot write outputs ({e})"
        if t.ok:
            summary.ok += 1
            summary.silent += not t.segments
            summary.audio_seconds += t.duration
        else:
            summary.failed.append((t.source, t.error))
            bar.write(f"FAILED {t.source}: {t.error}", file=sys.stderr)
        bar.update(1)
        show()
    bar.close()


def _print_summary(s: Summary, out_dir: Path, world: int) -> None:
    rtf = f"{s.wall_seconds / s.audio_seconds:.3f}" if s.audio_seconds else "-"
    print(f"transcribed {s.ok} file(s) ({s.silent} without speech), skipped {s.skipped} already done, "
          f"failed {len(s.failed)}; {s.audio_seconds / 3600:.3f} h of audio in {s.wall_seconds:.1f} s "
          f"(real-time factor {rtf}{f', {world} processes' if world > 1 else ''}); outputs in {out_dir}")
    for name, why in s.failed:
        print(f"  failed: {name}: {why}")


if __name__ == "__main__":
    sys.exit(main())
