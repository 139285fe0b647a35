"""Getting an archive onto disk and out of it: a resumable, checksummed download and a safe extraction.

A download goes to ``<name>.partial``, resumes with an HTTP Range request and takes its final name only
once its md5 matches; an extraction refuses members outside its folder and archives that inflate beyond
`MAX_INFLATED_BYTES` or `MAX_RATIO` times their size (docs/data.md#downloads-and-archives).
"""

from __future__ import annotations

import http.client
import os
import urllib.error
import urllib.request
import zipfile
import zlib
from pathlib import Path, PureWindowsPath

from rich.console import Console

from archbench.data.files import file_digest, progress, reason, staged, writing
from archbench.errors import ArchbenchError

CHUNK_BYTES = 1 << 20
MAX_INFLATED_BYTES = 16 << 30  # Tiny-ImageNet inflates to about 0.5 GB, CIFAR-100 to about 0.2 GB
MAX_RATIO = 100  # inflated / archive size: JPEGs and pickled pixels inflate to about 1x; zip bombs to 1000x
# What zipfile raises for a member whose bytes are damaged (CRC, deflate stream, truncation) or whose
# compression method it does not support.
DAMAGED_MEMBER_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError)


def partial_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".partial")


def download(
    url: str, dest: Path, md5: str | None = None, console: Console | None = None, timeout: float = 30.0
) -> Path:
    """Fetch ``url`` to ``dest``, resuming ``dest.partial`` if a previous run left one.

    An existing ``dest`` with another md5 was put there by hand (downloads are verified before renaming), so
    it is refused, not replaced; a download with the wrong md5 is deleted, as resuming it could never succeed.
    """
    dest = Path(dest)
    if dest.exists():
        actual = file_digest(dest, "md5") if md5 is not None else None
        if actual == md5:
            return dest
        raise ArchbenchError(
            f"{dest} is already there with md5 {actual}, not the official {md5}: to use it as it is (recorded as "
            f"unverified), pass --source {dest}; to download the official file, move it away first"
        )
    partial = partial_path(dest)
    with writing(partial):
        dest.parent.mkdir(parents=True, exist_ok=True)
    _fetch_into(url, partial, console, timeout)
    if md5 is not None:
        actual = file_digest(partial, "md5")
        if actual != md5:
            partial.unlink()
            raise ArchbenchError(
                f"the download of {url} has md5 {actual} instead of {md5}, so it was deleted: "
                "rerun to download it again, or pass a verified local copy with --source"
            )
    with writing(dest):
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
        raise ArchbenchError(
            f"cannot reach {url} ({getattr(e, 'reason', e)}): without network access, pass a local copy of the zip "
            "or its extracted folder with --source ZIP|FOLDER, or train on the synthetic set with --data synthetic"
        ) from None
    with response:
        content_range = response.headers.get("Content-Range", "")  # a 206 answer's "bytes START-END/TOTAL"
        resumed = have > 0 and response.status == 206 and content_range.startswith(f"bytes {have}-")
        if not resumed:
            have = 0  # the server sent the whole file: start the partial file over
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        mode = "ab" if resumed else "wb"
        # A write error is one line naming the partial file, whose bytes so far a rerun resumes after.
        with writing(partial), open(partial, mode) as out, progress(console, transfer=True) as bars:
            task = bars.add_task(f"downloading {Path(url).name}", total=total, completed=have)
            while True:  # a network error keeps the bytes so far for a resume; a write error ends in `writing`
                try:
                    chunk = response.read(CHUNK_BYTES)
                except (OSError, http.client.HTTPException) as e:
                    error = reason(e)
                    break
                if not chunk:
                    error = None if total is None or out.tell() >= total else "connection closed early"
                    break
                out.write(chunk)
                bars.advance(task, len(chunk))
            if error is not None:
                raise ArchbenchError(
                    f"the download of {url} stopped after {out.tell():,} bytes ({error}): "
                    "rerun the same command to resume it"
                )


def extract_zip(zip_path: Path, dest: Path) -> Path:
    """Extract ``zip_path`` into a fresh folder ``dest`` (staged), after checking every member name stays in it;
    a damaged member stops the extraction with one line naming it."""
    zip_path, dest = Path(zip_path), Path(dest)
    try:
        archive = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as e:
        raise ArchbenchError(f"{zip_path} is not a readable zip file ({e})") from None
    with archive:
        members = archive.infolist()
        refuse_inflation(zip_path, sum(member.file_size for member in members))
        for member in members:
            if not is_safe_member(member.filename):
                raise ArchbenchError(
                    f"{zip_path} holds the member {member.filename!r}, which would be written outside {dest}, "
                    "so it was not extracted"
                )
        with staged(dest, "extracting") as staging:
            for member in members:
                try:
                    archive.extract(member, staging)
                except DAMAGED_MEMBER_ERRORS as e:
                    raise ArchbenchError(
                        f"{zip_path} is damaged: its member {member.filename} cannot be extracted ({e}); "
                        "replace the zip with a good copy"
                    ) from None
    return dest


def refuse_inflation(archive: Path, inflated: int, partial: bool = False) -> None:
    """Refuse ``archive`` in one line if it inflates to ``inflated`` bytes (``partial``: at least that many)
    beyond `MAX_INFLATED_BYTES` or `MAX_RATIO` times its own size."""
    size = max(1, Path(archive).stat().st_size)
    if inflated > MAX_INFLATED_BYTES or inflated > MAX_RATIO * size:
        raise ArchbenchError(
            f"{archive} inflates its {size:,} bytes to {'at least ' if partial else ''}{inflated:,} "
            f"({inflated / size:,.0f} times), beyond the limits of {MAX_RATIO} times and {MAX_INFLATED_BYTES:,} "
            "bytes, so it was not unpacked: it is not a data set's archive"
        )


def is_safe_member(name: str) -> bool:
    """A member is safe when it is a relative path with no ``..`` part (on any platform's separators)."""
    path = PureWindowsPath(name)  # reads / and \ alike as separators, and C: as a drive
    return not path.drive and not path.root and ".." not in path.parts
