"""Download, check, extract and prepare the OpenSLR LibriSpeech sets.

Sets: resource 12 (train-clean-100, train-clean-360, train-other-500, dev-clean, dev-other,
test-clean, test-other) and resource 31, Mini LibriSpeech (dev-clean-2, train-clean-5).

Usage:

    python -m speech_transformer.training.download [get] --sets dev-clean test-clean --dest DIR
        [--mirror URL ...] [--data-dir EXISTING_TREE] [--manifest-dir DIR]
        [--md5 SET=HEX ...] [--skip-checksum] [--remove-archives] [--retries N]
    python -m speech_transformer.training.download prepare --data-dir TREE --sets SET ... --manifest-dir DIR [--force]
    python -m speech_transformer.training.download list

`get` (the default subcommand) does, for each set, whatever is not done yet:

1. download `<mirror>/resources/<12|31>/<set>.tar.gz` to `DEST/<set>.tar.gz`, through
   `DEST/<set>.tar.gz.part`, resuming an interrupted download with an HTTP Range request and
   checking the final size against the server's; `--mirror` may be given several times (tried
   in order), e.g. https://us.openslr.org, https://openslr.elda.org,
   https://openslr.magicdatatech.com; the default is https://www.openslr.org;
2. check the archive's MD5 against the published one (`ARCHIVES`); a mismatch moves it to
   `DEST/<set>.tar.gz.bad` and stops with an error naming the file and both sums;
3. extract it under `DEST` (giving `DEST/LibriSpeech/<set>/`), refusing absolute or `..`
   member paths, then write the marker `DEST/<set>.done` so that reruns skip steps 1-3;
4. write the manifest `MANIFEST_DIR/<set>.jsonl` (default `DEST/manifests`) unless it exists.

With `--data-dir TREE`, a set already extracted there (`TREE/LibriSpeech/<set>/` or
`TREE/<set>/`) is not downloaded: its manifest is made from TREE. `prepare` only does step 4.
Exit status: 0 on success, 1 on a download, checksum or archive error, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import posixpath
import re
import sys
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from speech_transformer.utils.files import CHUNK, DownloadError, fetch, log
from speech_transformer.training.data import read_librispeech_dir, write_manifest

DEFAULT_MIRROR = "https://www.openslr.org"


@dataclass(frozen=True)
class Archive:
    name: str
    resource: int  # OpenSLR resource number
    md5: str  # as published in https://www.openslr.org/resources/<resource>/md5sum.txt


ARCHIVES: dict[str, Archive] = {a.name: a for a in (
    Archive("train-clean-100", 12, "2a93770f6d5c6c964bc36631d331a522"),
    Archive("train-clean-360", 12, "c0e676e450a7ff2f54aeade5171606fa"),
    Archive("train-other-500", 12, "d1a0fd59409feb2c614ce4d30c387708"),
    Archive("dev-clean", 12, "42e2234ba48799c1f50f24a7926300a1"),
    Archive("dev-other", 12, "c8d0bcc9cca99d4f8b62fcc847357931"),
    Archive("test-clean", 12, "32fa31d27d2e1cad72775fee3f4849a9"),
    Archive("test-other", 12, "fb5a50374b501bb3bac4815ee91d3135"),
    Archive("dev-clean-2", 31, "6d7ab67ac6a1d2c993d050e16d61080d"),
    Archive("train-clean-5", 31, "5df7d4e78065366204ca6845bb08f490"),
)}


class ChecksumError(DownloadError):
    pass


class UnsafeArchiveError(DownloadError):
    pass


def archive_url(name: str, mirror: str = DEFAULT_MIRROR) -> str:
    a = _archive(name)
    return f"{mirror.rstrip('/')}/resources/{a.resource}/{a.name}.tar.gz"


def _archive(name: str) -> Archive:
    if name not in ARCHIVES:
        raise DownloadError(f"unknown LibriSpeech set {name!r}; known: {', '.join(ARCHIVES)}")
    return ARCHIVES[name]


def md5sum(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def verify(path: Path, expected: str) -> None:
    """Check `path`'s MD5; on a mismatch move it to `<path>.bad` and raise ChecksumError."""
    actual = md5sum(path)
    if actual != expected.lower():
        bad = path.with_name(path.name + ".bad")
        os.replace(path, bad)
        raise ChecksumError(f"{path}: MD5 mismatch: expected {expected.lower()}, got {actual}. "
                            f"The file was moved to {bad}; delete it and rerun to download again "
                            f"(or try another --mirror)")


