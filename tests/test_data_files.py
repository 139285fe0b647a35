"""The file helpers every data command builds on: staged folders, digests, UTF-8 text, progress bars."""

from __future__ import annotations

import errno
import hashlib
import io
import os
from pathlib import Path

import pytest
from rich.console import Console
from rich.progress import DownloadColumn, MofNCompleteColumn

from archbench.data import files
from archbench.data.files import file_digest, public_path, read_text, replace_dir, staged
from archbench.errors import ArchbenchError


@pytest.mark.parametrize("size", [0, 1, 1 << 20, 3 * (1 << 20) + 17])
@pytest.mark.parametrize("algorithm", ["sha256", "md5"])
def test_file_digest_equals_hashlib_over_the_whole_file(tmp_path, size, algorithm):
    data = os.urandom(size)
    (tmp_path / "f").write_bytes(data)
    assert file_digest(tmp_path / "f", algorithm) == hashlib.new(algorithm, data).hexdigest()


def test_staged_installs_the_finished_folder_and_replaces_the_old_one(tmp_path):
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "old.txt").write_text("old")
    with staged(dest, "building") as staging:
        assert staging.parent == tmp_path and staging.name.startswith(".out.building-") and staging.is_dir()
        (staging / "new.txt").write_text("new")
        assert (dest / "old.txt").exists()  # the old folder stays until the new one is complete
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert [p.name for p in dest.iterdir()] == ["new.txt"]


def test_staged_failure_leaves_everything_as_it_was(tmp_path):
    dest = tmp_path / "a" / "b" / "out"
    with pytest.raises(RuntimeError, match="half way"):
        with staged(dest, "building") as staging:
            (staging / "part.txt").write_text("half")
            raise RuntimeError("half way")
    assert list(tmp_path.iterdir()) == []  # not the staging folder, and not the parents made for it


def test_staged_os_error_is_one_line_naming_the_destination(tmp_path):
    dest = tmp_path / "out"
    with pytest.raises(ArchbenchError) as info:
        with staged(dest, "building") as staging:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(staging / "big.npy"))
    assert info.value.message == f"cannot write to {dest}: no space left on device"
    assert list(tmp_path.iterdir()) == []


def test_nested_staging_is_reported_at_the_final_place(tmp_path):
    final = tmp_path / "cache" / "set"
    with pytest.raises(ArchbenchError) as info:
        with staged(final, "building") as outer:
            with staged(outer / "packed", "building"):
                raise OSError(errno.EACCES, os.strerror(errno.EACCES))
    assert info.value.message == f"cannot write to {final / 'packed'}: permission denied"
    staging_path = tmp_path / ".set.building-0123abcd" / ".packed.old-89abcdef" / "x.npy"
    assert public_path(staging_path) == tmp_path / "set" / "packed" / "x.npy"
    assert list(tmp_path.iterdir()) == []


def test_replace_dir_puts_the_old_folder_back_if_the_new_one_cannot_go_in(tmp_path, monkeypatch):
    dest, new = tmp_path / "dest", tmp_path / "new"
    dest.mkdir()
    (dest / "keep.txt").write_text("keep")
    new.mkdir()
    real_replace = os.replace

    def fail_second(src, dst):
        if Path(src) == new:
            raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", fail_second)
    with pytest.raises(OSError):
        replace_dir(new, dest)
    assert (dest / "keep.txt").read_text() == "keep" and sorted(p.name for p in tmp_path.iterdir()) == ["dest", "new"]


def test_read_text_is_utf8_only(tmp_path):
    (tmp_path / "good.txt").write_bytes("naïve\n".encode())
    assert read_text(tmp_path / "good.txt") == "naïve\n"
    (tmp_path / "bad.txt").write_bytes("ok\nna\xefve\n".encode("latin-1"))
    with pytest.raises(ArchbenchError) as info:
        read_text(tmp_path / "bad.txt")
    assert info.value.message == f"{tmp_path / 'bad.txt'} is not UTF-8 text (byte 0xef at offset 5): save it as UTF-8"


def test_progress_counts_items_or_bytes():
    console = Console(file=io.StringIO())
    assert any(isinstance(c, MofNCompleteColumn) for c in files.progress(console).columns)
    assert any(isinstance(c, DownloadColumn) for c in files.progress(console, transfer=True).columns)
    assert files.progress(None).disable
