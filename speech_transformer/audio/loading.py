"""Audio input: any file, bytes or array -> 16 kHz mono float32.

Decoding goes through soundfile (libsndfile: wav, flac, ogg/vorbis, opus, mp3, NIST sphere, ...);
resampling through torchaudio's windowed-sinc resampler. Every failure is an `AudioError`
that names the input and the reason, so a batch job can report it and carry on.
"""

from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

SAMPLE_RATE = 16_000  # the model's rate; everything is resampled to it
N_FFT = 400  # 25 ms analysis window
HOP_LENGTH = 160  # 10 ms between frames
N_MELS = 80
MIN_INPUT_RATE = 4_000  # below this there is no speech band left to recognise
AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".oga", ".opus", ".sph", ".aif", ".aiff", ".au", ".caf",
                    ".w64", ".m4a", ".aac", ".wma", ".webm")  # what folder inputs and corpora are searched for

AudioSource = Union[str, os.PathLike, bytes, np.ndarray, torch.Tensor, tuple]


class AudioError(ValueError):
    """An input could not be turned into audio. `source` names it, `reason` says why."""

    def __init__(self, source: str, reason: str):
        self.source = source
        self.reason = reason
        super().__init__(f"{source}: {reason}")


@dataclass(frozen=True)
class AudioInfo:
    sample_rate: int
    channels: int
    frames: int
    format: str

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate


def reason(e: BaseException) -> str:
    """A failure as one line for a report: an AudioError's reason, else the exception's type and last line."""
    if isinstance(e, AudioError):
        return e.reason
    text = str(e).strip().splitlines()[-1][:300] if str(e).strip() else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def describe(source: AudioSource) -> str:
    """A short human name for an input, used in error messages."""
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    if isinstance(source, bytes):
        return f"<{len(source)} bytes>"
    if isinstance(source, tuple):
        return f"<array at {source[0]} Hz>" if isinstance(source[0], int) else "<array>"
    return "<array>"


def info(path: str | os.PathLike) -> AudioInfo:
    """Header facts of an audio file without decoding it. Raises AudioError."""
    _check_file(path)
    _check_format(str(path), str(path))
    try:
        i = sf.info(str(path))
    except Exception as e:  # libsndfile says "Format not recognised", "unimplemented format", ...
        raise AudioError(str(path), _unreadable(str(path), e)) from None
    return AudioInfo(i.samplerate, i.channels, i.frames, i.format)


def load_audio(source: AudioSource, sample_rate: int | None = None) -> np.ndarray:
    """Decode and resample `source` to 16 kHz mono float32 in [-1, 1].

    source: a path; the bytes of a file; a `(sample_rate, array)` or `(array, sample_rate)` tuple
    (Gradio's microphone gives `(48000, int16 array of shape (T, 2))`); or an array/tensor,
    taken to be at `sample_rate` (default 16 kHz). Arrays may be `(T,)`, `(T, C)` or `(C, T)`.
    Returns: `(T,)` float32 at SAMPLE_RATE.
    """
    name = describe(source)
    if isinstance(source, tuple):
        a, b = source
        rate, data = (a, b) if isinstance(a, (int, np.integer)) else (b, a)
        return _prepare(np.asarray(data), int(rate), name)
    if isinstance(source, torch.Tensor):
        source = source.detach().cpu().numpy()
    if isinstance(source, np.ndarray):
        return _prepare(source, sample_rate or SAMPLE_RATE, name)
    if isinstance(source, bytes):
        if not source:
            raise AudioError(name, "empty input (0 bytes)")
        return _prepare(*_decode(io.BytesIO(source), name), name)
    _check_file(source)
    return _prepare(*_decode(str(source), name), name)


def _check_file(path: str | os.PathLike) -> None:
    p = Path(path)
    if not p.exists():
        raise AudioError(str(path), "file not found")
    if p.is_dir():
        raise AudioError(str(path), "is a directory, not an audio file")
    if p.stat().st_size == 0:
        raise AudioError(str(path), "empty file (0 bytes)")


def _decode(file, name: str) -> tuple[np.ndarray, int]:
    _check_format(file, name)
    missing = _wav_bytes_missing(file)
    if missing:
        raise AudioError(name, f"truncated: WAV data chunk is {missing} bytes shorter than its header says")
    try:
        with sf.SoundFile(file) as f:
            expected = f.frames
            data = f.read(dtype="float32", always_2d=True)
            rate = f.samplerate
    except Exception as e:
        raise AudioError(name, _unreadable(file, e)) from None
    # libsndfile reports the header's frame count; fewer decoded frames means the file was cut off.
    if 0 < expected < (1 << 62) and len(data) < expected:
        raise AudioError(name, f"truncated: header promises {expected} frames, only {len(data)} decoded")
    return data, rate


def _head(file, n: int = 4096) -> tuple[bytes, int]:
    """The first `n` bytes of a path or BytesIO, and its size."""
    if isinstance(file, io.BytesIO):
        return file.getvalue()[:n], len(file.getvalue())
    with open(file, "rb") as f:
        return f.read(n), os.fstat(f.fileno()).st_size


