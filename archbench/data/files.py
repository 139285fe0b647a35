"""Files and folders for the data commands: build beside and rename in, digests, UTF-8 text, progress bars.

Every folder the data commands make is built in a locked staging folder ``.<name>.<tag>-<8 hex>`` beside its
place and renamed in when complete (`staged`); a later run removes those no living process holds
(`remove_abandoned`). docs/data.md#staging-folders says why.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from itertools import takewhile
from pathlib import Path

try:
    import fcntl
except ImportError:  # no advisory locks (Windows): no staging folder is known to be abandoned
    fcntl = None

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

_STAGING_PART = re.compile(r"^\.(?P<name>.+)\.[a-z]+-[0-9a-f]{8}$")


# ----------------------------------------------------------------------------------------------------
# building folders


def cache_dir() -> Path:
    """Where built-in sets and the catalogue's counts are cached: $ARCHBENCH_CACHE, else ~/.cache/archbench."""
    return Path(os.environ.get("ARCHBENCH_CACHE") or "~/.cache/archbench").expanduser()


def replace_dir(new: Path, dest: Path) -> None:
    """Put folder ``new`` at ``dest``; an existing ``dest`` is moved aside first (and back if ``new`` cannot be
    renamed in), then deleted."""
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
    """A new empty folder beside ``dest`` to build it in, put in place by ``install(staging, dest)`` when the
    block succeeds; on failure nothing is left behind (docs/data.md#staging-folders)."""
    dest = Path(dest)
    staging = dest.with_name(f".{dest.name}.{tag}-{uuid.uuid4().hex[:8]}")
    made: list[Path] = []
    finished = False
    try:
        with writing(dest):
            _refuse_file_in_the_way(dest)
            made = _missing_folders(dest.parent)
            with _held(staging):
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
def _held(staging: Path) -> Iterator[None]:
    """Make the folder ``staging`` and hold a shared lock on it for the block: made under another name and
    renamed once locked, so that `remove_abandoned` never finds it unlocked."""
    unlocked = staging.with_name(staging.name + "~")  # not a staging name: `remove_abandoned` ignores it
    unlocked.mkdir(parents=True)
    fd = -1
    try:
        if fcntl is not None:
            fd = os.open(unlocked, os.O_RDONLY)
            with suppress(OSError):  # a filesystem without locks: the folder is never removed as abandoned
                fcntl.flock(fd, fcntl.LOCK_SH)
        os.rename(unlocked, staging)
        yield
    finally:
        if fd >= 0:
            os.close(fd)
        with suppress(OSError):  # still there only if the rename failed
            unlocked.rmdir()


def remove_abandoned(folder: Path) -> None:
    """Delete the staging folders in ``folder`` that no living process holds: those a killed run left."""
    try:
        entries = list(Path(folder).iterdir()) if fcntl is not None else []
    except OSError:  # missing or unreadable: said, if it matters, where the folder is used
        return
    for entry in entries:
        if _STAGING_PART.match(entry.name) and entry.is_dir() and not entry.is_symlink() and _abandoned(entry):
            shutil.rmtree(entry, ignore_errors=True)


def _abandoned(folder: Path) -> bool:
    """Whether no process holds ``folder`` (False where that cannot be told)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:  # held by a living builder, or a filesystem without locks
        return False
    finally:
        os.close(fd)


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


def reason(error: BaseException) -> str:
    """An exception's message on one line (a damaged archive's or pickle's may span several), or its type's
    name where it has none."""
    return "; ".join(line for line in str(error).splitlines() if line.strip()) or type(error).__name__


def public_path(path: Path) -> Path:
    """``path`` with every staging folder named as the folder it becomes, as a user would look for it."""
    path = Path(path)
    parts = [(match.group("name") if (match := _STAGING_PART.match(part)) else part) for part in path.parts]
    return Path(*parts) if parts else path


def allocate(path: Path) -> None:
    """Reserve the disk blocks of ``path``, a file about to be filled through a memory map: a store into a page
    the disk has no room for kills the process with SIGBUS, a full disk here is an ENOSPC error instead."""
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
    return list(takewhile(lambda path: not path.exists(), (folder, *folder.parents)))


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


def folder_listing_digest(folder: Path) -> str:
    """sha256 of every file's relative path, size and mtime: cheap, and changes when any file does."""
    digest = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath, name)
            stat = path.stat()
            digest.update(f"{path.relative_to(folder).as_posix()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes, read in 1 MiB pieces (the file need not fit in memory)."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:  # hashlib.file_digest does this from Python 3.11, and 3.10 is supported
        for piece in iter(lambda: f.read(1 << 20), b""):
            digest.update(piece)
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
