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
``{train,val}_labels.npy`` (int64) and ``manifest.json`` (counts, classes, source checksum, a content
fingerprint, per-file sha256, format version). The cache is built in a temporary folder and renamed into
place, so a reader never sees half of one; `prepare` reuses a cache whose files match their recorded
sha256 and rebuilds one that is stale (other source) or damaged. A downloaded zip stays in ``<root>``
and its extraction in ``<root>/extracted/``, so a rebuild needs no network.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from itertools import islice
from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np
from PIL import Image
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from archbench.data.download import download, extract_zip, file_md5, replace_dir
from archbench.errors import ArchbenchError

TINY_IMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
TINY_IMAGENET_MD5 = "90528d7ca1a48142e341f4ef8d21d0de"
FORMAT_VERSION = 1
IMAGE_SIZE = 64
PACKED_DIR = "packed"
EXTRACTED_DIR = "extracted"
SYNTHETIC_MARKER = "archbench_synthetic.json"  # written by archbench.data.synthetic beside wnids.txt
IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png"}
SPLITS = ("train", "val")
DECODE_CHUNK = 64  # images per thread-pool task: large enough to amortise the task overhead
DECODE_WORKERS = os.cpu_count() or 1  # decoding is CPU-bound: more threads than cores gain nothing


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


# ----------------------------------------------------------------------------------------------------
# prepare


def prepare(root: Path | str, source: str | Path | None = None, skip_bad: bool = False, console: Console | None = None) -> dict:
    """Make ``<root>/packed`` hold Tiny-ImageNet from ``source`` and return its manifest.

    ``source`` is a URL, a local zip or an extracted folder. Without one, a valid cache already in
    ``root`` is reused whatever it was built from, and otherwise the official zip is downloaded. With
    one, the cache is reused only if it was built from the same bytes (md5 of the zip, or a listing
    digest of the folder), and, when it skipped bad images, only if ``skip_bad`` allows skipping.
    """
    root = Path(root)
    packed = root / PACKED_DIR
    if source is None:
        manifest = _reusable_cache(packed, None, skip_bad=True, console=console)
        if manifest is not None:
            return manifest
        source = TINY_IMAGENET_URL
    src = parse_source(source)
    known = _source_checksum(src)
    if known is not None and (manifest := _reusable_cache(packed, known, skip_bad, console)) is not None:
        return manifest
    folder, checksum = _materialise(src, known, root, console)
    if known is None and (manifest := _reusable_cache(packed, checksum, skip_bad, console)) is not None:
        return manifest
    source_info = {"kind": src.kind, "location": _display_location(src, root), "checksum": checksum}
    return pack(read_layout(folder), packed, source_info, skip_bad=skip_bad, console=console)


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
        return f"md5:{file_md5(Path(src.location))}"
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
        checksum = f"md5:{expected or file_md5(zip_path)}"
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
    manifest, problem = check_cache(packed, verify_content=True)
    if manifest is None:
        _say(console, f"the packed cache in {packed} is damaged ({problem}); rebuilding it")
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
    wnids = [line.strip() for line in wnids_file.read_text().splitlines() if line.strip()]
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
        synthetic_params=json.loads(marker.read_text()) if marker.is_file() else None,
    )


def _read_words(path: Path) -> dict[str, str]:
    """wnid -> name from words.txt; a missing file leaves the wnids as names (the report still works)."""
    if not path.is_file():
        return {}
    pairs = (line.split("\t", 1) for line in path.read_text(encoding="utf-8").splitlines())
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
    for number, line in enumerate(annotations.read_text().splitlines(), start=1):
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


def pack(layout: Layout, packed: Path, source_info: dict, skip_bad: bool = False, console: Console | None = None) -> dict:
    """Decode every image of ``layout`` into ``packed`` (built beside it, renamed in when complete)."""
    _say(console, f"packing {len(layout.train):,} train and {len(layout.val):,} val images from {layout.folder}")
    staging = packed.with_name(f".{packed.name}.building-{uuid.uuid4().hex[:8]}")
    staging.mkdir(parents=True)
    pool = ThreadPoolExecutor(max_workers=DECODE_WORKERS)
    try:
        with _progress(console) as progress:
            reports = {
                split: _pack_split(layout, split, staging, pool, skip_bad, progress) for split in SPLITS
            }
        manifest = _manifest(layout, staging, source_info, reports)
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=1))
        replace_dir(staging, packed)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    _report_repairs(manifest, console)
    return manifest


