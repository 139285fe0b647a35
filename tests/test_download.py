"""Resumable, md5-checked downloads against a local HTTP server, and safe zip extraction."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import socket
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from rich.console import Console

import archbench.data.download as download_module
from archbench.data import tinyimagenet
from archbench.data.download import download, extract_zip, partial_path
from archbench.data.synthetic import LAYOUT_DIR, make_synthetic
from archbench.data.tinyimagenet import EXTRACTED_DIR, TINY_IMAGENET_MD5, load_packed, prepare
from archbench.errors import ArchbenchError


class FileServer:
    """An HTTP server on 127.0.0.1 serving in-memory files, with optional Range support and cut-offs."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.requests: list[dict] = []
        self.honour_range = True
        self.cut_after: int | None = None  # send only this many body bytes, then drop the connection
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append({"path": self.path, "range": self.headers.get("Range")})
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                start = 0
                if server.honour_range and self.headers.get("Range"):
                    start = int(self.headers["Range"].removeprefix("bytes=").split("-")[0])
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                payload = body[start:] if server.cut_after is None else body[start : start + server.cut_after]
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = FileServer()
    yield s
    s.close()


@pytest.fixture(scope="module")
def dataset_zip(tmp_path_factory) -> bytes:
    """A tiny synthetic set zipped like the official one (everything under tiny-imagenet-200/)."""
    root = tmp_path_factory.mktemp("zipped")
    make_synthetic(root, classes=2, train_per_class=3, val_per_class=2, seed=3)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted((root / LAYOUT_DIR).rglob("*")):
            archive.write(path, path.relative_to(root).as_posix())
    return buffer.getvalue()


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


# ----------------------------------------------------------------------------------------------------
# download


def test_partial_download_is_resumed_with_a_range_request(server, dataset_zip, tmp_path):
    server.files["/set.zip"] = dataset_zip
    dest = tmp_path / "set.zip"
    half = len(dataset_zip) // 2
    partial_path(dest).write_bytes(dataset_zip[:half])
    download(server.url("/set.zip"), dest, md5=_md5(dataset_zip))
    assert server.requests == [{"path": "/set.zip", "range": f"bytes={half}-"}]
    assert _md5(dest.read_bytes()) == _md5(dataset_zip)
    assert not partial_path(dest).exists()


def test_server_without_range_support_restarts_cleanly(server, dataset_zip, tmp_path):
    server.files["/set.zip"] = dataset_zip
    server.honour_range = False
    dest = tmp_path / "set.zip"
    partial_path(dest).write_bytes(dataset_zip[:1000])
    download(server.url("/set.zip"), dest, md5=_md5(dataset_zip))
    assert dest.read_bytes() == dataset_zip


def test_interrupted_download_resumes_on_the_next_run(server, dataset_zip, tmp_path):
    server.files["/set.zip"] = dataset_zip
    server.cut_after = 5000
    dest = tmp_path / "set.zip"
    with pytest.raises(ArchbenchError, match="rerun the same command to resume"):
        download(server.url("/set.zip"), dest, md5=_md5(dataset_zip))
    assert partial_path(dest).stat().st_size == 5000 and not dest.exists()
    server.cut_after = None
    download(server.url("/set.zip"), dest, md5=_md5(dataset_zip))
    assert server.requests[-1]["range"] == "bytes=5000-" and dest.read_bytes() == dataset_zip


def test_whole_partial_file_is_verified_without_refetching(server, dataset_zip, tmp_path):
    server.files["/set.zip"] = dataset_zip
    dest = tmp_path / "set.zip"
    partial_path(dest).write_bytes(dataset_zip)  # the previous run died between the last byte and the rename
    download(server.url("/set.zip"), dest, md5=_md5(dataset_zip))
    assert dest.read_bytes() == dataset_zip


def test_md5_mismatch_keeps_nothing(server, dataset_zip, tmp_path):
    server.files["/set.zip"] = dataset_zip
    dest = tmp_path / "set.zip"
    with pytest.raises(ArchbenchError, match=f"md5 {_md5(dataset_zip)} instead of 0{{32}}"):
        download(server.url("/set.zip"), dest, md5="0" * 32)
    assert list(tmp_path.iterdir()) == []


def test_existing_verified_file_is_not_downloaded_again(server, dataset_zip, tmp_path):
    dest = tmp_path / "set.zip"
    dest.write_bytes(dataset_zip)
    download(server.url("/set.zip"), dest, md5=_md5(dataset_zip))
    assert server.requests == []


def test_offline_error_says_what_to_do(tmp_path):
    with socket.socket() as probe:  # a port that was just free, so nothing listens on it
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(ArchbenchError) as info:
        download(f"http://127.0.0.1:{port}/tiny-imagenet-200.zip", tmp_path / "x.zip")
    message = info.value.message
    assert "cannot reach" in message and "--source ZIP|FOLDER" in message and "--data synthetic" in message
    assert "\n" not in message and list(tmp_path.iterdir()) == []


def test_http_error_is_one_line(server, tmp_path):
    with pytest.raises(ArchbenchError, match="HTTP 404"):
        download(server.url("/missing.zip"), tmp_path / "x.zip")