def download(name: str, dest: Path, mirrors: Sequence[str] = (DEFAULT_MIRROR,), md5: str | None = None,
             check: bool = True, **fetch_kw) -> Path:
    """`DEST/<name>.tar.gz`, downloaded (trying `mirrors` in order) and MD5-checked.

    md5: overrides the published sum; check=False skips the check.
    """
    expected = md5 or _archive(name).md5
    path = Path(dest) / f"{name}.tar.gz"
    mirrors = list(mirrors) or [DEFAULT_MIRROR]
    for i, mirror in enumerate(mirrors):
        try:
            fetch(archive_url(name, mirror), path, **fetch_kw)
            break
        except DownloadError as e:
            if i == len(mirrors) - 1:
                raise
            log(f"{e}; trying the next mirror")
    if check:
        log(f"{path}: checking MD5")
        verify(path, expected)
    return path


# ---------------------------------------------------------------- extract

def _check_member(m: tarfile.TarInfo, archive: Path) -> None:
    def outside(p: str) -> bool:
        p = p.replace("\\", "/")
        return p.startswith("/") or bool(re.match(r"^[A-Za-z]:", p)) or posixpath.normpath(p).split("/")[0] == ".."

    if outside(m.name) or ".." in PurePosixPath(m.name.replace("\\", "/")).parts:
        raise UnsafeArchiveError(f"{archive}: refusing to extract member {m.name!r} (absolute path or '..')")
    if m.issym() and (m.linkname.startswith("/") or outside(posixpath.join(posixpath.dirname(m.name), m.linkname))):
        raise UnsafeArchiveError(f"{archive}: refusing link {m.name!r} -> {m.linkname!r} (points outside)")
    if m.islnk() and outside(m.linkname):
        raise UnsafeArchiveError(f"{archive}: refusing hard link {m.name!r} -> {m.linkname!r} (points outside)")
    if not (m.isfile() or m.isdir() or m.issym() or m.islnk()):
        raise UnsafeArchiveError(f"{archive}: refusing special member {m.name!r} (device or fifo)")


def extract(archive: Path, dest: Path) -> None:
    """Unpack a .tar.gz under `dest`, member by member, after a safety check of each.

    Raises UnsafeArchiveError on absolute paths, `..` components, links pointing outside and
    special files; tarfile's "data" filter is applied on top.
    """
    dest.mkdir(parents=True, exist_ok=True)
    log(f"{archive}: extracting to {dest}")
    try:
        with tarfile.open(archive, "r|gz") as tf:
            for m in tf:
                _check_member(m, archive)
                tf.extract(m, dest, filter="data")
    except tarfile.FilterError as e:
        raise UnsafeArchiveError(f"{archive}: refusing to extract ({e})") from None
    except (tarfile.TarError, EOFError, OSError) as e:
        raise DownloadError(f"{archive}: cannot extract ({e})") from None


def done_marker(name: str, dest: Path) -> Path:
    return Path(dest) / f"{name}.done"


def fetch_and_extract(name: str, dest: Path, mirrors: Sequence[str] = (DEFAULT_MIRROR,), md5: str | None = None,
                      check: bool = True, remove_archive: bool = False, **fetch_kw) -> Path:
    """Download, check and extract set `name` under `dest` unless its `.done` marker exists.

    Returns the extracted set folder, `DEST/LibriSpeech/<name>`.
    """
    dest = Path(dest)
    marker, folder = done_marker(name, dest), dest / "LibriSpeech" / name
    if marker.exists() and folder.is_dir():
        log(f"{name}: already extracted ({marker} exists)")
        return folder
    archive = download(name, dest, mirrors, md5, check, **fetch_kw)
    extract(archive, dest)
    if not folder.is_dir():
        raise DownloadError(f"{archive}: extracted, but {folder} is missing (not a LibriSpeech archive?)")
    marker.write_text(f"{archive.name} extracted to {folder}\n", encoding="utf-8")
    if remove_archive:
        archive.unlink()
    return folder


# ---------------------------------------------------------------- prepare

def find_set(tree: Path, name: str) -> Path | None:
    """The folder of set `name` in an extracted tree (`TREE/LibriSpeech/<name>` or `TREE/<name>`)."""
    for folder in (Path(tree) / "LibriSpeech" / name, Path(tree) / name):
        if folder.is_dir():
            return folder
    return None


def prepare_set(folder: Path, manifest: Path, force: bool = False) -> Path:
    """Write the JSONL manifest of one extracted set, unless it already exists."""
    if manifest.exists() and not force:
        log(f"{manifest}: exists, skipped")
        return manifest
    utts = read_librispeech_dir(folder)
    write_manifest(utts, manifest)
    log(f"{manifest}: {len(utts)} utterances, {sum(u.duration for u in utts) / 3600:.2f} h")
    return manifest


