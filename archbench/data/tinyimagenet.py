"""Tiny-ImageNet-200 on disk: read the distributed layout, decode it in parallel, pack it for fast loading.

The layout, as the official zip holds it (and as `archbench data synth` writes it)::

    wnids.txt                                the 200 class wnids, NOT sorted
    words.txt                                wnid<TAB>name for all of ImageNet (far more than 200 lines)
    train/<wnid>/images/<wnid>_<i>.JPEG      500 per class, some grayscale
    train/<wnid>/<wnid>_boxes.txt
    val/images/val_<i>.JPEG                  10,000, labelled only by val/val_annotations.txt
    val/val_annotations.txt                  file<TAB>wnid<TAB>x0<TAB>y0<TAB>x1<TAB>y1

Class order is the sorted wnid list (label i is ``sorted(wnids)[i]``), recorded in the manifest, so labels
do not depend on the order of wnids.txt. Decoding 110,000 small JPEGs per training run would cost more
than the training step on a GPU, so `prepare` decodes them once into ``<root>/packed/``:
``{train,val}_images.npy`` (uint8, N x 64 x 64 x 3, loaded with ``mmap_mode='r'`` in well under a second),
``{train,val}_labels.npy`` (int64) and ``manifest.json`` (counts per split and per class, classes, source
checksum, a content fingerprint, per-file sha256, format version). The cache is built in a temporary
folder and renamed into place, so a reader never sees half of one; `prepare` reuses a cache that passes
the checks below and rebuilds one that is stale (other source), damaged or of another format version. A
downloaded zip stays in ``<root>`` and its extraction in ``<root>/extracted/``, so a rebuild needs no
network.

What a run records is what it trained on: before a cache is used (`load_packed`) or reused (`prepare`),
`verify_cache` checks that

- every array file has the sha256 its manifest records: all bytes are read, once per file per process
  (a file whose path, inode, size and modification time were verified before is not read again);
- the manifest's fingerprint, the one every run records, is the hash of its classes and those checksums;
- the manifest's counts, number of classes and image shape agree with the arrays;
- every label lies in [0, num_classes), every class has training images, no split is empty, and the
  images per class are the counts the manifest records (`prepare` refuses to pack such a set too).

Any failure is one line naming the file at fault and the command that rebuilds it. Class names, the
source and the repair counts in the manifest are descriptive and not part of the fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from itertools import islice
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image
from rich.console import Console
from rich.progress import Progress

from archbench.data.download import download, extract_zip
from archbench.data.files import (
    accessing,
    allocate,
    describe,
    file_digest,
    progress,
    public_path,
    read_text,
    require_folder,
    staged,
)
from archbench.errors import ArchbenchError

TINY_IMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
TINY_IMAGENET_MD5 = "90528d7ca1a48142e341f4ef8d21d0de"
FORMAT_VERSION = 2  # 2: per-class image counts ("class_counts"), checked on every load
IMAGE_SIZE = 64
PACKED_DIR = "packed"
EXTRACTED_DIR = "extracted"
SYNTHETIC_MARKER = "archbench_synthetic.json"  # written by archbench.data.synthetic beside wnids.txt
IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png"}
SPLITS = ("train", "val")
ARRAYS = tuple(f"{split}_{kind}" for split in SPLITS for kind in ("images", "labels"))
DECODE_CHUNK = 64  # images per thread-pool task: large enough to amortise the task overhead
DECODE_WORKERS = os.cpu_count() or 1  # decoding is CPU-bound: more threads than cores gain nothing
# A file modified this recently could change again within the same timestamp tick unnoticed, so its
# verification is not remembered (the same rule git applies to "racily clean" files).
RECENT_NS = 2_000_000_000


@dataclass(frozen=True)
class PackedData:
    """A prepared dataset: memory-mapped uint8 images (N x 64 x 64 x 3) and int64 labels per split."""

    root: Path
    manifest: dict
    train_images: np.ndarray
    train_labels: np.ndarray
    val_images: np.ndarray
    val_labels: np.ndarray

    @property
    def num_classes(self) -> int:
        return self.manifest["num_classes"]

    @property
    def classes(self) -> list[str]:
        return self.manifest["classes"]

    @property
    def names(self) -> dict[str, str]:
        return self.manifest["names"]

    @property
    def fingerprint(self) -> str:
        return self.manifest["fingerprint"]

    @property
    def synthetic(self) -> bool:
        return self.manifest["synthetic"]


@dataclass
class Layout:
    """What a Tiny-ImageNet folder holds, checked but not yet decoded."""

    folder: Path
    classes: list[str]
    names: dict[str, str]
    train: list[tuple[Path, int]]
    val: list[tuple[Path, int]]
    synthetic_params: dict | None


@dataclass(frozen=True)
class Source:
    kind: str  # "url", "zip" or "folder" (a folder is the one holding wnids.txt)
    location: str


class Decoded(NamedTuple):
    pixels: np.ndarray | None
    converted: bool
    resized: bool
    error: str | None


@dataclass
class SplitReport:
    count: int = 0
    skipped: list[str] = field(default_factory=list)
    resized: list[str] = field(default_factory=list)
    converted: int = 0
    class_counts: list[int] = field(default_factory=list)


class DamagedCache(ArchbenchError):
    """What is wrong with a packed cache, and the file at fault (``outdated``: another format version)."""

    def __init__(self, path: Path, problem: str, outdated: bool = False):
        super().__init__(f"{public_path(path)} {problem}")
        self.path = path
        self.outdated = outdated


# ----------------------------------------------------------------------------------------------------
# prepare


def prepare(
    root: Path | str, source: str | Path | None = None, skip_bad: bool = False, console: Console | None = None
) -> dict:
    """Make ``<root>/packed`` hold Tiny-ImageNet from ``source`` and return its manifest.

    ``source`` is a URL, a local zip or an extracted folder. Without one, a valid cache already in
    ``root`` is reused whatever it was built from, and otherwise the official zip is downloaded. With
    one, the cache is reused only if it was built from the same bytes (md5 of the zip, or a listing
    digest of the folder), and, when it skipped bad images, only if ``skip_bad`` allows skipping. A cache
    that fails `verify_cache` is rebuilt, without a ``source`` from the one its manifest records.
    """
    root = Path(root)
    require_folder(root, "--root")
    with accessing(root):
        return _prepare(root, source, skip_bad, console)


def _prepare(root: Path, source: str | Path | None, skip_bad: bool, console: Console | None) -> dict:
    packed = root / PACKED_DIR
    if source is None:
        manifest = _reusable_cache(packed, None, skip_bad=True, console=console)
        if manifest is not None:
            return manifest
        source = _recorded_source(root, packed) or TINY_IMAGENET_URL
    src = parse_source(source)
    known = _source_checksum(src)
    if known is not None and (manifest := _reusable_cache(packed, known, skip_bad, console)) is not None:
        return manifest
    folder, checksum = _materialise(src, known, root, console)
    if known is None and (manifest := _reusable_cache(packed, checksum, skip_bad, console)) is not None:
        return manifest
    source_info = {"kind": src.kind, "location": _display_location(src, root), "checksum": checksum}
    return pack(read_layout(folder), packed, source_info, skip_bad=skip_bad, console=console)


def _recorded_source(root: Path, packed: Path) -> str | None:
    """The source an unusable cache's manifest names, if it can still be read and is still there."""
    try:
        recorded = json.loads((packed / "manifest.json").read_text(encoding="utf-8"))["source"]
        kind, location = recorded["kind"], recorded["location"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if kind == "url":
        return location
    path = root / location  # relative to root when it was inside it; an absolute location stays as it is
    return str(path) if path.exists() else None


def parse_source(source: str | Path) -> Source:
    text = str(source)
    if text.startswith(("http://", "https://")):
        return Source("url", text)
    path = Path(text).expanduser()
    if path.is_file():
        return Source("zip", str(path))
    if path.is_dir():
        return Source("folder", str(locate_dataset(path)))
    raise ArchbenchError(f"--source {text} is neither an http(s) URL nor an existing zip file or folder")


def locate_dataset(folder: Path) -> Path:
    """The folder holding wnids.txt: ``folder`` itself or its only such subfolder (e.g. tiny-imagenet-200/)."""
    folder = Path(folder)
    if (folder / "wnids.txt").is_file():
        return folder
    candidates = [d for d in sorted(folder.iterdir()) if (d / "wnids.txt").is_file()] if folder.is_dir() else []
    if len(candidates) == 1:
        return candidates[0]
    raise ArchbenchError(f"{folder / 'wnids.txt'} is missing, so {folder} is not a Tiny-ImageNet-200 folder")


def _source_checksum(src: Source) -> str | None:
    """What identifies the source's content without unpacking it; None when only a download can tell."""
    if src.kind == "url":
        return f"md5:{TINY_IMAGENET_MD5}" if src.location == TINY_IMAGENET_URL else None
    if src.kind == "zip":
        return f"md5:{file_digest(Path(src.location), 'md5')}"
    return f"listing-sha256:{folder_listing_digest(Path(src.location))}"


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


def _materialise(src: Source, checksum: str | None, root: Path, console: Console | None) -> tuple[Path, str]:
    """Download and/or extract as needed; return the dataset folder and the source checksum."""
    if src.kind == "folder":
        return Path(src.location), checksum
    if src.kind == "url":
        name = Path(src.location.split("?")[0]).name or "tiny-imagenet-200.zip"
        expected = TINY_IMAGENET_MD5 if src.location == TINY_IMAGENET_URL else None
        zip_path = download(src.location, root / name, md5=expected, console=console)
        checksum = f"md5:{expected or file_digest(zip_path, 'md5')}"
    else:
        zip_path = Path(src.location)
    _say(console, f"extracting {zip_path} into {root / EXTRACTED_DIR}")
    return locate_dataset(extract_zip(zip_path, root / EXTRACTED_DIR)), checksum


def _display_location(src: Source, root: Path) -> str:
    """URLs as given; paths relative to ``root`` when inside it, so a moved data folder stays valid."""
    if src.kind == "url":
        return src.location
    path = Path(src.location).resolve()
    try:
        return path.relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)


