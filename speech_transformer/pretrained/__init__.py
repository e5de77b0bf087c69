"""Models that ship inside the package, so a fresh install transcribes offline."""

from __future__ import annotations

from pathlib import Path

PRETRAINED_DIR = Path(__file__).resolve().parent
DEFAULT_MODEL = "default"


def available() -> list[str]:
    return sorted(p.name for p in PRETRAINED_DIR.iterdir() if (p / "config.json").is_file())


def default_model_dir() -> Path:
    """The embedded default model's directory; FileNotFoundError if this install ships none."""
    path = PRETRAINED_DIR / DEFAULT_MODEL
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"no embedded default model in {PRETRAINED_DIR} yet: pass a trained model directory with --model "
            "(train and ship one with recipes/default: see its README.md)")
    return path


def resolve(name_or_dir: str | Path | None) -> Path:
    """A model name ('default', another shipped one, or `whisper:NAME|PATH`) or a directory -> the model directory."""
    if name_or_dir is None or str(name_or_dir) == DEFAULT_MODEL:
        return default_model_dir()
    if str(name_or_dir).startswith("whisper:"):
        from speech_transformer.importers import whisper

        return whisper.resolve(str(name_or_dir)[len("whisper:"):])
    path = Path(name_or_dir)
    if path.is_dir():
        return path
    if (PRETRAINED_DIR / str(name_or_dir) / "config.json").is_file():
        return PRETRAINED_DIR / str(name_or_dir)
    raise FileNotFoundError(f"{name_or_dir}: no such model directory or shipped model (shipped: {available()})")
