"""Live listening: audio blocks in, partial and final hypotheses out, through the one `Recognizer` path.

`StreamingRecognizer.accept(block, rate)` takes blocks of any size and sample rate and returns `Event`s:

- Silero VAD scores the stream window by window (32 ms, state carried); an utterance opens when a window
  reaches the speech threshold and closes after `end_silence_seconds` below the lower threshold (or is cut
  at its quietest window once it is `max_utterance_seconds` long), as silero's own segmentation does.
- While it is open, every `hop_seconds` of new audio the open utterance is encoded and decoded greedily: a
  **partial**, by the decoder where it writes the finals (their writing; each partial reads the last one
  as its draft, `search.follow_draft`, so only what changed is written), else by the CTC head. Words that
  two partials in a row agree on become stable (LocalAgreement-2): later partials keep them and only extend
  or correct the tail. Once the open audio is longer than `partial_window_seconds`, it is encoded from 1 s
  before the end of the last stable word only, so the cost of a partial is bounded. A partial waits while
  the stream is behind (after a slow step), so that the end of speech is heard without delay.
- An utterance starts `lead_seconds` before the window that opened it (the pre-roll is kept for this).
- At its end the whole utterance is decoded once with the model's preferred decoding, with word times from
  the aligner: a **final**, never changed afterwards; greedy decoding reads the last partial as its draft.
  Decoding starts as soon as the trailing pad is there (`pad_seconds` after the speech), so it overlaps the
  rest of the silence wait. With a grammar the utterance is matched instead (`commands.matching.match`, the
  model's MatchOptions): a **command** or **rejected** event. A command matched with `command_confidence`
  or more is given at once, without waiting for the rest of the silence.

Only the open utterance (at most `max_utterance_seconds`) and a short pre-roll are kept: memory and CPU stay
bounded however long it listens. Why this design, and what it costs: docs/streaming.md.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import torch
import torchaudio.functional as AF

from speech_transformer.audio.loading import SAMPLE_RATE
from speech_transformer.audio.vad import CONTEXT, WINDOW, SileroVad, VadOptions
from speech_transformer.decoding.options import DecodingOptions
from speech_transformer.model.align import Word
from speech_transformer.recognition.recognizer import Recognizer

PARTIAL_CTC = DecodingOptions(method="ctc")
PARTIAL_DECODER = DecodingOptions()  # greedy
STABLE_AFTER = 0.5  # s: a partial's words ending this close to its end may still be growing
CATCH_UP = 0.2  # s: a partial waits while the newest block arrived longer ago than this (more are waiting)
READ_BACK = 1.0  # s: audio before the window of a long utterance's partial, for the decoder to read into it


@dataclass(frozen=True)
class StreamOptions:
    hop_seconds: float = 0.4  # new audio between partials
    end_silence_seconds: float = 0.25  # silence that ends an utterance
    pad_seconds: float = 0.1  # audio kept after the speech of an utterance (<= end_silence_seconds): the
    # final's decoding starts once it is in (the default model appends 1 s of silence of its own)
    lead_seconds: float = 0.5  # audio kept before it (not before the last utterance's end): the VAD hears
    # a soft onset ("s", "t") late
    command_confidence: float = 0.9  # with a grammar: a command this sure closes its utterance after pad_seconds
    max_utterance_seconds: float = 20.0  # longer speech is cut at its quietest window
    partial_window_seconds: float = 10.0  # at most this much audio is encoded for a partial
    min_speech_seconds: float = 0.15  # utterances with less speech (windows above threshold) are dropped
    threshold: float = 0.5  # VAD speech probability that opens an utterance (closes below threshold - 0.15)
    decoding: DecodingOptions | None = None  # of the finals (None: the model's preferred decoding)
    partial_method: str | None = None  # "attention" (greedy) or "ctc" (greedy); None: "attention" where the
    # finals are the decoder's (no grammar): the finals' writing, and the final reads the last one as a draft

    def __post_init__(self):
        if self.partial_method not in (None, "attention", "ctc"):
            raise ValueError('partial_method must be "attention", "ctc" or None')
        if not 0 < self.pad_seconds <= self.end_silence_seconds or self.lead_seconds < 0:
            raise ValueError("pad_seconds must be in (0, end_silence_seconds], lead_seconds >= 0")
        if not 0 < self.command_confidence <= 1.0:
            raise ValueError("command_confidence must be in (0, 1] (1: wait for end_silence_seconds)")
        if self.max_utterance_seconds < 2 * self.partial_window_seconds / 3 or self.hop_seconds <= 0:
            raise ValueError("need hop_seconds > 0 and max_utterance_seconds >= 2/3 partial_window_seconds")


@dataclass
class Event:
    type: str  # "partial", "final", "command" or "rejected"
    text: str
    start: float  # seconds from the start of the stream
    end: float
    latency_s: float  # from when the audio it ends with was heard (finals: the end of speech) to the event
    words: list[Word] | None = None  # finals: times in seconds from the start of the stream
    command: dict | None = None  # commands: CommandMatch.to_dict() (command, action, slots, confidence, llr)
    stable: str | None = None  # partials: the start of `text` that later partials keep

    def to_dict(self) -> dict:
        d = {"type": self.type, "text": self.text, "start": round(self.start, 3), "end": round(self.end, 3),
             "latency_s": round(self.latency_s, 3)}
        if self.words is not None:
            d["words"] = [asdict(w) for w in self.words]
        if self.stable is not None:
            d["stable"] = self.stable
        return {**d, **(self.command or {})}


class StreamResampler:
    """Blocks at `rate` -> the same audio at 16 kHz, block by block, equal to resampling it whole (to
    float rounding): each unit is resampled with `context` samples of real audio on both sides, so the last
    `context` input samples wait for the next block (or `flush`)."""

    def __init__(self, rate: int):
        g = math.gcd(rate, SAMPLE_RATE)
        self.rate, self.unit_in, self.unit_out = rate, rate // g, SAMPLE_RATE // g
        self.context = self.unit_in * math.ceil(1024 / self.unit_in)
        self.left = np.zeros(0, np.float32)
        self.pending = np.zeros(0, np.float32)

    def __call__(self, block: np.ndarray, final: bool = False) -> np.ndarray:
        if self.rate == SAMPLE_RATE:
            return block
        self.pending = np.concatenate([self.pending, block])
        units = len(self.pending) // self.unit_in if final else (len(self.pending) - self.context) // self.unit_in
        if units <= 0:
            return np.zeros(0, np.float32)
        n = units * self.unit_in
        current, right = self.pending[:n], self.pending[n:n + self.context]
        with torch.inference_mode():
            y = AF.resample(torch.from_numpy(np.concatenate([self.left, current, right])), self.rate, SAMPLE_RATE)
        start = len(self.left) // self.unit_in * self.unit_out
        self.left = np.concatenate([self.left, current])[-self.context:]
        self.pending = self.pending[n:]
        return y.numpy()[start:start + units * self.unit_out]


class VadStream:
    """Silero speech probabilities of a 16 kHz stream, one per 512-sample window, as the blocks come."""

    def __init__(self, vad: SileroVad):
        self.vad = vad
        self.context, self.state = torch.zeros(CONTEXT), None
        self.rest = np.zeros(0, np.float32)

    @torch.inference_mode()
    def __call__(self, block: np.ndarray) -> np.ndarray:
        x = np.concatenate([self.rest, block])
        n = len(x) // WINDOW * WINDOW
        self.rest = x[n:]
        if not n:
            return np.zeros(0, np.float32)
        probs, self.context, self.state = self.vad.score_windows(torch.from_numpy(x[:n]), self.context, self.state)
        return probs.numpy()


@dataclass
class _Utterance:
    start: int  # first sample (stream clock, 16 kHz)
    speech: int = 0  # windows at or above the threshold
    silence_from: int | None = None  # first sample of the current silence (a window below threshold - 0.15)
    next_partial: int = 0  # sample at which the next partial is due
    stable: list[Word] = field(default_factory=list)  # words of the partial that no later partial changes
    tail: list[Word] = field(default_factory=list)  # the last partial's words after them
    window_from: int = 0  # a partial encodes the audio from here (the end of a stable word, or the start)
    partial: str = ""
    said: tuple[int, list[int]] = (-1, [])  # the last partial's decoding: (first sample it read, its tokens)
    candidate: tuple[int, list[Event]] | None = None  # (end sample, events) decoded ahead of the close
    probs: list[float] = field(default_factory=list)  # speech probability of each window since it opened


class StreamingRecognizer:
    """A Recognizer listening to one stream; `accept` blocks, get events; `flush` at the end of the stream.

    With `grammar`, each utterance gives a command or rejected event (`match_options`: the model's) instead
    of a final. `clock` gives the arrival times of blocks and events (seconds).
    """

    def __init__(self, recognizer: Recognizer, options: StreamOptions = StreamOptions(), grammar=None,
                 match_options=None, clock: Callable[[], float] = time.monotonic, vad: SileroVad | None = None):
        self.recognizer, self.options, self.grammar, self.clock = recognizer, options, grammar, clock
        if grammar is not None:
            from speech_transformer.commands.matching import MatchOptions

            match_options = match_options or MatchOptions.for_model(recognizer.info)
        self.match_options = match_options
        self.decoding = options.decoding or recognizer.options
        method = options.partial_method or ("attention" if grammar is None and self.decoding.method == "attention"
                                             else "ctc")
        self.partial_decoding = PARTIAL_DECODER if method == "attention" else PARTIAL_CTC
        self.vad = VadStream(vad or SileroVad(VadOptions(threshold=options.threshold)))
        self.resamplers: dict[int, StreamResampler] = {}
        self.audio = np.zeros(0, np.float32)  # samples [base, base + len) of the stream
        self.base = 0
        self.scored = 0  # samples scored by the VAD
        self.arrivals: deque[tuple[int, float]] = deque()  # (end sample of a block, its arrival time)
        self.utterance: _Utterance | None = None
        self.closed = 0  # end sample of the last closed utterance: the next one starts after it
        self.work_s = 0.0  # wall time spent encoding and decoding

    def seconds(self, samples: int) -> float:
        return samples / SAMPLE_RATE

    def accept(self, block: np.ndarray, rate: int = SAMPLE_RATE, arrival: float | None = None) -> list[Event]:
        """A block of mono (or `(T, C)`) audio at `rate`; `arrival`: when its last sample arrived."""
        block = np.asarray(block)
        if np.issubdtype(block.dtype, np.integer):
            block = block.astype(np.float32) / float(np.iinfo(block.dtype).max + 1)
        block = block.astype(np.float32, copy=False)
        if block.ndim == 2:
            block = block.mean(axis=1)
        resampler = self.resamplers.setdefault(rate, StreamResampler(rate))
        return self._accept16(resampler(block), self.clock() if arrival is None else arrival)

    def flush(self) -> list[Event]:
        """The end of the stream: resampler tails, then the open utterance closes."""
        events = []
        for r in self.resamplers.values():
            events += self._accept16(r(np.zeros(0, np.float32), final=True), self.clock())
        self.resamplers.clear()
        u = self.utterance
        if u is not None:
            end = self.base + len(self.audio)
            speech_end = u.silence_from if u.silence_from is not None else end
            events += self._close(u, min(end, speech_end + self._pad), speech_end)
        return events

    @property
    def _pad(self) -> int:
        return int(self.options.pad_seconds * SAMPLE_RATE)

    @property
    def _lead(self) -> int:
        return int(self.options.lead_seconds * SAMPLE_RATE)

    def _accept16(self, x: np.ndarray, arrival: float) -> list[Event]:
        if not len(x):
            return []
        self.audio = np.concatenate([self.audio, x])
        self.arrivals.append((self.base + len(self.audio), arrival))
        events: list[Event] = []
        for p in self.vad(x):
            self.scored += WINDOW
            events += self._window(float(p))
        u = self.utterance
        if u is not None and self.scored >= u.next_partial and self._partial_now(u, arrival):
            events += self._partial(u)
        self._trim()
        return events

    def _partial_now(self, u: _Utterance, arrival: float) -> bool:
        """Whether a due partial is computed now: not while the speech may be ending (the newest window is
        below the threshold) or the stream is behind (after a slow step): the end of speech comes first."""
        speaking = u.silence_from is None and (not u.probs or u.probs[-1] >= self.options.threshold)
        return speaking and self.clock() - arrival <= CATCH_UP

    def _window(self, p: float) -> list[Event]:
        """One VAD window ending at sample `self.scored`, with speech probability p."""
        o, end = self.options, self.scored
        u = self.utterance
        if u is None:
            if p >= o.threshold:
                start = max(self.base, self.closed, end - WINDOW - self._lead)
                self.utterance = _Utterance(start, 1, next_partial=end + int(o.hop_seconds * SAMPLE_RATE),
                                            window_from=start)
            return []
        u.probs.append(p)
        if p >= o.threshold:
            u.speech += 1
            u.silence_from, u.candidate = None, None
        elif p < o.threshold - 0.15 and u.silence_from is None:
            u.silence_from = end - WINDOW
        if u.silence_from is not None:
            cut = u.silence_from + self._pad
            if end >= cut and (u.candidate is None or u.candidate[0] != cut):
                u.candidate = (cut, self._decode(u, cut, u.silence_from))
                if self._sure(u.candidate[1]):
                    return self._emit(u, cut)
            if end - u.silence_from >= o.end_silence_seconds * SAMPLE_RATE:
                return self._emit(u, cut)
        if end - u.start >= o.max_utterance_seconds * SAMPLE_RATE:
            return self._cut(u)
        return []

    def _cut(self, u: _Utterance) -> list[Event]:
        """An utterance at its length limit: close it at its quietest window in the last third, keep going."""
        probs = u.probs[-len(u.probs) // 3:]
        k = int(np.argmin(probs))
        cut = self.scored - (len(probs) - k) * WINDOW + WINDOW // 2
        events = self._close(u, cut, cut)
        self.utterance = _Utterance(cut, 1, next_partial=self.scored + int(self.options.hop_seconds * SAMPLE_RATE),
                                    window_from=cut)
        return events

    def _close(self, u: _Utterance, end: int, speech_end: int) -> list[Event]:
        return self._emit(u, end, self._decode(u, end, speech_end))

    def _sure(self, events: list[Event]) -> bool:
        """A command matched with at least `command_confidence`: its utterance need not wait for more silence
        (Kaldi's endpointing rule for a decoder in a final state: a complete command needs a shorter pause)."""
        sure = self.options.command_confidence
        return sure < 1.0 and any(e.type == "command" and e.command["confidence"] >= sure for e in events)

    def _emit(self, u: _Utterance, end: int, events: list[Event] | None = None) -> list[Event]:
        """Close utterance u at sample `end`: its final (or command) events, with latency counted until now."""
        if events is None:
            events = u.candidate[1] if u.candidate and u.candidate[0] == end else self._decode(u, end, end)
        self.utterance, self.closed = None, end
        now = self.clock()
        for e in events:
            e.latency_s = now - e.latency_s  # _decode stored the arrival time of the speech end
        return events

    def _decode(self, u: _Utterance, end: int, speech_end: int) -> list[Event]:
        """The final (or command) events of the utterance's audio up to `end`; latency_s holds the arrival
        time of `speech_end` until `_emit`."""
        if u.speech * WINDOW < self.options.min_speech_seconds * SAMPLE_RATE:
            return []
        audio = self.audio[u.start - self.base:end - self.base]
        start_s, end_s, arrived = self.seconds(u.start), self.seconds(end), self._arrival(speech_end)
        began = time.perf_counter()
        if self.grammar is not None:
            from speech_transformer.commands.matching import match

            (m,) = match(self.recognizer, [audio], self.grammar, self.match_options)
            events = [Event("rejected", u.partial, start_s, end_s, arrived) if m is None else
                      Event("command", m.text, start_s, end_s, arrived, command=m.to_dict())]
        else:
            (r,) = self.recognizer.decode(self.recognizer.encode([audio]), self.decoding, align=True,
                                          draft=self._draft(u, u.start))
            words = [Word(w.word, round(w.start + start_s, 3), round(w.end + start_s, 3), w.confidence)
                     for w in r.words]
            events = [Event("final", r.text, start_s, end_s, arrived, words)]
        self.work_s += time.perf_counter() - began
        return events

    def _draft(self, u: _Utterance, begin: int) -> list[int] | str | None:
        """The last partial as the draft of a decoding that reads from sample `begin`: its tokens where it read
        from there too, else its words from there on; none where partials are the CTC head's (another
        vocabulary)."""
        if self.partial_decoding.method != "attention":
            return None
        if u.said[0] == begin:
            return u.said[1]
        return " ".join(w.word for w in u.stable + u.tail if w.start >= self.seconds(begin))

    def _partial(self, u: _Utterance) -> list[Event]:
        """Greedy decoding (`partial_decoding`, reading the last partial as its draft) over the open utterance
        from `READ_BACK` s before its stable words; the tail's words that two partials in a row agree on
        (LocalAgreement-2), and that end `STABLE_AFTER` s before now, become stable."""
        o, now = self.options, self.scored
        u.next_partial = now + int(o.hop_seconds * SAMPLE_RATE)
        if u.speech * WINDOW < o.min_speech_seconds * SAMPLE_RATE:
            return []
        began = time.perf_counter()
        begin = max(u.start, u.window_from - int(READ_BACK * SAMPLE_RATE))
        audio = self.audio[begin - self.base:now - self.base]
        offset, stable_end = self.seconds(begin), u.stable[-1].end if u.stable else -1.0
        (r,) = self.recognizer.decode(self.recognizer.encode([audio]), self.partial_decoding, align=True,
                                      draft=self._draft(u, begin))
        u.said = (begin, r.tokens)
        tail = [Word(w.word, w.start + offset, w.end + offset, w.confidence) for w in r.words
                if (w.start + w.end) / 2 + offset > stable_end]
        settled = self.seconds(now) - STABLE_AFTER
        agreed = next((k for k, (a, b) in enumerate(zip(u.tail, tail)) if a.word != b.word or b.end > settled),
                      min(len(u.tail), len(tail)))
        if now - u.window_from > o.partial_window_seconds * SAMPLE_RATE:  # too long: settle its first half
            agreed = max(agreed, sum(w.end <= self.seconds(now) - o.partial_window_seconds / 2 for w in tail))
        u.stable, u.tail = u.stable + tail[:agreed], tail[agreed:]
        if u.stable and now - u.window_from > o.partial_window_seconds * SAMPLE_RATE:  # seldom: a window's
            u.window_from = max(u.window_from, int(u.stable[-1].end * SAMPLE_RATE))  # partials read each other
        self.work_s += time.perf_counter() - began
        stable = " ".join(w.word for w in u.stable)
        text = " ".join(w.word for w in u.stable + u.tail)
        if not text or text == u.partial:
            return []
        u.partial = text
        return [Event("partial", text, self.seconds(u.start), self.seconds(now), self.clock() - self._arrival(now),
                      stable=stable)]

    def _arrival(self, sample: int) -> float:
        """When `sample` was heard: the arrival of the block holding it, less the audio after it in that block
        (blocks come in real time; with 0.25 s browser chunks that is up to 0.25 s)."""
        end, arrived = next(((end, t) for end, t in self.arrivals if end >= sample), self.arrivals[-1])
        return arrived - max(0, end - sample) / SAMPLE_RATE

    def _trim(self) -> None:
        """Drop audio no utterance needs: keep the open utterance, else the pre-roll."""
        u = self.utterance
        keep = u.start if u is not None else max(self.closed, self.scored - self._lead - WINDOW)
        drop = max(0, min(keep, self.scored) - self.base)
        if drop:
            self.audio, self.base = self.audio[drop:], self.base + drop
        while len(self.arrivals) > 1 and self.arrivals[0][0] < self.base:
            self.arrivals.popleft()