def _reusable_cache(packed: Path, checksum: str | None, skip_bad: bool, console: Console | None) -> dict | None:
    """The cache's manifest if it is intact, built from ``checksum`` (any source if None) and allowed."""
    if not (packed / "manifest.json").exists():
        return None
    manifest, problem = check_cache(packed)
    if manifest is None:
        _say(console, f"the packed cache in {packed} cannot be reused ({problem}); rebuilding it")
        return None
    if checksum is not None and manifest["source"]["checksum"] != checksum:
        _say(console, f"the packed cache in {packed} was built from another source; rebuilding it")
        return None
    if manifest["skipped"] and not skip_bad:
        return None  # rebuilding stops at the first bad file and names it
    _say(console, f"reusing the packed cache in {packed}")
    return manifest


# ----------------------------------------------------------------------------------------------------
# reading the layout


def read_layout(folder: Path) -> Layout:
    """List and label every train and val image; raise a one-line error for each kind of bad layout."""
    folder = Path(folder)
    wnids_file = folder / "wnids.txt"
    if not wnids_file.is_file():
        raise ArchbenchError(f"{wnids_file} is missing, so {folder} is not a Tiny-ImageNet-200 folder")
    wnids = [line.strip() for line in read_text(wnids_file).splitlines() if line.strip()]
    if not wnids:
        raise ArchbenchError(f"{wnids_file} lists no classes")
    if len(set(wnids)) != len(wnids):
        raise ArchbenchError(f"{wnids_file} lists some wnids more than once")
    classes = sorted(wnids)
    label_of = {wnid: i for i, wnid in enumerate(classes)}
    words = _read_words(folder / "words.txt")
    marker = folder / SYNTHETIC_MARKER
    return Layout(
        folder=folder,
        classes=classes,
        names={wnid: words.get(wnid, wnid) for wnid in classes},
        train=[(path, label_of[wnid]) for wnid in classes for path in _class_images(folder, wnid)],
        val=_val_images(folder, label_of),
        synthetic_params=_read_marker(marker) if marker.is_file() else None,
    )


