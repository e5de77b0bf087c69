"""Transcripts and their outputs: txt, json, srt, vtt, tsv, each written atomically (temp file + fsync + rename).

A `Transcript` is what transcription gives for one input: `Segment`s (VAD chunks) with text, confidence
and `Word`s. Subtitle cues come from word times when the segment has them (CTC forced alignment), else
one cue per segment.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from speech_transformer.model.align import Word
from speech_transformer.utils.files import TEMP_SUFFIX, atomic_write

__all__ = ["Word", "Segment", "Transcript", "FORMATS", "parse_formats", "write_outputs", "is_complete"]


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



FORMATS = ("txt", "json", "srt", "vtt", "tsv")


def parse_formats(spec: str) -> list[str]:
    """'all' or a comma list like 'txt,srt' -> formats in canonical order. ValueError on unknown ones."""
    names = {s.strip().lower() for s in spec.split(",") if s.strip()}
    if "all" in names:
        return list(FORMATS)
    unknown = names - set(FORMATS)
    if unknown or not names:
        raise ValueError(f"unknown output format(s) {sorted(unknown) or spec!r}; "
                         f"choose from {', '.join(FORMATS)} or all")
    return [f for f in FORMATS if f in names]


@dataclass(frozen=True)
class Cue:
    start: float
    end: float
    text: str


def cues(transcript: "Transcript", max_seconds: float = 6.0, max_chars: int = 84, max_gap: float = 1.0) -> list[Cue]:
    """Subtitle cues: word runs cut at `max_seconds`, `max_chars` or a pause over `max_gap`; never overlapping."""
    out: list[Cue] = []
    for seg in transcript.segments:
        if not seg.words:
            out.append(Cue(seg.start, seg.end, seg.text))
            continue
        run: list = []
        for w in seg.words:
            if run and (w.end - run[0].start > max_seconds or w.start - run[-1].end > max_gap
                        or len(" ".join(x.word for x in run)) + 1 + len(w.word) > max_chars):
                out.append(Cue(run[0].start, run[-1].end, " ".join(x.word for x in run)))
                run = []
            run.append(w)
        out.append(Cue(run[0].start, run[-1].end, " ".join(x.word for x in run)))
    fixed: list[Cue] = []
    for c in out:  # monotonic, non-overlapping, each at least 10 ms long
        start = max(c.start, fixed[-1].end if fixed else 0.0)
        fixed.append(Cue(round(start, 3), round(max(c.end, start + 0.01), 3), c.text))
    return fixed


def timestamp(seconds: float, separator: str = ",") -> str:
    """HH:MM:SS,mmm (SRT) or, with separator '.', HH:MM:SS.mmm (WebVTT)."""
    ms = max(0, round(seconds * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{separator}{ms:03d}"


def to_txt(t: "Transcript") -> str:
    return "".join(s.text + "\n" for s in t.segments)


def to_json(t: "Transcript") -> str:
    return json.dumps(t.to_dict(), ensure_ascii=False, indent=1) + "\n"


def to_srt(t: "Transcript") -> str:
    return "".join(f"{i}\n{timestamp(c.start)} --> {timestamp(c.end)}\n{c.text}\n\n"
                   for i, c in enumerate(cues(t), 1))


def to_vtt(t: "Transcript") -> str:
    return "WEBVTT\n\n" + "".join(f"{timestamp(c.start, '.')} --> {timestamp(c.end, '.')}\n{c.text}\n\n"
                                  for c in cues(t))


def to_tsv(t: "Transcript") -> str:
    """Whisper's layout: integer milliseconds."""
    rows = [f"{round(s.start * 1000)}\t{round(s.end * 1000)}\t{s.text.replace(chr(9), ' ')}\n" for s in t.segments]
    return "start\tend\ttext\n" + "".join(rows)


RENDER = {"txt": to_txt, "json": to_json, "srt": to_srt, "vtt": to_vtt, "tsv": to_tsv}


def output_path(stem: Path, fmt: str) -> Path:
    return stem.with_name(f"{stem.name}.{fmt}")


def atomic_write_text(path: Path, text: str) -> None:
    """Readers see the old file or the whole new one, never a part: write a temp file, fsync, rename."""
    atomic_write(path, text, fsync=True)


def write_outputs(t: "Transcript", stem: Path, formats: list[str]) -> list[Path]:
    """One file per format, `stem.<fmt>`; json goes last so that it marks a finished input."""
    paths = []
    for fmt in sorted(formats, key=lambda f: f == "json"):
        path = output_path(stem, fmt)
        atomic_write_text(path, RENDER[fmt](t))
        paths.append(path)
    return paths


def is_complete(stem: Path, formats: list[str]) -> bool:
    """Every requested output exists (each was renamed into place whole, so existing means complete)."""
    return all(output_path(stem, f).is_file() for f in formats)


def remove_stale_temps(stem: Path, formats: list[str]) -> int:
    """Delete temp files a killed run left for these outputs. Returns how many."""
    n = 0
    for fmt in formats:
        path = output_path(stem, fmt)
        for tmp in glob.glob(os.path.join(glob.escape(str(path.parent)), f".{glob.escape(path.name)}.*{TEMP_SUFFIX}")):
            Path(tmp).unlink(missing_ok=True)
            n += 1
    return n
