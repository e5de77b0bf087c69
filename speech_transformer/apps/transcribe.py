"""Batch transcription of audio: the transcriber and its Python API (the command line: `transcribe_cli`).

Pipeline, per input: the source is streamed in 30 s blocks (`sources.FileSource`, resampled to 16 kHz
block by block) through Silero VAD; the speech probabilities give chunks of at most 20 s; the file is
streamed a second time to cut those chunks out. Chunks of many files share a pool that is sorted by length
and handed to the `Recognizer` in padded batches of `batch_seconds`; each decoded chunk becomes a segment
with VAD times, and its words get times from the one aligner (CTC forced alignment). A chunk is empty only
when the decoding gives no text for it. A file's transcript is handed out as soon as its last chunk is
decoded. Memory is bounded by the block size, the pool and one batch, whatever the length of a file. A
file that fails (unreadable, truncated, decode error) is reported with its reason and the others go on.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from speech_transformer.audio.features import length_sorted_batches
from speech_transformer.audio.loading import SAMPLE_RATE, AudioError, describe, reason
from speech_transformer.decoding.options import OPTIONS, DecodingOptions
from speech_transformer.recognition.recognizer import Recognition, Recognizer
from speech_transformer.audio.sources import (
    ArraySource,
    FileSource,
    cut_chunks,
    open_source,
)
from speech_transformer.apps.writers import Segment, Transcript
from speech_transformer.audio.vad import SileroVad, SpeechChunk, VadOptions


@dataclass(frozen=True)
class TranscribeOptions:
    # DecodingOptions fields to change in the model's preferred decoding (config.json "decoding"), e.g.
    # {"beam_size": 8} or {"method": "lexicon", "lm_weight": 0.4}; the others keep the model's values
    decoding_changes: dict[str, Any] = field(default_factory=dict)
    batch_seconds: float = 120.0  # padded audio per decoding batch (0: one chunk at a time)
    pool_seconds: float | None = None  # chunk audio gathered before batching (default 4 x batch_seconds)
    word_timestamps: bool = True
    block_seconds: float = 30.0  # audio read and resampled at a time
    vad: VadOptions = VadOptions()

    @classmethod
    def from_kwargs(cls, **kwargs) -> "TranscribeOptions":
        """Flat keyword options: our fields, VadOptions' fields (threshold, max_chunk_seconds, ...) and
        DecodingOptions' fields (beam_size, ctc_weight, method, ...; None keeps the model's)."""
        own = {f.name for f in dataclasses.fields(cls)}
        vad_names = {f.name for f in dataclasses.fields(VadOptions)}
        decoding_names = set(OPTIONS)
        unknown = set(kwargs) - own - vad_names - decoding_names
        if unknown:
            raise TypeError(f"unknown transcribe option(s): {sorted(unknown)}")
        vad = kwargs.pop("vad", VadOptions())
        vad = dataclasses.replace(vad, **{k: kwargs.pop(k) for k in list(kwargs) if k in vad_names})
        changes = {**kwargs.pop("decoding_changes", {}),
                   **{k: kwargs.pop(k) for k in list(kwargs) if k in decoding_names and kwargs[k] is not None}}
        return cls(vad=vad, decoding_changes=changes, **{k: v for k, v in kwargs.items() if k not in decoding_names})

    def decoding(self, preferred: DecodingOptions = DecodingOptions()) -> DecodingOptions:
        """`preferred` (the model's) with the fields these options change."""
        return preferred.override(**self.decoding_changes)


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


class Transcriber:
    """A recogniser, a VAD and options; `run(sources)` yields `(index, Transcript)` as inputs finish."""

    def __init__(self, recognizer: Recognizer, options: TranscribeOptions = TranscribeOptions()):
        self.recognizer = recognizer
        self.options = options
        self.vad = SileroVad(options.vad)
        self.decoding = options.decoding(recognizer.options)
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
        for rows in length_sorted_batches([len(p.audio) for p in pool], self.options.batch_seconds):
            batch = [pool[j] for j in rows if pool[j].file in pending and pending[pool[j].file].error is None]
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

    def _decode_safely(self, batch: list[_Piece]) -> list[Segment | None | BaseException]:
        if not batch:
            return []
        try:
            return self.decode_chunks([p.audio for p in batch], [p.chunk for p in batch])
        except Exception as e:
            if len(batch) == 1:
                return [e]
            return [r for p in batch for r in self._decode_safely([p])]  # find the culprit, keep the rest

    def decode_chunks(self, waves: list[np.ndarray], chunks: list[SpeechChunk]) -> list[Segment | None]:
        """Chunk waveforms `(T_i,)` -> a Segment each (None where the decoding gives no text)."""
        results = self.recognizer.recognize(waves, self.decoding, batch_seconds=math.inf,
                                            align=self.options.word_timestamps)
        return [segment(r, c) if r.text else None for r, c in zip(results, chunks)]


def segment(r: Recognition, chunk: SpeechChunk) -> Segment:
    """A recognised chunk as a segment of its input: VAD times, word times moved to the input's clock."""
    start, end = chunk.start_s, chunk.end_s
    words = [dataclasses.replace(w, start=round(min(start + w.start, end), 3), end=round(min(start + w.end, end), 3))
             for w in r.words]
    avg = r.avg_logprob
    return Segment(round(start, 3), round(end, 3), r.text, round(math.exp(min(0.0, avg)), 4), round(avg, 4), words)


# --- Python API ----------------------------------------------------------------------------

def load_model(name_or_dir: str | os.PathLike | None = None, device: str = "cpu", compute: str = "auto"
               ) -> Recognizer:
    """A model directory, a shipped model's name, or None for the embedded default model; `compute` as
    `Recognizer.from_dir`'s (auto: int8 for a model stored quantized, on the CPU)."""
    return Recognizer.from_dir(name_or_dir, device=device, compute=compute)


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
