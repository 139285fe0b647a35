"""Every expected failure of the data commands is one line naming the path, and leaves nothing behind.

Filesystem errors (a file given as --root, a read-only folder, a full disk), a zip with a damaged member
and text files that are not UTF-8, through `prepare`, `make_synthetic`, the default synthetic set and
the CLI. A full disk and a folder that root may write anyway are simulated by making the call that
writes raise the OSError the system would.
"""

from __future__ import annotations

import errno
import os
import pathlib
import shutil
import stat
import zipfile
from pathlib import Path

import pytest
from conftest import TINY_SET as TINY
from PIL import Image
from typer.testing import CliRunner

from archbench.cli import app
from archbench.data import resolve, synthetic
from archbench.data.download import extract_zip
from archbench.data.synthetic import LAYOUT_DIR, make_synthetic, wnid
from archbench.data.tinyimagenet import EXTRACTED_DIR, PACKED_DIR, load_packed, prepare
from archbench.errors import ArchbenchError


@pytest.fixture
def prepared(tiny_root, tmp_path) -> Path:
    """A private copy of a prepared root (layout and a good packed cache)."""
    return Path(shutil.copytree(tiny_root, tmp_path / "prepared"))


def _snapshot(folder: Path) -> dict[str, bytes | None] | None:
    """Every path under ``folder`` (hidden ones too) with its bytes; None if ``folder`` does not exist."""
    if not folder.exists():
        return None
    return {p.relative_to(folder).as_posix(): p.read_bytes() if p.is_file() else None for p in folder.rglob("*")}


def _one_line(info: pytest.ExceptionInfo) -> str:
    message = info.value.message
    assert isinstance(info.value, ArchbenchError) and "\n" not in message and message.strip() == message
    return message


def _zip_of(folder: Path, zip_path: Path, compression: int = zipfile.ZIP_STORED) -> Path:
    """``folder`` zipped like the official archive: everything under tiny-imagenet-200/."""
    with zipfile.ZipFile(zip_path, "w", compression=compression) as archive:
        for path in sorted(folder.rglob("*")):
            archive.write(path, (Path(LAYOUT_DIR) / path.relative_to(folder)).as_posix())
    return zip_path


def _disk_full(path="") -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


# ----------------------------------------------------------------------------------------------------
# a file where a folder should be


def test_root_that_is_a_file_is_refused_by_every_data_command(layout, tmp_path):
    root = tmp_path / "data"
    root.write_text("not a folder")
    for call in (lambda: prepare(root, source=layout), lambda: make_synthetic(root, **TINY)):
        with pytest.raises(ArchbenchError) as info:
            call()
        assert _one_line(info) == f"--root {root} is a file, not a folder: pass a folder"
    with pytest.raises(ArchbenchError) as info:
        load_packed(root)
    assert _one_line(info).startswith(f"{root} is a file, not a folder of prepared data")
    assert root.read_text() == "not a folder" and sorted(p.name for p in tmp_path.iterdir()) == ["data", "src"]


def test_file_above_the_root_is_named(layout, tmp_path):
    (tmp_path / "blocker").write_text("")
    root = tmp_path / "blocker" / "data"
    with pytest.raises(ArchbenchError) as info:
        prepare(root, source=layout)
    assert _one_line(info) == f"cannot write to {root / PACKED_DIR}: {tmp_path / 'blocker'} is a file, not a folder"


# ----------------------------------------------------------------------------------------------------
# a folder that cannot be written


def test_read_only_root(layout, tmp_path):
    root = tmp_path / "readonly"
    root.mkdir()
    root.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)  # 0o555
    try:
        try:
            (root / "probe").write_text("")
        except PermissionError:
            pass
        else:
            pytest.skip("this user can write into a read-only folder (root); the next test simulates it")
        with pytest.raises(ArchbenchError) as info:
            prepare(root, source=layout)
        assert _one_line(info) == f"cannot write to {root / PACKED_DIR}: permission denied"
        assert list(root.iterdir()) == []
    finally:
        root.chmod(0o755)


@pytest.fixture
def read_only(monkeypatch):
    """Make folders under the returned paths refuse new entries, as a read-only folder does for any user."""
    protected: list[Path] = []
    real_mkdir, real_replace = os.mkdir, os.replace

    def refuse(path) -> None:
        path = Path(path)
        if any(path.parent == folder for folder in protected):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))

    def mkdir(path, *args, **kwargs):
        refuse(path)
        return real_mkdir(path, *args, **kwargs)

    def replace(src, dst, *args, **kwargs):
        refuse(dst)
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", mkdir)
    monkeypatch.setattr(os, "replace", replace)
    return protected