def prepare(tree: Path, sets: Sequence[str], manifest_dir: Path, force: bool = False) -> dict[str, Path]:
    """JSONL manifests `MANIFEST_DIR/<set>.jsonl` of the sets extracted in `tree`."""
    out = {}
    for name in sets:
        folder = find_set(tree, name)
        if folder is None:
            raise DownloadError(f"{tree}: set {name!r} not found (looked for LibriSpeech/{name} and {name})")
        out[name] = prepare_set(folder, Path(manifest_dir) / f"{name}.jsonl", force)
    return out


# ---------------------------------------------------------------- CLI

def _md5_overrides(items: Sequence[str]) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not re.fullmatch(r"[0-9a-fA-F]{32}", value):
            raise DownloadError(f"--md5 {item!r}: expected SET=<32 hex digits>")
        out[_archive(name).name] = value.lower()
    return out


def get(sets: Sequence[str], dest: Path, mirrors: Sequence[str] = (DEFAULT_MIRROR,), data_dir: Path | None = None,
        manifest_dir: Path | None = None, md5: dict[str, str] | None = None, check: bool = True,
        remove_archives: bool = False, force: bool = False, **fetch_kw) -> dict[str, Path]:
    """Everything `get` does (see the module docstring); returns the manifest of each set."""
    dest = Path(dest)
    manifest_dir = Path(manifest_dir) if manifest_dir else dest / "manifests"
    for name in sets:
        _archive(name)
    out = {}
    for name in sets:
        folder = find_set(data_dir, name) if data_dir else None
        if folder is not None:
            log(f"{name}: using the existing {folder}")
        else:
            folder = fetch_and_extract(name, dest, mirrors, (md5 or {}).get(name), check, remove_archives, **fetch_kw)
        out[name] = prepare_set(folder, manifest_dir / f"{name}.jsonl", force)
    return out


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m speech_transformer.training.download",
                                description="Download, extract and prepare LibriSpeech sets from OpenSLR.")
    sub = p.add_subparsers(dest="command", required=True)
    g = sub.add_parser("get", help="download + check + extract + prepare (the default)")
    g.add_argument("--sets", nargs="+", required=True, metavar="SET", help=f"of: {' '.join(ARCHIVES)}")
    g.add_argument("--dest", type=Path, required=True, help="folder for archives, the extracted tree and markers")
    g.add_argument("--mirror", action="append", metavar="URL",
                   help=f"OpenSLR mirror root, repeatable, tried in order (default {DEFAULT_MIRROR})")
    g.add_argument("--data-dir", type=Path, help="an existing tree: sets found there are not downloaded")
    g.add_argument("--manifest-dir", type=Path, help="where <set>.jsonl go (default DEST/manifests)")
    g.add_argument("--md5", action="append", default=[], metavar="SET=HEX", help="override a published MD5")
    g.add_argument("--skip-checksum", action="store_true", help="do not check MD5 sums")
    g.add_argument("--remove-archives", action="store_true", help="delete each .tar.gz once extracted")
    g.add_argument("--retries", type=int, default=5, help="retries per mirror on dropped connections (default 5)")
    g.add_argument("--force", action="store_true", help="rewrite existing manifests")
    pr = sub.add_parser("prepare", help="manifests of sets already extracted")
    pr.add_argument("--data-dir", type=Path, required=True, help="tree holding LibriSpeech/<set>/ (or <set>/)")
    pr.add_argument("--sets", nargs="+", required=True, metavar="SET")
    pr.add_argument("--manifest-dir", type=Path, required=True)
    pr.add_argument("--force", action="store_true", help="rewrite existing manifests")
    sub.add_parser("list", help="the known sets, their URLs and MD5 sums")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] not in ("get", "prepare", "list", "-h", "--help"):
        argv.insert(0, "get")
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:  # --help, or bad arguments (already reported)
        return int(e.code or 0)
    try:
        if args.command == "list":
            for a in ARCHIVES.values():
                print(f"{a.name}\t{archive_url(a.name)}\t{a.md5}")
            return 0
        if args.command == "prepare":
            prepare(args.data_dir, args.sets, args.manifest_dir, args.force)
            return 0
        get(args.sets, args.dest, args.mirror or [DEFAULT_MIRROR], args.data_dir, args.manifest_dir,
            _md5_overrides(args.md5), not args.skip_checksum, args.remove_archives, args.force,
            retries=args.retries)
        return 0
    except (DownloadError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