def _read_marker(path: Path) -> dict:
    try:
        return json.loads(read_text(path))
    except ValueError as e:
        raise ArchbenchError(f"{path} is not valid JSON ({e})") from None


def _read_words(path: Path) -> dict[str, str]:
    """wnid -> name from words.txt; a missing file leaves the wnids as names (the report still works)."""
    if not path.is_file():
        return {}
    pairs = (line.split("\t", 1) for line in read_text(path).splitlines())
    return {pair[0].strip(): pair[1].strip() for pair in pairs if len(pair) == 2}


def _class_images(folder: Path, wnid: str) -> list[Path]:
    images_dir = folder / "train" / wnid / "images"
    files = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if images_dir.is_dir() else []
    if not files:
        raise ArchbenchError(f"the class folder {images_dir} holds no images, but every class in wnids.txt needs some")
    return files


def _val_images(folder: Path, label_of: dict[str, int]) -> list[tuple[Path, int]]:
    annotations = folder / "val" / "val_annotations.txt"
    if not annotations.is_file():
        raise ArchbenchError(f"{annotations} is missing, so the validation images have no labels")
    items = []
    for number, line in enumerate(read_text(annotations).splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2:
            raise ArchbenchError(f"line {number} of {annotations} is not 'file<TAB>wnid<TAB>box'")
        name, wnid = fields[0].strip(), fields[1].strip()
        if wnid not in label_of:
            raise ArchbenchError(f"line {number} of {annotations} labels {name} with {wnid}, which is not in wnids.txt")
        path = folder / "val" / "images" / name
        if not path.is_file():
            raise ArchbenchError(f"{path} is listed in {annotations} but does not exist")
        items.append((path, label_of[wnid]))
    if not items:
        raise ArchbenchError(f"{annotations} lists no images")
    return items


# ----------------------------------------------------------------------------------------------------
# decoding and packing


def decode_image(path: Path) -> Decoded:
    """RGB uint8 64 x 64 x 3 pixels; grayscale/CMYK converted, other sizes resized (both reported)."""
    try:
        with Image.open(path) as image:
            image.load()  # decode now, so a truncated file fails here rather than later
            converted = image.mode != "RGB"
            rgb = image.convert("RGB") if converted else image
            resized = rgb.size != (IMAGE_SIZE, IMAGE_SIZE)
            if resized:
                rgb = rgb.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR)
            return Decoded(np.asarray(rgb, dtype=np.uint8), converted, resized, None)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        return Decoded(None, False, False, str(e) or type(e).__name__)