def test_read_only_root_simulated_keeps_the_old_cache(prepared, layout, read_only):
    Image.new("RGB", (64, 64), (0, 0, 255)).save(next((layout / "train").glob("*/images/*.JPEG")))
    read_only.append(prepared)
    before = _snapshot(prepared)
    with pytest.raises(ArchbenchError) as info:
        prepare(prepared, source=layout)  # another source: a rebuild, which cannot write
    assert _one_line(info) == f"cannot write to {prepared / PACKED_DIR}: permission denied"
    assert _snapshot(prepared) == before


def test_read_only_root_with_a_good_cache_is_still_usable(prepared, read_only):
    read_only.append(prepared)
    read_only.append(prepared / PACKED_DIR)
    manifest = prepare(prepared, source=prepared / LAYOUT_DIR)  # the same source: reused, nothing written
    assert load_packed(prepared).fingerprint == manifest["fingerprint"]


# ----------------------------------------------------------------------------------------------------
# a full disk


def test_disk_full_while_packing_keeps_the_old_cache(prepared, layout, monkeypatch):
    Image.new("RGB", (64, 64), (0, 255, 0)).save(next((layout / "val" / "images").iterdir()))
    before = _snapshot(prepared)

    def full(fd, offset, length):
        raise _disk_full()

    monkeypatch.setattr(os, "posix_fallocate", full, raising=False)
    with pytest.raises(ArchbenchError) as info:
        prepare(prepared, source=layout)
    assert _one_line(info) == f"cannot write to {prepared / PACKED_DIR}: no space left on device"
    assert _snapshot(prepared) == before
    monkeypatch.undo()
    assert load_packed(prepared).num_classes == 3


def test_disk_full_while_writing_the_manifest_leaves_nothing(layout, tmp_path, monkeypatch):
    real_write_text = pathlib.Path.write_text

    def write_text(self, *args, **kwargs):
        if self.name == "manifest.json":
            raise _disk_full(self)
        return real_write_text(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "write_text", write_text)
    root = tmp_path / "new" / "root"
    with pytest.raises(ArchbenchError) as info:
        prepare(root, source=layout)
    assert _one_line(info) == f"cannot write to {root / PACKED_DIR}: no space left on device"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # not even the folders made for it


def test_disk_full_while_extracting_keeps_the_old_extraction(layout, tmp_path, monkeypatch):
    source = _zip_of(layout, tmp_path / "set.zip")
    root = tmp_path / "root"
    extract_zip(source, root / EXTRACTED_DIR)
    before = _snapshot(root)
    calls = []
    real_copy = shutil.copyfileobj

    def copy_until_full(src, dst, *args, **kwargs):
        calls.append(1)
        if len(calls) > 3:
            raise _disk_full()
        return real_copy(src, dst, *args, **kwargs)

    monkeypatch.setattr(shutil, "copyfileobj", copy_until_full)
    with pytest.raises(ArchbenchError) as info:
        prepare(root, source=source)
    assert _one_line(info) == f"cannot write to {root / EXTRACTED_DIR}: no space left on device"
    assert _snapshot(root) == before


def test_disk_full_while_writing_a_synthetic_set_leaves_nothing(tmp_path, monkeypatch):
    def full(self, fp, *args, **kwargs):
        raise _disk_full(fp)

    monkeypatch.setattr(Image.Image, "save", full)
    root = tmp_path / "syn"
    with pytest.raises(ArchbenchError) as info:
        make_synthetic(root, **TINY)
    assert _one_line(info) == f"cannot write to {root / LAYOUT_DIR}: no space left on device"
    assert list(tmp_path.iterdir()) == []


