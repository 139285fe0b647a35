"""Files and folders for the data commands: build beside and rename in, digests, UTF-8 text, progress bars.

Every folder the data commands make (the packed cache, an extraction, a synthetic layout, the default
synthetic set) is built in a hidden staging folder beside its final place, ``.<name>.<tag>-<8 hex>``,
and renamed in only when complete (`staged`), so a reader never sees half of one and a failure leaves
nothing behind: not the staging folder, not the parent folders made for it, and not a change to what
was there before. A filesystem error on the way (a read-only folder, a full disk, a file where a folder
should be) becomes one `ArchbenchError` line naming the folder being written and what went wrong.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from archbench.errors import ArchbenchError

READ_BYTES = 1 << 20  # hashing runs at the digest's speed from 64 KiB up; larger buffers gain nothing
_STAGING_PART = re.compile(r"^\.(?P<name>.+)\.[a-z]+-[0-9a-f]{8}$")


# ----------------------------------------------------------------------------------------------------
# building folders


def replace_dir(new: Path, dest: Path) -> None:
    """Put folder ``new`` at ``dest``; an existing ``dest`` is moved aside first and then deleted.

    If ``new`` cannot be renamed in, the old ``dest`` is moved back, so ``dest`` is never lost.
    """
    old = None
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(dest, old)
    try:
        os.replace(new, dest)
    except BaseException:
        if old is not None:
            os.replace(old, dest)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextmanager
def staged(dest: Path, tag: str, install: Callable[[Path, Path], None] = replace_dir) -> Iterator[Path]:
    """A new empty folder beside ``dest`` to build it in, installed at ``dest`` when the block succeeds.

    ``install(staging, dest)`` puts the finished folder in place (default: `replace_dir`). Whatever
    happens, the staging folder is gone afterwards; on failure, so are the parent folders made for it,
    and ``dest`` is as it was. An OSError becomes an `ArchbenchError` naming ``dest``.
    """
    dest = Path(dest)
    staging = dest.with_name(f".{dest.name}.{tag}-{uuid.uuid4().hex[:8]}")
    made: list[Path] = []
    finished = False
    try:
        with writing(dest):
            _refuse_file_in_the_way(dest)
            made = _missing_folders(dest.parent)
            staging.mkdir(parents=True)
            yield staging
            install(staging, dest)
        finished = True
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if not finished:
            for folder in made:  # deepest first; rmdir only removes a folder that is still empty
                try:
                    folder.rmdir()
                except OSError:
                    break


@contextmanager
def writing(dest: Path) -> Iterator[None]:
    """Turn an OSError raised while writing ``dest`` into one line: which path, and what went wrong."""
    try:
        yield
    except OSError as e:
        raise ArchbenchError(f"cannot write to {public_path(dest)}: {describe(e)}") from None


@contextmanager
def accessing(path: Path) -> Iterator[None]:
    """Turn any OSError left (reading a source, a cache) into one line naming the file at fault."""
    try:
        yield
    except OSError as e:
        raise ArchbenchError(f"cannot access {public_path(Path(e.filename or path))}: {describe(e)}") from None


def describe(error: OSError) -> str:
    """'no space left on device', 'permission denied', ...: the system's words, as part of a sentence."""
    reason = error.strerror or str(error) or type(error).__name__
    return reason[:1].lower() + reason[1:]


def public_path(path: Path) -> Path:
    """``path`` with every staging folder named as the folder it becomes, as a user would look for it."""
    path = Path(path)
    parts = [(match.group("name") if (match := _STAGING_PART.match(part)) else part) for part in path.parts]
    return Path(*parts) if parts else path


def allocate(path: Path) -> None:
    """Reserve the disk blocks of all of ``path``, a file about to be filled through a memory map.

    A store into a memory-mapped page that the disk has no room for kills the process with SIGBUS; with
    the blocks reserved first, a full disk is an ENOSPC error here instead. Filesystems that cannot
    reserve space keep the old behaviour.
    """
    if not hasattr(os, "posix_fallocate"):
        return
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
    except OSError as e:
        if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise
    finally:
        os.close(fd)


def _missing_folders(folder: Path) -> list[Path]:
    """The folders that ``mkdir(parents=True)`` would make for ``folder``, deepest first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def _refuse_file_in_the_way(dest: Path) -> None:
    """``dest`` and the folders above it must be folders where they exist (mkdir's error would not say which)."""
    for candidate in (dest, *dest.parents):
        if candidate.exists():
            if not candidate.is_dir():
                where = public_path(candidate)
                raise ArchbenchError(f"cannot write to {public_path(dest)}: {where} is a file, not a folder")
            return


def require_folder(path: Path, option: str) -> None:
    """Refuse ``path`` (the value of ``option``) if a file sits where the folder should be."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ArchbenchError(f"{option} {path} is a file, not a folder: pass a folder")


# ----------------------------------------------------------------------------------------------------
# reading


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes, read in 1 MiB pieces (the file need not fit in memory)."""
    digest = hashlib.new(algorithm)
    buffer = bytearray(READ_BYTES)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:
        while size := f.readinto(buffer):
            digest.update(view[:size])
    return digest.hexdigest()


def read_text(path: Path) -> str:
    """The text of ``path`` decoded as UTF-8; anything else is one line naming the file and the byte."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ArchbenchError(
            f"{path} is not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}): save it as UTF-8"
        ) from None


# ----------------------------------------------------------------------------------------------------


def progress(console: Console | None, transfer: bool = False) -> Progress:
    """Rich progress bars: items done of a total with the time taken, or with ``transfer`` bytes, speed and
    time left. Disabled without a console."""
    if transfer:
        counts = (DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())
    else:
        counts = (MofNCompleteColumn(), TimeElapsedColumn())
    return Progress(TextColumn("{task.description}"), BarColumn(), *counts, console=console, disable=console is None)