def _decode_chunk(paths: list[Path]) -> list[Decoded]:
    return [decode_image(path) for path in paths]


def _decode_in_order(pool: ThreadPoolExecutor, paths: list[Path], on_chunk) -> Iterator[Decoded]:
    """Decode on the pool (PIL releases the GIL), in order, with a bounded number of chunks in flight.

    The bound keeps memory flat and lets a failure cancel the little work still queued.
    """
    chunks = iter([paths[i : i + DECODE_CHUNK] for i in range(0, len(paths), DECODE_CHUNK)])
    pending = deque(pool.submit(_decode_chunk, chunk) for chunk in islice(chunks, 4 * DECODE_WORKERS))
    while pending:
        results = pending.popleft().result()
        if (chunk := next(chunks, None)) is not None:
            pending.append(pool.submit(_decode_chunk, chunk))
        on_chunk(len(results))
        yield from results


def pack(
    layout: Layout, packed: Path, source_info: dict, skip_bad: bool = False, console: Console | None = None
) -> dict:
    """Decode every image of ``layout`` into ``packed`` (built beside it, renamed in when complete).

    The finished cache passes the same checks as a loaded one (`verify_cache`, short of re-hashing the
    files it has just hashed); with ``skip_bad``, a set left with an empty split or a class without
    training images is refused, naming it.
    """
    _say(console, f"packing {len(layout.train):,} train and {len(layout.val):,} val images from {layout.folder}")
    pool = ThreadPoolExecutor(max_workers=DECODE_WORKERS)
    try:
        with staged(packed, "building") as staging:
            with progress(console) as bars:
                reports = {split: _pack_split(layout, split, staging, pool, skip_bad, bars) for split in SPLITS}
            _refuse_untrainable(layout, reports)
            manifest = _manifest(layout, staging, source_info, reports)
            (staging / "manifest.json").write_text(json.dumps(manifest, indent=1), encoding="utf-8")
            verify_cache(staging, hash_files=False)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    _report_repairs(manifest, console)
    return manifest


