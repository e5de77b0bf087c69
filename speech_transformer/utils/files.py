"""Files: written so that a reader sees the old file or the whole new one, never a part; the cache folder;
downloads over HTTP that resume where they stopped."""

from __future__ import annotations

import http.client
import os
import re
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

TEMP_SUFFIX = ".part"  # `.NAME.PID.part` beside the file while it is written
CACHE_ENV = "SPEECH_TRANSFORMER_CACHE"  # converted LMs and imported models (default ~/.cache/speech_transformer)
CHUNK = 1 << 20
USER_AGENT = "speech_transformer-download/1 (urllib)"


def temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}{TEMP_SUFFIX}")


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temp path beside `path` to write to; renamed onto `path` if the block succeeds, removed if it fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: str | os.PathLike, data: str | bytes, fsync: bool = False) -> Path:
    """Write text (UTF-8, LF) or bytes to `path` atomically; `fsync` also flushes it to disk first."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
    return Path(path)


def cache_dir() -> Path:
    """Where converted and downloaded things are kept: $SPEECH_TRANSFORMER_CACHE, else ~/.cache/speech_transformer."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "speech_transformer")


# --- downloads -------------------------------------------------------------------------------

class DownloadError(RuntimeError):
    """A download, checksum or extraction step failed; the message says which file and why."""


class _Transient(DownloadError):
    """A failure worth retrying (dropped connection, short body, server error)."""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def fetch(url: str, dest: Path, *, retries: int = 5, retry_wait: float = 2.0, timeout: float = 60.0) -> Path:
    """Download `url` to `dest` through `dest.part`, resuming it with Range requests.

    An existing `dest` is taken as finished. Dropped connections, short bodies and 5xx answers
    are retried (`retries` times, waiting `retry_wait`, doubling); 4xx answers are not.
    """
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    for attempt in range(retries + 1):
        try:
            _fetch_once(url, part, timeout)
            break
        except _Transient as e:
            if attempt == retries:
                kept = f"; {part} is kept, rerun to resume" if part.exists() else ""
                raise DownloadError(f"{url}: gave up after {retries + 1} tries ({e}){kept}") from None
            wait = retry_wait * 2 ** attempt
            log(f"{url}: {e}; retrying in {wait:g} s")
            time.sleep(wait)
    os.replace(part, dest)
    return dest


def _fetch_once(url: str, part: Path, timeout: float) -> None:
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": USER_AGENT}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # nothing left past `have`: done, or a bad .part
            total = _content_range(e.headers.get("Content-Range", ""))[1]
            if total == have:
                return
            part.unlink()
            raise _Transient(f"{part.name} ({have} bytes) does not fit the server's {total} bytes; restarting") from None
        if e.code >= 500:
            raise _Transient(f"HTTP {e.code} {e.reason}") from None
        raise DownloadError(f"{url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        raise _Transient(f"cannot connect ({getattr(e, 'reason', e)})") from None

    with resp:
        if have and resp.status == 206:
            start, total = _content_range(resp.headers.get("Content-Range", ""))
            if start != have:
                raise DownloadError(f"{url}: asked for bytes from {have}, server sent from {start}")
            mode = "ab"
            log(f"{url}: resuming at {have} bytes")
        else:  # 200: a fresh start (or a server that ignores Range)
            length = resp.headers.get("Content-Length")
            total, have, mode = (int(length) if length else None), 0, "wb"
            log(f"{url}: downloading" + (f" {total} bytes" if total else ""))
        step = max(total // 10, CHUNK) if total else None
        next_report = have + step if step else None
        with open(part, mode) as f:
            try:
                while block := resp.read(CHUNK):
                    f.write(block)
                    have += len(block)
                    if next_report and have >= next_report < total:
                        log(f"{part.name}: {have / total:.0%} of {total / 1e6:.0f} MB")
                        next_report += step
            except http.client.IncompleteRead as e:
                f.write(e.partial)
                raise _Transient("connection dropped") from None
            except (OSError, http.client.HTTPException) as e:
                raise _Transient(f"connection dropped ({e})") from None
    size = part.stat().st_size
    if total is not None and size != total:
        raise _Transient(f"got {size} of {total} bytes")


def _content_range(value: str) -> tuple[int | None, int | None]:
    """(start, total) of a `bytes START-END/TOTAL` or `bytes */TOTAL` header; None where absent."""
    m = re.fullmatch(r"\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)\s*", value)
    if not m:
        return None, None
    start, total = m.groups()
    return (int(start) if start else None), (int(total) if total != "*" else None)
