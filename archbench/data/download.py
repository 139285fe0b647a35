"""Getting the Tiny-ImageNet zip onto disk: a resumable, checksummed download and a safe extraction.

The official zip is about 248 MB from a server that is sometimes slow, so a download that dies halfway
must not start over: bytes go to ``<name>.partial`` and a rerun asks for the rest with an HTTP Range
request. The file only takes its final name after its md5 matches, so a file with the final name is
always complete. Extraction refuses any member that would land outside the target folder (absolute
paths, ``..``) before it writes anything, and builds the folder beside its final place so a failed
extraction never leaves a half-filled folder behind.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import shutil
import urllib.error
import urllib.request
import uuid
import zipfile
from pathlib import Path, PurePosixPath

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from archbench.errors import ArchbenchError

CHUNK_BYTES = 1 << 20


def file_md5(path: Path) -> str:
    """md5 of a file, read in chunks (the zip does not need to fit in memory)."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def partial_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".partial")


def download(url: str, dest: Path, md5: str | None = None, console: Console | None = None, timeout: float = 30.0) -> Path:
    """Fetch ``url`` to ``dest``, resuming ``dest.partial`` if a previous run left one.

    A ``dest`` that already exists is reused when it matches ``md5`` (or when no md5 is known). A wrong
    checksum deletes the partial file, since resuming from bad bytes could never succeed, and raises.
    """
    dest = Path(dest)
    if dest.exists():
        if md5 is None or file_md5(dest) == md5:
            return dest
        dest.unlink()  # only a file put there by hand can get here: downloads are verified before renaming
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = partial_path(dest)
    _fetch_into(url, partial, console, timeout)
    if md5 is not None:
        actual = file_md5(partial)
        if actual != md5:
            partial.unlink()
            raise ArchbenchError(
                f"the download of {url} has md5 {actual} instead of {md5}, so it was deleted: "
                "rerun to download it again, or pass a verified local copy with --source"
            )
    os.replace(partial, dest)
    return dest


def _fetch_into(url: str, partial: Path, console: Console | None, timeout: float) -> None:
    """Append the missing bytes of ``url`` to ``partial`` (all of them if the server ignores Range)."""
    have = partial.stat().st_size if partial.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # nothing left to fetch: the partial file is already whole
            return
        raise ArchbenchError(f"the server answered HTTP {e.code} ({e.reason}) for {url}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise ArchbenchError(
            f"cannot reach {url} ({reason}): without network access, pass a local copy of the zip or its "
            "extracted folder with --source ZIP|FOLDER, or train on the synthetic set with --data synthetic"
        ) from None
    with response:
        resumed = have > 0 and response.status == 206 and _range_start(response) == have
        if not resumed:
            have = 0  # the server sent the whole file: start the partial file over
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        with open(partial, "ab" if resumed else "wb") as out, _progress(console) as progress:
            task = progress.add_task(f"downloading {Path(url).name}", total=total, completed=have)
            try:
                while chunk := response.read(CHUNK_BYTES):
                    out.write(chunk)
                    progress.advance(task, len(chunk))
                error = None if total is None or out.tell() >= total else "connection closed early"
            except (OSError, http.client.HTTPException) as e:
                error = str(e) or type(e).__name__
            if error is not None:
                raise ArchbenchError(
                    f"the download of {url} stopped after {out.tell():,} bytes ({error}): rerun the same command to resume it"
                )


def _range_start(response) -> int | None:
    """First byte offset of a 206 answer, from ``Content-Range: bytes START-END/TOTAL``."""
    match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
    return int(match.group(1)) if match else None


def _progress(console: Console | None) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=console is None,
    )


def extract_zip(zip_path: Path, dest: Path) -> Path:
    """Extract ``zip_path`` into a fresh folder ``dest``, refusing members that would escape it.

    Every member name is checked before anything is written; the folder is filled under a temporary
    name beside ``dest`` and renamed into place, replacing an older extraction only once complete.
    """
    zip_path, dest = Path(zip_path), Path(dest)
    try:
        archive = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as e:
        raise ArchbenchError(f"{zip_path} is not a readable zip file ({e})") from None
    with archive:
        for name in archive.namelist():
            if not _is_safe_member(name):
                raise ArchbenchError(
                    f"{zip_path} holds the member {name!r}, which would be written outside {dest}, so it was not extracted"
                )
        dest.parent.mkdir(parents=True, exist_ok=True)
        staging = dest.with_name(f".{dest.name}.extracting-{uuid.uuid4().hex[:8]}")
        try:
            archive.extractall(staging)
            replace_dir(staging, dest)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return dest


def _is_safe_member(name: str) -> bool:
    """A member is safe when it is a relative path with no ``..`` part (on any platform's separators)."""
    normalised = name.replace("\\", "/")
    if normalised.startswith("/") or re.match(r"^[A-Za-z]:", normalised):
        return False
    return ".." not in PurePosixPath(normalised).parts


def replace_dir(new: Path, dest: Path) -> None:
    """Put folder ``new`` at ``dest``; an existing ``dest`` is moved aside first and then deleted."""
    old = None
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(dest, old)
    os.replace(new, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