def test_disk_full_while_making_the_default_set_names_its_final_place(tmp_path, monkeypatch):
    monkeypatch.setenv("ARCHBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(synthetic, "DEFAULT_PARAMS", TINY)

    def full(fd, offset, length):
        raise _disk_full()

    monkeypatch.setattr(os, "posix_fallocate", full, raising=False)
    with pytest.raises(ArchbenchError) as info:
        resolve("synthetic")
    final = tmp_path / "cache" / "synthetic-c3-t4-v2-s0-g1"
    assert _one_line(info) == f"cannot write to {final / PACKED_DIR}: no space left on device"
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------------------------------
# a damaged zip member


def _damage_member(zip_path: Path, member: str) -> None:
    """Flip a byte in the middle of ``member``'s compressed data (the zip's directory stays intact)."""
    with zipfile.ZipFile(zip_path) as archive:
        info = archive.getinfo(member)
    content = bytearray(zip_path.read_bytes())
    name_length = int.from_bytes(content[info.header_offset + 26 : info.header_offset + 28], "little")
    extra_length = int.from_bytes(content[info.header_offset + 28 : info.header_offset + 30], "little")
    data_start = info.header_offset + 30 + name_length + extra_length
    content[data_start + info.compress_size // 2] ^= 0xFF
    zip_path.write_bytes(bytes(content))


@pytest.mark.parametrize(
    "compression, member",
    [
        (zipfile.ZIP_STORED, f"train/{wnid(1)}/images/{wnid(1)}_2.JPEG"),
        (zipfile.ZIP_DEFLATED, "val/val_annotations.txt"),
    ],
)
def test_damaged_zip_member_is_named_and_nothing_is_extracted(layout, tmp_path, compression, member):
    source = _zip_of(layout, tmp_path / "set.zip", compression)
    name = f"{LAYOUT_DIR}/{member}"
    _damage_member(source, name)
    root = tmp_path / "root"
    with pytest.raises(ArchbenchError) as info:
        prepare(root, source=source)
    assert _one_line(info).startswith(f"{source} is damaged: its member {name} cannot be extracted (")
    assert not root.exists()


def test_damaged_zip_member_keeps_the_old_extraction(layout, tmp_path):
    good = _zip_of(layout, tmp_path / "good.zip")
    target = tmp_path / "out"
    extract_zip(good, target)
    before = _snapshot(tmp_path / "out")
    bad = _zip_of(layout, tmp_path / "bad.zip", zipfile.ZIP_DEFLATED)
    _damage_member(bad, f"{LAYOUT_DIR}/wnids.txt")
    with pytest.raises(ArchbenchError, match="wnids.txt cannot be extracted"):
        extract_zip(bad, target)
    assert _snapshot(target) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.zip", "good.zip", "out", "src"]


# ----------------------------------------------------------------------------------------------------
# text files that are not UTF-8


@pytest.mark.parametrize("relative", ["wnids.txt", "words.txt", "val/val_annotations.txt"])
def test_text_file_that_is_not_utf8_is_named(layout, tmp_path, relative):
    path = layout / relative
    lines = path.read_bytes().split(b"\n")
    lines[0] = lines[0] + "\tcafé".encode("latin-1")  # é as Latin-1 is the byte 0xe9: not UTF-8
    path.write_bytes(b"\n".join(lines))
    root = tmp_path / "root"
    with pytest.raises(ArchbenchError) as info:
        prepare(root, source=layout)
    offset = len(lines[0]) - 1
    assert _one_line(info) == f"{path} is not UTF-8 text (byte 0xe9 at offset {offset}): save it as UTF-8"
    assert not root.exists()


def test_utf8_names_are_kept(layout, tmp_path):
    words = layout / "words.txt"
    text = words.read_text(encoding="utf-8").replace("solid disc", "disque plein, café", 1)
    words.write_text(text, encoding="utf-8")
    assert prepare(tmp_path / "root", source=layout)["names"][wnid(0)].startswith("disque plein, café")


# ----------------------------------------------------------------------------------------------------
# through the CLI: exit code 2, one line, no traceback


def _cli_fails(args: list[str], *expected: str) -> None:
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:")
    for text in expected:
        assert text in result.stderr.replace("\n", "")


def test_cli_prepare_damaged_zip(layout, tmp_path):
    source = _zip_of(layout, tmp_path / "set.zip", zipfile.ZIP_DEFLATED)
    _damage_member(source, f"{LAYOUT_DIR}/wnids.txt")
    args = ["data", "prepare", "--root", str(tmp_path / "root"), "--source", str(source)]
    _cli_fails(args, f"{LAYOUT_DIR}/wnids.txt")
    assert not (tmp_path / "root").exists()


def test_cli_prepare_disk_full(layout, tmp_path, monkeypatch):
    def full(fd, offset, length):
        raise _disk_full()

    monkeypatch.setattr(os, "posix_fallocate", full, raising=False)
    root = tmp_path / "root"
    _cli_fails(["data", "prepare", "--root", str(root), "--source", str(layout)], "no space left on device", str(root))
    assert not root.exists()


def test_cli_prepare_latin1_wnids(layout, tmp_path):
    (layout / "wnids.txt").write_bytes((layout / "wnids.txt").read_bytes() + "é\n".encode("latin-1"))
    _cli_fails(["data", "prepare", "--root", str(tmp_path / "root"), "--source", str(layout)], "wnids.txt", "UTF-8")


def test_cli_synth_into_a_file(tmp_path):
    (tmp_path / "file").write_text("x")
    _cli_fails(["data", "synth", "--root", str(tmp_path / "file"), "--classes", "2"], "is a file")
    assert (tmp_path / "file").read_text() == "x"