def _pack_split(layout: Layout, split: str, out: Path, pool, skip_bad: bool, progress: Progress) -> SplitReport:
    """Write ``<split>_images.npy`` and ``<split>_labels.npy``; bad images raise or, with skip_bad, are dropped."""
    items = getattr(layout, split)
    images_path = out / f"{split}_images.npy"
    images = np.lib.format.open_memmap(images_path, mode="w+", dtype=np.uint8, shape=(len(items), IMAGE_SIZE, IMAGE_SIZE, 3))
    labels = np.empty(len(items), dtype=np.int64)
    report = SplitReport()
    task = progress.add_task(f"decoding {split}", total=len(items))
    decoded_stream = _decode_in_order(pool, [path for path, _ in items], lambda n: progress.advance(task, n))
    for (path, label), decoded in zip(items, decoded_stream):
        relative = path.relative_to(layout.folder).as_posix()
        if decoded.error is not None:
            if not skip_bad:
                raise ArchbenchError(
                    f"{path} is not a readable image ({decoded.error}): replace it, or rerun with --skip-bad to skip such files"
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
    return report


def _shrink_npy(path: Path, rows: int) -> None:
    """Keep the first ``rows`` rows of an .npy file (only needed when --skip-bad dropped images)."""
    full = np.load(path, mmap_mode="r")
    shorter = path.with_name(path.stem + ".shrinking.npy")
    out = np.lib.format.open_memmap(shorter, mode="w+", dtype=full.dtype, shape=(rows, *full.shape[1:]))
    out[:] = full[:rows]
    out.flush()
    del out, full
    os.replace(shorter, path)


def _manifest(layout: Layout, packed: Path, source_info: dict, reports: dict[str, SplitReport]) -> dict:
    arrays = {f"{split}_{kind}": _array_record(packed / f"{split}_{kind}.npy") for split in SPLITS for kind in ("images", "labels")}
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
        "sha256": _file_sha256(path),
    }


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def _fingerprint(classes: list[str], arrays: dict) -> str:
    """Content fingerprint: the class order and the packed bytes, independent of where they came from."""
    content = {"classes": classes, "arrays": {name: record["sha256"] for name, record in sorted(arrays.items())}}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def _report_repairs(manifest: dict, console: Console | None) -> None:
    if manifest["converted_to_rgb"]:
        _say(console, f"converted {manifest['converted_to_rgb']} grayscale or CMYK images to RGB")
    if manifest["resized"]:
        _say(console, f"resized {manifest['resized']} images that were not 64x64 (first: {manifest['resized_files'][0]})")
    if manifest["skipped"]:
        _say(console, f"[yellow]skipped {manifest['skipped']} unreadable images[/] (first: {manifest['skipped_files'][0]})")


# ----------------------------------------------------------------------------------------------------
# loading


def check_cache(packed: Path, verify_content: bool = False) -> tuple[dict | None, str | None]:
    """(manifest, None) for an intact cache, else (None, what is wrong).

    The cheap check (manifest, format version, file sizes, array shapes) catches truncation and runs on
    every load; ``verify_content`` also re-hashes every file, which `prepare` does before reusing.
    """
    try:
        manifest = json.loads((packed / "manifest.json").read_text())
    except (OSError, ValueError) as e:
        return None, f"manifest.json unreadable: {e}"
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
        return None, "manifest.json has another format version"
    try:
        for name, record in manifest["arrays"].items():
            path = packed / record["file"]
            if not path.is_file() or path.stat().st_size != record["bytes"]:
                return None, f"{record['file']} is missing or has the wrong size"
            array = np.load(path, mmap_mode="r")
            if list(array.shape) != record["shape"] or str(array.dtype) != record["dtype"]:
                return None, f"{record['file']} has the wrong shape or type"
            if verify_content and _file_sha256(path) != record["sha256"]:
                return None, f"{record['file']} does not match its checksum"
    except (KeyError, TypeError, ValueError, OSError) as e:
        return None, f"unexpected content ({e})"
    return manifest, None


def packed_dir(root: Path) -> Path:
    """The folder holding manifest.json: ``root/packed`` for a prepared root, or ``root`` itself."""
    root = Path(root)
    return root if (root / "manifest.json").exists() else root / PACKED_DIR


def load_packed(root: Path | str) -> PackedData:
    """Memory-map a prepared dataset (``archbench data prepare --root ROOT``) without reading it."""
    root = Path(root)
    packed = packed_dir(root)
    if not (packed / "manifest.json").exists():
        raise ArchbenchError(
            f"no prepared data in {root}: run `archbench data prepare --root {root}` to download and pack "
            "Tiny-ImageNet-200 there, or pass --data synthetic to use the small synthetic set"
        )
    manifest, problem = check_cache(packed)
    if manifest is None:
        raise ArchbenchError(
            f"the packed data in {packed} is damaged ({problem}): rerun `archbench data prepare --root {root}` to rebuild it"
        )
    arrays = {name: np.load(packed / record["file"], mmap_mode="r") for name, record in manifest["arrays"].items()}
    return PackedData(root=root, manifest=manifest, **arrays)


# ----------------------------------------------------------------------------------------------------


def _say(console: Console | None, message: str) -> None:
    if console is not None:
        console.print(message, highlight=False, soft_wrap=True)


def _progress(console: Console | None) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=console is None,
    )