def test_prepare_from_a_url_downloads_extracts_packs_and_then_reuses(server, dataset_zip, tmp_path):
    server.files["/tiny-imagenet-200.zip"] = dataset_zip
    url = server.url("/tiny-imagenet-200.zip")
    console = Console(record=True, width=400)
    manifest = prepare(tmp_path / "root", source=url, console=console)
    checksum = f"md5:{_md5(dataset_zip)}"
    assert manifest["source"] == {"kind": "url", "location": url, "checksum": checksum, "verified": False}
    unverified = [line for line in console.export_text().splitlines() if line.startswith("unverified:")]
    assert unverified == [
        f"unverified: {url} has {checksum}, not the official Tiny-ImageNet-200 md5:{TINY_IMAGENET_MD5}; "
        "using it, recorded as unverified"
    ]
    assert manifest["splits"] == {"train": {"count": 6}, "test": {"count": 4}}
    assert (tmp_path / "root" / EXTRACTED_DIR / LAYOUT_DIR / "wnids.txt").is_file()
    assert prepare(tmp_path / "root", source=url) == manifest
    assert len(server.requests) == 1  # the second prepare needed neither the network nor a repack


def test_prepare_from_a_local_zip(dataset_zip, tmp_path):
    (tmp_path / "set.zip").write_bytes(dataset_zip)
    console = Console(record=True, width=400)
    manifest = prepare(tmp_path / "root", source=tmp_path / "set.zip", console=console)
    assert manifest["source"]["checksum"] == f"md5:{_md5(dataset_zip)}" and manifest["source"]["verified"] is False
    assert f"unverified: {tmp_path / 'set.zip'} has md5:{_md5(dataset_zip)}, not the official" in console.export_text()


def test_the_official_checksum_is_recorded_as_verified(dataset_zip, tmp_path, monkeypatch):
    """A zip whose md5 is the official one is verified, and nothing is said about it."""
    (tmp_path / "set.zip").write_bytes(dataset_zip)
    monkeypatch.setattr(tinyimagenet, "OFFICIAL_CHECKSUM", f"md5:{_md5(dataset_zip)}")
    console = Console(record=True, width=400)
    manifest = prepare(tmp_path / "root", source=tmp_path / "set.zip", console=console)
    assert manifest["source"]["verified"] is True and "unverified" not in console.export_text()
    assert load_packed(tmp_path / "root").train_labels.tolist() == [0, 0, 0, 1, 1, 1]


# ----------------------------------------------------------------------------------------------------
# extraction


def _zip_with(tmp_path: Path, members: dict[str, bytes]) -> Path:
    path = tmp_path / "crafted.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(zipfile.ZipInfo(name), data)
    return path


@pytest.mark.parametrize(
    "evil", ["../evil.txt", "tiny/../../evil.txt", "/tmp/archbench-evil.txt", "..\\evil.txt", "C:/evil.txt"]
)
def test_unsafe_members_are_refused_before_anything_is_written(tmp_path, evil):
    crafted = _zip_with(tmp_path, {"tiny/ok.txt": b"fine", evil: b"gotcha"})
    target = tmp_path / "deep" / "out"
    target.parent.mkdir()
    with pytest.raises(ArchbenchError, match="outside"):
        extract_zip(crafted, target)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["crafted.zip", "deep"]
    assert not Path("/tmp/archbench-evil.txt").exists()


def test_prepare_refuses_an_unsafe_zip(tmp_path):
    crafted = _zip_with(tmp_path, {"tiny-imagenet-200/wnids.txt": b"n1\n", "../evil.txt": b"gotcha"})
    with pytest.raises(ArchbenchError, match="evil.txt"):
        prepare(tmp_path / "root", source=crafted)
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "root" / EXTRACTED_DIR).exists()


def test_safe_zip_extracts_and_replaces_an_old_extraction(tmp_path):
    target = tmp_path / "out"
    extract_zip(_zip_with(tmp_path, {"a/old.txt": b"old"}), target)
    extract_zip(_zip_with(tmp_path, {"a/new.txt": b"new"}), target)
    assert sorted(p.relative_to(target).as_posix() for p in target.rglob("*.txt")) == ["a/new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["crafted.zip", "out"]


def test_not_a_zip(tmp_path):
    (tmp_path / "fake.zip").write_bytes(b"PK but not really")
    with pytest.raises(ArchbenchError, match="not a readable zip"):
        extract_zip(tmp_path / "fake.zip", tmp_path / "out")


def test_disk_full_during_a_download_is_one_line_and_resumable(server, dataset_zip, tmp_path, monkeypatch):
    server.files["/set.zip"] = dataset_zip
    dest = tmp_path / "set.zip"
    real_open = open

    class FillsUp:
        """A file that takes the first write and then finds the disk full."""

        def __init__(self, *args, **kwargs):
            self.file = real_open(*args, **kwargs)
            self.writes = 0

        def write(self, data):
            self.writes += 1
            if self.writes > 1:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self.file.write(data)

        def __getattr__(self, name):
            return getattr(self.file, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

    monkeypatch.setattr(download_module, "CHUNK_BYTES", 4096)
    monkeypatch.setattr(download_module, "open", FillsUp, raising=False)
    with pytest.raises(ArchbenchError) as info:
        download(server.url("/set.zip"), dest, md5=_md5(dataset_zip))
    assert info.value.message == f"cannot write to {partial_path(dest)}: no space left on device"
    assert partial_path(dest).read_bytes() == dataset_zip[:4096] and not dest.exists()
    monkeypatch.undo()
    download(server.url("/set.zip"), dest, md5=_md5(dataset_zip))  # once there is room, the rerun resumes
    assert server.requests[-1]["range"] == "bytes=4096-" and dest.read_bytes() == dataset_zip


def test_download_into_a_read_only_folder(server, dataset_zip, tmp_path, monkeypatch):
    server.files["/set.zip"] = dataset_zip
    dest = tmp_path / "set.zip"

    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(partial_path(dest)))

    monkeypatch.setattr(download_module, "open", refuse, raising=False)
    with pytest.raises(ArchbenchError) as info:
        download(server.url("/set.zip"), dest)
    assert info.value.message == f"cannot write to {partial_path(dest)}: permission denied"
    assert list(tmp_path.iterdir()) == []
