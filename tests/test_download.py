"""Download / extract / prepare of LibriSpeech archives, against a local HTTP server with Range support."""

from __future__ import annotations

import hashlib
import io
import re
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from speech_transformer.training import download as dl
from speech_transformer.training.data import read_manifest

UTTS = {"1272-128104-0000": ("MISTER QUILTER IS THE APOSTLE", 0.5), "1272-128104-0001": ("NOR IS MISTER QUILTER", 0.25)}


class Server:
    """Serves `files` (URL path -> bytes) with single-range `bytes=S-[E]` support.

    `drop_after[path] = n`: the next answer for `path` sends only n bytes, then closes.
    `ignore_range`: answer 200 with the whole file, as servers without Range support do.
    `requests`: (path, Range header or None) of every request.
    """

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.drop_after: dict[str, int] = {}
        self.ignore_range = False
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                rng = self.headers.get("Range")
                server.requests.append((self.path, rng))
                data = server.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                start, end, status = 0, len(data) - 1, 200
                m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng or "")
                if m and not server.ignore_range:
                    start, status = int(m.group(1)), 206
                    end = min(int(m.group(2) or end), end)
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                body = data[start:end + 1]
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
                self.end_headers()
                self.wfile.write(body[:server.drop_after.pop(self.path, len(body))])

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def make_tarball(tmp: Path, name: str = "dev-clean") -> bytes:
    """A tiny LibriSpeech-layout .tar.gz: two synthetic FLAC utterances and their .trans.txt."""
    chapter = tmp / "src" / "LibriSpeech" / name / "1272" / "128104"
    chapter.mkdir(parents=True)
    t = np.arange(16000) / 16000
    for uid, (_, dur) in UTTS.items():
        sf.write(chapter / f"{uid}.flac", 0.3 * np.sin(2 * np.pi * 220 * t[:int(dur * 16000)]), 16000)
    (chapter / "1272-128104.trans.txt").write_text("".join(f"{u} {txt}\n" for u, (txt, _) in UTTS.items()))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        tf.add(tmp / "src" / "LibriSpeech", arcname="LibriSpeech")
    return buf.getvalue()


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def test_get_downloads_checks_extracts_prepares_then_skips(tmp_path, server, capsys):
    data = make_tarball(tmp_path)
    server.files["/resources/12/dev-clean.tar.gz"] = data
    dest = tmp_path / "out"
    argv = ["--sets", "dev-clean", "--dest", str(dest), "--mirror", server.url, "--md5", f"dev-clean={md5(data)}"]
    assert dl.main(argv) == 0

    manifest = dest / "manifests" / "dev-clean.jsonl"
    utts = read_manifest(manifest)
    assert [(u.id, u.text, u.speaker) for u in utts] == [(k, v[0], "1272") for k, v in UTTS.items()]
    assert [u.duration for u in utts] == [0.5, 0.25]
    assert all(Path(u.audio).is_file() and (dest / "LibriSpeech" / "dev-clean") in Path(u.audio).parents for u in utts)
    assert (dest / "dev-clean.tar.gz").read_bytes() == data and (dest / "dev-clean.done").exists()
    assert not (dest / "dev-clean.tar.gz.part").exists()

    before, mtime = len(server.requests), manifest.stat().st_mtime_ns
    capsys.readouterr()
    assert dl.main(argv) == 0
    assert len(server.requests) == before and manifest.stat().st_mtime_ns == mtime
    err = capsys.readouterr().err
    assert "already extracted" in err and "exists, skipped" in err


def test_resume_after_dropped_connection(tmp_path, server):
    data = np.random.default_rng(0).bytes(300_000)
    server.files["/f.bin"] = data
    server.drop_after["/f.bin"] = 100_000
    out = dl.fetch(server.url + "/f.bin", tmp_path / "f.bin", retry_wait=0)
    assert out.read_bytes() == data
    assert server.requests == [("/f.bin", None), ("/f.bin", "bytes=100000-")]


def test_resume_existing_part_file(tmp_path, server):
    data = np.random.default_rng(1).bytes(50_000)
    server.files["/resources/31/dev-clean-2.tar.gz"] = data
    (tmp_path / "dev-clean-2.tar.gz.part").write_bytes(data[:12_345])
    dl.download("dev-clean-2", tmp_path, [server.url], md5=md5(data), retry_wait=0)
    assert (tmp_path / "dev-clean-2.tar.gz").read_bytes() == data
    assert server.requests == [("/resources/31/dev-clean-2.tar.gz", "bytes=12345-")]


def test_next_mirror_is_tried(tmp_path, server):
    data = b"mini librispeech"
    server.files["/resources/31/train-clean-5.tar.gz"] = data
    dl.download("train-clean-5", tmp_path, [server.url + "/broken", server.url], md5=md5(data), retry_wait=0)
    assert (tmp_path / "train-clean-5.tar.gz").read_bytes() == data
    assert [p for p, _ in server.requests] == ["/broken/resources/31/train-clean-5.tar.gz",
                                               "/resources/31/train-clean-5.tar.gz"]