def _pack_split(layout: Layout, split: str, out: Path, pool, skip_bad: bool, progress: Progress) -> SplitReport:
    """Write ``<split>_images.npy`` and ``<split>_labels.npy``; bad images raise or, with skip_bad, are dropped."""
    items = getattr(layout, split)
    images_path = out / f"{split}_images.npy"
    shape = (len(items), IMAGE_SIZE, IMAGE_SIZE, 3)
    images = np.lib.format.open_memmap(images_path, mode="w+", dtype=np.uint8, shape=shape)
    allocate(images_path)
    labels = np.empty(len(items), dtype=np.int64)
    report = SplitReport()
    task = progress.add_task(f"decoding {split}", total=len(items))
    decoded_stream = _decode_in_order(pool, [path for path, _ in items], lambda n: progress.advance(task, n))
    for (path, label), decoded in zip(items, decoded_stream):
        relative = path.relative_to(layout.folder).as_posix()
        if decoded.error is not None:
            if not skip_bad:
                raise ArchbenchError(
                    f"{path} is not a readable image ({decoded.error}): "
                    "replace it, or rerun with --skip-bad to skip such files"
                )
            report.skipped.append(relative)
            continue
        images[report.count] = decoded.pixels
        labels[report.count] = label
        report.count += 1
        report.converted += decoded.converted
        if decoded.resized:
            report.resized.append(relative)
    images.flush()
    del images
    if report.count < len(items):
        _shrink_npy(images_path, report.count)
    np.save(out / f"{split}_labels.npy", labels[: report.count])
    report.class_counts = np.bincount(labels[: report.count], minlength=len(layout.classes)).tolist()
    return report


def _refuse_untrainable(layout: Layout, reports: dict[str, SplitReport]) -> None:
    """An empty split, or a class without training images, is an error naming it (only --skip-bad can
    make one: without it the first unreadable image stops `prepare`)."""
    for split in SPLITS:
        if reports[split].count == 0:
            skipped = reports[split].skipped
            raise ArchbenchError(
                f"--skip-bad skipped all {len(skipped)} {split} images of {layout.folder} (first: {skipped[0]}), "
                f"leaving the {split} split empty: replace the unreadable images and rerun"
            )
    for label, count in enumerate(reports["train"].class_counts):
        if count == 0:
            paths = [path for path, item_label in layout.train if item_label == label]
            raise ArchbenchError(
                f"--skip-bad skipped all {len(paths)} training images of class {layout.classes[label]} "
                f"(first: {paths[0].relative_to(layout.folder).as_posix()}), so the set could not learn it: "
                "replace the unreadable images and rerun"
            )


