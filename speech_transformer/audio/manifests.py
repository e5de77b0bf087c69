"""Manifests: lists of utterances (an audio file, its transcript, its speaker), as corpora, evaluation and
training read them. Three forms are read:
- TSV with a header `audio  duration_s  text` (optional `speaker`), audio paths relative to the TSV's folder;
- JSONL, one `{"audio", "duration", "text", "speaker"}` object a line (relative paths as for TSV);
- a LibriSpeech-layout folder (`<speaker>/<chapter>/<id>.trans.txt` beside the audio).
"""

from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from speech_transformer.audio.loading import AUDIO_EXTENSIONS, AudioError, info
from speech_transformer.utils.files import atomic_write

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