def test_server_without_range_restarts_and_complete_part_finishes(tmp_path, server):
    data = np.random.default_rng(2).bytes(20_000)
    server.files["/f.bin"] = data
    server.ignore_range = True
    (tmp_path / "a.part").write_bytes(b"x" * 5000)
    assert dl.fetch(server.url + "/f.bin", tmp_path / "a", retry_wait=0).read_bytes() == data

    server.ignore_range = False
    (tmp_path / "b.part").write_bytes(data)  # already whole: the server answers 416
    assert dl.fetch(server.url + "/f.bin", tmp_path / "b", retry_wait=0).read_bytes() == data
    assert server.requests[-1] == ("/f.bin", f"bytes={len(data)}-")


def test_missing_file_is_not_retried(tmp_path, server):
    with pytest.raises(dl.DownloadError, match="HTTP 404"):
        dl.fetch(server.url + "/nope", tmp_path / "nope", retry_wait=0)
    assert len(server.requests) == 1


def test_wrong_checksum_is_refused(tmp_path, server, capsys):
    data = make_tarball(tmp_path)
    server.files["/resources/12/dev-clean.tar.gz"] = data
    dest = tmp_path / "out"
    assert dl.main(["--sets", "dev-clean", "--dest", str(dest), "--mirror", server.url]) == 1
    err = capsys.readouterr().err
    archive = dest / "dev-clean.tar.gz"
    assert f"{archive}: MD5 mismatch" in err
    assert dl.ARCHIVES["dev-clean"].md5 in err and md5(data) in err
    assert (dest / "dev-clean.tar.gz.bad").read_bytes() == data
    assert not archive.exists() and not (dest / "dev-clean.done").exists() and not (dest / "manifests").exists()


@pytest.mark.parametrize("evil", ["../evil", "LibriSpeech/../../evil", "/tmp/evil-abs"])
def test_extract_refuses_escaping_members(tmp_path, evil):
    archive = tmp_path / "a" / "evil.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tf:
        info = tarfile.TarInfo(evil)
        info.size = 4
        tf.addfile(info, io.BytesIO(b"evil"))
    with pytest.raises(dl.UnsafeArchiveError, match=re.escape(repr(evil))):
        dl.extract(archive, tmp_path / "a" / "x")
    assert not (tmp_path / "evil").exists() and not Path("/tmp/evil-abs").exists()


def test_extract_refuses_link_outside(tmp_path):
    archive = tmp_path / "link.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        info = tarfile.TarInfo("LibriSpeech/link")
        info.type, info.linkname = tarfile.SYMTYPE, "../../etc/passwd"
        tf.addfile(info)
    with pytest.raises(dl.UnsafeArchiveError, match="points outside"):
        dl.extract(archive, tmp_path / "x")


def test_prepare_and_existing_data_dir(tmp_path, server):
    tarfile.open(fileobj=io.BytesIO(make_tarball(tmp_path, "train-clean-5"))).extractall(tmp_path / "tree", filter="data")
    mdir = tmp_path / "m"
    assert dl.main(["prepare", "--data-dir", str(tmp_path / "tree"), "--sets", "train-clean-5",
                    "--manifest-dir", str(mdir)]) == 0
    assert [u.id for u in read_manifest(mdir / "train-clean-5.jsonl")] == list(UTTS)

    dest = tmp_path / "out"
    assert dl.main(["get", "--sets", "train-clean-5", "--dest", str(dest), "--mirror", server.url,
                    "--data-dir", str(tmp_path / "tree" / "LibriSpeech")]) == 0
    assert server.requests == []
    assert len(read_manifest(dest / "manifests" / "train-clean-5.jsonl")) == 2
    assert dl.main(["prepare", "--data-dir", str(tmp_path / "tree"), "--sets", "dev-clean",
                    "--manifest-dir", str(mdir)]) == 1


def test_table_urls_and_bad_arguments(capsys):
    assert set(dl.ARCHIVES) == {"train-clean-100", "train-clean-360", "train-other-500", "dev-clean", "dev-other",
                                "test-clean", "test-other", "dev-clean-2", "train-clean-5"}
    assert all(re.fullmatch(r"[0-9a-f]{32}", a.md5) for a in dl.ARCHIVES.values())
    assert dl.archive_url("test-other") == "https://www.openslr.org/resources/12/test-other.tar.gz"
    assert dl.archive_url("train-clean-5", "https://openslr.elda.org/") == \
        "https://openslr.elda.org/resources/31/train-clean-5.tar.gz"
    assert dl.main(["--sets", "dev-clena", "--dest", "/nonexistent"]) == 1
    assert "unknown LibriSpeech set 'dev-clena'" in capsys.readouterr().err
    assert dl.main(["--sets", "dev-clean", "--dest", "/x", "--md5", "dev-clean=abc"]) == 1
    assert dl.main(["list"]) == 0 and "42e2234ba48799c1f50f24a7926300a1" in capsys.readouterr().out