def _check_format(file, name: str) -> None:
    """Refuse what is plainly no audio (a PDF named .mp3) before libsndfile, which would name a wrong reason."""
    kind, audio = sniff(_head(file)[0])
    if kind is not None and not audio:
        raise AudioError(name, f"not an audio format we can decode (looks like {kind})")


def _unreadable(file, e: Exception) -> str:
    """Why libsndfile could not open `file`: the format its first bytes show, with libsndfile's own words."""
    kind, _ = sniff(_head(file)[0])
    said = re.sub(r"^Error opening .*?: ", "", _short(e))  # the file is named already
    if "possibly a pipe" in said:  # what libsndfile says of any content it does not recognise
        said = "content not recognised"
    if kind is None:
        return f"not an audio format we can decode (no known audio header; libsndfile: {said})"
    return f"not a readable audio file ({kind} that libsndfile cannot decode: {said})"


def _wav_bytes_missing(file) -> int:
    """Bytes missing from a RIFF/WAVE data chunk (libsndfile silently reads what is there)."""
    head, size = _head(file)
    if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return 0
    pos = 12
    while pos + 8 <= len(head):
        chunk, length = head[pos:pos + 4], int.from_bytes(head[pos + 4:pos + 8], "little")
        if chunk == b"data":
            return max(0, pos + 8 + length - size) if length != 0xFFFFFFFF else 0
        pos += 8 + length + (length & 1)
    return 0


def _prepare(data: np.ndarray, rate: int, name: str) -> np.ndarray:
    if data.size == 0:
        raise AudioError(name, "no audio samples (zero length)")
    if rate < MIN_INPUT_RATE:
        raise AudioError(name, f"sample rate {rate} Hz is too low (need >= {MIN_INPUT_RATE} Hz)")
    if np.issubdtype(data.dtype, np.integer):
        data = data.astype(np.float32) / float(np.iinfo(data.dtype).max + 1)
    data = data.astype(np.float32, copy=False)
    if data.ndim == 2:  # channels: the short axis
        data = data.mean(axis=1 if data.shape[0] >= data.shape[1] else 0)
    elif data.ndim != 1:
        raise AudioError(name, f"expected 1-D or 2-D audio, got shape {tuple(data.shape)}")
    if not np.isfinite(data).all():
        raise AudioError(name, "audio contains NaN or infinite samples")
    if rate != SAMPLE_RATE:
        data = AF.resample(torch.from_numpy(np.ascontiguousarray(data)), rate, SAMPLE_RATE).numpy()
    return np.ascontiguousarray(data, dtype=np.float32)


# what a file's first bytes show: (magic, offset, name, whether libsndfile decodes it); names read "looks like X"
_SIGNATURES = [
    (b"fLaC", 0, "FLAC", True), (b"OggS", 0, "Ogg", True), (b"ID3", 0, "MP3", True), (b"RF64", 0, "WAV (RF64)", True),
    (b"riff", 0, "Wave64", True), (b".snd", 0, "AU", True), (b"NIST_1A", 0, "NIST SPHERE", True),
    (b"caff", 0, "CAF", True), (b"ftyp", 4, "an MP4/M4A file (AAC)", False),
    (b"\x1a\x45\xdf\xa3", 0, "a WebM/Matroska file", False), (b"\x30\x26\xb2\x75", 0, "a WMA/ASF file", False),
    (b"%PDF", 0, "a PDF document", False), (b"PK\x03\x04", 0, "a ZIP archive", False),
    (b"\x89PNG", 0, "a PNG image", False), (b"\xff\xd8\xff", 0, "a JPEG image", False), (b"GIF8", 0, "a GIF image", False),
    (b"\x1f\x8b", 0, "a gzip archive", False), (b"\x7fELF", 0, "a program (ELF)", False),
    (b"7z\xbc\xaf", 0, "a 7-Zip archive", False), (b"Rar!", 0, "a RAR archive", False),
]
_RIFF_FORMS = {b"WAVE": ("WAV", True), b"AVI ": ("an AVI video", False), b"WEBP": ("a WebP image", False)}
_FORM_TYPES = {b"AIFF": ("AIFF", True), b"AIFC": ("AIFF-C", True)}


def sniff(head: bytes) -> tuple[str | None, bool]:
    """The format a file's first bytes show, and whether libsndfile decodes it; (None, False) when unknown."""
    if head[:4] == b"RIFF" and head[8:12] in _RIFF_FORMS:
        return _RIFF_FORMS[head[8:12]]
    if head[:4] == b"FORM" and head[8:12] in _FORM_TYPES:
        return _FORM_TYPES[head[8:12]]
    for magic, at, kind, decodable in _SIGNATURES:
        if head[at:at + len(magic)] == magic:
            return kind, decodable
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:  # an MPEG audio frame
        return ("AAC (ADTS)", False) if head[1] & 0x06 == 0 else ("MP3", True)
    text = head.decode("utf-8", errors="ignore") if head else ""
    if text and len(text.encode()) >= len(head) - 3 and all(c.isprintable() or c in "\t\n\r\f" for c in text):
        start = text.lstrip()[:15].lower()
        return ("an HTML page" if start.startswith(("<!doctype html", "<html")) else "text"), False
    return None, False


def _short(e: Exception) -> str:
    return str(e).strip().splitlines()[-1][:200] if str(e).strip() else type(e).__name__