def _shrink_npy(path: Path, rows: int) -> None:
    """Keep the first ``rows`` rows of an .npy file (only needed when --skip-bad dropped images)."""
    full = np.load(path, mmap_mode="r")
    shorter = path.with_name(path.stem + ".shrinking.npy")
    out = np.lib.format.open_memmap(shorter, mode="w+", dtype=full.dtype, shape=(rows, *full.shape[1:]))
    allocate(shorter)
    out[:] = full[:rows]
    out.flush()
    del out, full
    os.replace(shorter, path)


def _manifest(layout: Layout, packed: Path, source_info: dict, reports: dict[str, SplitReport]) -> dict:
    arrays = {name: _array_record(packed / f"{name}.npy") for name in ARRAYS}
    skipped_files = [name for split in SPLITS for name in reports[split].skipped]
    resized_files = [name for split in SPLITS for name in reports[split].resized]
    return {
        "format_version": FORMAT_VERSION,
        "num_classes": len(layout.classes),
        "classes": layout.classes,
        "class_order": "sorted wnids",
        "names": layout.names,
        "image_shape": [IMAGE_SIZE, IMAGE_SIZE, 3],
        "splits": {split: {"count": reports[split].count} for split in SPLITS},
        "class_counts": {split: reports[split].class_counts for split in SPLITS},
        "arrays": arrays,
        "source": source_info,
        "fingerprint": _fingerprint(layout.classes, arrays),
        "skipped": len(skipped_files),
        "skipped_files": skipped_files,
        "resized": len(resized_files),
        "resized_files": resized_files,
        "converted_to_rgb": sum(reports[split].converted for split in SPLITS),
        "synthetic": layout.synthetic_params is not None,
        "synthetic_params": layout.synthetic_params,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _array_record(path: Path) -> dict:
    array = np.load(path, mmap_mode="r")
    return {
        "file": path.name,
        "shape": list(array.shape),
        "dtype": str(array.dtype),
        "bytes": path.stat().st_size,
        "sha256": file_digest(path, "sha256"),
    }


def _fingerprint(classes: list[str], arrays: dict) -> str:
    """Content fingerprint: the class order and the packed bytes, independent of where they came from."""
    content = {"classes": classes, "arrays": {name: record["sha256"] for name, record in sorted(arrays.items())}}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def _report_repairs(manifest: dict, console: Console | None) -> None:
    if manifest["converted_to_rgb"]:
        _say(console, f"converted {manifest['converted_to_rgb']} grayscale or CMYK images to RGB")
    if manifest["resized"]:
        first = manifest["resized_files"][0]
        _say(console, f"resized {manifest['resized']} images that were not 64x64 (first: {first})")
    if manifest["skipped"]:
        first = manifest["skipped_files"][0]
        _say(console, f"[yellow]skipped {manifest['skipped']} unreadable images[/] (first: {first})")


# ----------------------------------------------------------------------------------------------------
# loading


def verify_cache(packed: Path, hash_files: bool = True) -> tuple[dict, dict[str, np.ndarray]]:
    """The manifest and memory-mapped arrays of the cache in ``packed``, after every check in the module
    docstring; the first check that fails raises `DamagedCache` naming the file at fault."""
    manifest = _read_manifest(packed)
    arrays = {name: _checked_array(packed, manifest["arrays"][name], hash_files) for name in ARRAYS}
    for split in SPLITS:
        _check_split(packed, manifest, split, arrays[f"{split}_images"], arrays[f"{split}_labels"])
    return manifest, arrays


def check_cache(packed: Path) -> tuple[dict | None, str | None]:
    """(manifest, None) for a cache that passes `verify_cache`, else (None, what is wrong)."""
    try:
        return verify_cache(packed)[0], None
    except DamagedCache as e:
        return None, e.message
    except OSError as e:
        return None, f"cannot read {e.filename or packed} ({describe(e)})"


def _read_manifest(packed: Path) -> dict:
    """manifest.json, checked against itself: structure, fingerprint, classes and counts."""
    path = packed / "manifest.json"
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DamagedCache(path, "is missing") from None
    except ValueError as e:  # includes bytes that are not UTF-8
        raise DamagedCache(path, f"is not valid JSON ({e})") from None
    if not isinstance(manifest, dict) or "format_version" not in manifest:
        raise DamagedCache(path, "is not an archbench manifest")
    if manifest["format_version"] != FORMAT_VERSION:
        problem = f"is format {manifest['format_version']}, and this archbench reads format {FORMAT_VERSION}"
        raise DamagedCache(path, problem, outdated=True)
    try:
        problem = _manifest_problem(manifest)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        problem = f"has unexpected content ({type(e).__name__}: {e})"
    if problem is not None:
        raise DamagedCache(path, problem)
    return manifest


def _manifest_problem(manifest: dict) -> str | None:
    classes, arrays = manifest["classes"], manifest["arrays"]
    if sorted(arrays) != sorted(ARRAYS) or any(arrays[name]["file"] != f"{name}.npy" for name in ARRAYS):
        return f"lists the arrays {sorted(arrays)} instead of {list(ARRAYS)}"
    recomputed = _fingerprint(classes, arrays)
    if manifest["fingerprint"] != recomputed:
        return f"records the fingerprint {manifest['fingerprint']}, but its classes and checksums give {recomputed}"
    if not all(isinstance(c, str) for c in classes) or classes != sorted(set(classes)):
        return "lists classes that are not distinct wnids in sorted order"
    if manifest["num_classes"] != len(classes):
        return f"records {manifest['num_classes']} classes but lists {len(classes)}"
    if manifest["image_shape"] != [IMAGE_SIZE, IMAGE_SIZE, 3]:
        return f"records images of shape {manifest['image_shape']}, not {[IMAGE_SIZE, IMAGE_SIZE, 3]}"
    for split in SPLITS:
        counts, total = manifest["class_counts"][split], manifest["splits"][split]["count"]
        if len(counts) != len(classes) or sum(counts) != total:
            return f"records {total} {split} images but per-class counts {counts} for {len(classes)} classes"
    if bool(manifest["synthetic"]) != (manifest["synthetic_params"] is not None):
        return f"says synthetic is {manifest['synthetic']}, but its synthetic_params disagree"
    return None


def _checked_array(packed: Path, record: dict, hash_files: bool) -> np.ndarray:
    """One array file, memory-mapped, after its size, header and (with ``hash_files``) sha256 match ``record``."""
    path = packed / record["file"]
    if not path.is_file():
        raise DamagedCache(path, "is missing")
    size = path.stat().st_size
    if size != record["bytes"]:
        raise DamagedCache(path, f"has {size:,} bytes, but manifest.json records {record['bytes']:,}")
    try:
        array = np.load(path, mmap_mode="r")
    except ValueError as e:
        raise DamagedCache(path, f"is not a readable .npy array ({e})") from None
    if list(array.shape) != record["shape"] or str(array.dtype) != record["dtype"]:
        recorded = f"{record['dtype']} {record['shape']}"
        raise DamagedCache(path, f"holds {array.dtype} {list(array.shape)}, but manifest.json records {recorded}")
    if hash_files and not _has_sha256(path, record["sha256"]):
        raise DamagedCache(path, "does not match the sha256 recorded in manifest.json")
    return array


_VERIFIED: set[tuple] = set()  # (path, device, inode, size, mtime_ns, sha256) of files verified in this process


def _has_sha256(path: Path, sha256: str) -> bool:
    """Whether the file's bytes hash to ``sha256``; remembered for the process while the file is unchanged."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, sha256)
    if key in _VERIFIED:
        return True
    if file_digest(path, "sha256") != sha256:
        return False
    if time.time_ns() - stat.st_mtime_ns > RECENT_NS:
        _VERIFIED.add(key)
    return True


def _check_split(packed: Path, manifest: dict, split: str, images: np.ndarray, labels: np.ndarray) -> None:
    """Shapes and counts against the manifest; labels in range; no empty split; every class trained."""
    classes, count = manifest["classes"], manifest["splits"][split]["count"]
    images_path, labels_path = packed / f"{split}_images.npy", packed / f"{split}_labels.npy"
    if images.dtype != np.uint8 or images.ndim != 4 or list(images.shape[1:]) != manifest["image_shape"]:
        expected = f"uint8 N x {IMAGE_SIZE} x {IMAGE_SIZE} x 3"
        raise DamagedCache(images_path, f"holds {images.dtype} {list(images.shape)}, not {expected}")
    if labels.dtype != np.int64 or labels.ndim != 1:
        raise DamagedCache(labels_path, f"holds {labels.dtype} {list(labels.shape)}, not int64 N")
    if len(images) != count or len(labels) != count:
        raise DamagedCache(
            packed / "manifest.json",
            f"records {count:,} {split} images, but {images_path.name} holds {len(images):,} "
            f"and {labels_path.name} {len(labels):,}",
        )
    if count == 0:
        raise DamagedCache(labels_path, f"holds no labels: the {split} split is empty")
    labels = np.asarray(labels)
    outside = np.flatnonzero((labels < 0) | (labels >= len(classes)))
    if len(outside):
        row = int(outside[0])
        n = len(classes)
        raise DamagedCache(labels_path, f"holds the label {labels[row]} at row {row}, outside the {n} classes [0, {n})")
    counts = np.bincount(labels, minlength=len(classes))
    if split == "train" and (empty := np.flatnonzero(counts == 0)).size:
        raise DamagedCache(labels_path, f"has no image of class {classes[empty[0]]}, so a run could not learn it")
    recorded = manifest["class_counts"][split]
    if counts.tolist() != recorded:
        c = next(c for c in range(len(classes)) if counts[c] != recorded[c])
        raise DamagedCache(
            packed / "manifest.json",
            f"records {recorded[c]:,} {split} images of class {classes[c]}, but {labels_path.name} holds {counts[c]:,}",
        )


def packed_dir(root: Path) -> Path:
    """The folder holding manifest.json: ``root/packed`` for a prepared root, or ``root`` itself."""
    root = Path(root)
    return root if (root / "manifest.json").exists() else root / PACKED_DIR


def load_packed(root: Path | str) -> PackedData:
    """Memory-map a prepared dataset (``archbench data prepare --root ROOT``) after `verify_cache`.

    Verifying reads every byte once per process (about a second for the real train split); the images
    are then memory-mapped, not read.
    """
    root = Path(root)
    with accessing(root):
        if root.exists() and not root.is_dir():
            raise ArchbenchError(f"{root} is a file, not a folder of prepared data (see `archbench data prepare`)")
        packed = packed_dir(root)
        if not (packed / "manifest.json").exists():
            raise ArchbenchError(
                f"no prepared data in {root}: run `archbench data prepare --root {root}` to download and pack "
                "Tiny-ImageNet-200 there, or pass --data synthetic to use the small synthetic set"
            )
        try:
            manifest, arrays = verify_cache(packed)
        except DamagedCache as e:
            rebuild = f"rebuild it with `archbench data prepare --root {_prepared_root(root, packed)}`"
            if e.outdated:
                raise ArchbenchError(
                    f"the packed data in {packed} was made by another archbench version ({e.message}): {rebuild}"
                ) from None
            raise ArchbenchError(f"damaged packed data: {e.message}; {rebuild}") from None
    return PackedData(root=root, manifest=manifest, **arrays)


def _prepared_root(root: Path, packed: Path) -> Path:
    """The --root that `prepare` rebuilds ``packed`` under."""
    return packed.parent if packed == root and packed.name == PACKED_DIR else root


# ----------------------------------------------------------------------------------------------------


def _say(console: Console | None, message: str) -> None:
    if console is not None:
        console.print(message, highlight=False, soft_wrap=True)
