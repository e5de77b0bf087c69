"""Atomic writes and the cache folder (downloads: tests/test_download.py, against a local server)."""

from pathlib import Path


from speech_transformer.utils.files import CACHE_ENV, atomic_write, cache_dir


def test_atomic_write_leaves_no_part_behind(tmp_path):
    path = atomic_write(tmp_path / "sub" / "a.txt", "hello\n")
    assert path.read_text() == "hello\n" and sorted(p.name for p in path.parent.iterdir()) == ["a.txt"]


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    assert cache_dir() == tmp_path
    monkeypatch.delenv(CACHE_ENV)
    assert cache_dir() == Path.home() / ".cache" / "speech_transformer"
