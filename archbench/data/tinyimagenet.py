"""Tiny-ImageNet-200: read the distributed layout, decode it in parallel, pack it for fast loading.

Decoding 110,000 small JPEGs per run would cost more than a GPU's training step, so `prepare` decodes
them once, straight into the memory-mapped arrays of the packed form every source shares
(`archbench.data.packed`). docs/data.md#tiny-imagenet-200 gives the layout, the checks on it, the class
order and which sources are recorded as verified.
"""

from __future__ import annotations

import json
import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image
from rich.console import Console
from rich.progress import Progress

from archbench.data.download import download, extract_zip, is_safe_member
from archbench.data.files import (
    accessing,
    allocate,
    file_digest,
    folder_listing_digest,
    progress,
    read_text,
    reason,
    require_folder,
    staged,
)
from archbench.data.imagefolder import DECODE_WORKERS, to_rgb, unreadable
from archbench.data.packed import (  # noqa: F401 (ARRAYS, check_cache, load_packed: this module's API too)
    ARRAYS,
    PACKED_DIR,
    SPLITS,
    check_cache,
    load_packed,
    recorded_manifest,
    reusable_cache,
    say,
    say_repairs,
    unverified,
    write_manifest,
)
from archbench.data.sources import SOURCES
from archbench.errors import ArchbenchError

TINY_IMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
TINY_IMAGENET_MD5 = "90528d7ca1a48142e341f4ef8d21d0de"
OFFICIAL_CHECKSUM = f"md5:{TINY_IMAGENET_MD5}"
DATASET = "tiny-imagenet"
AUGMENTATION = SOURCES[DATASET].augmentation  # upscale to S*256/224, random S crop, flip
IMAGE_SIZE = 64
EXTRACTED_DIR = "extracted"
SYNTHETIC_MARKER = "archbench_synthetic.json"  # written by archbench.data.synthetic beside wnids.txt
IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png"}
DECODE_CHUNK = 64  # images per thread-pool task: large enough to amortise the task overhead


@dataclass
class Layout:
    """What a Tiny-ImageNet folder holds, checked but not yet decoded."""

    folder: Path
    classes: list[str]
    names: dict[str, str]
    train: list[tuple[Path, int]]
    test: list[tuple[Path, int]]  # the val/ folder's images (the official test/ folder has no labels)
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


# ----------------------------------------------------------------------------------------------------
# prepare


def prepare(
    root: Path | str, source: str | Path | None = None, skip_bad: bool = False, console: Console | None = None
) -> dict:
    """Make ``<root>/packed`` hold Tiny-ImageNet from ``source`` (a URL, a zip or an extracted folder; None:
    an intact cache, else the recorded source, else the official zip) and return its manifest."""
    root = Path(root)
    require_folder(root, "--root")
    packed = root / PACKED_DIR
    with accessing(root):
        if source is None:
            if (manifest := reusable_cache(packed, None, skip_bad=True, console=console)) is not None:
                return manifest
            source = _recorded_source(root, packed) or TINY_IMAGENET_URL
        src = parse_source(source)
        known = _source_checksum(src)
        if src.kind == "zip":
            _note_unverified(src, known, console)
        if known is not None and (manifest := reusable_cache(packed, known, skip_bad, console)) is not None:
            return manifest
        folder, checksum = _materialise(src, known, root, console)
        if src.kind == "url":
            _note_unverified(src, checksum, console)
        if known is None and (manifest := reusable_cache(packed, checksum, skip_bad, console)) is not None:
            return manifest
        verified = checksum == OFFICIAL_CHECKSUM
        info = {"kind": src.kind, "location": _display_location(src, root), "checksum": checksum, "verified": verified}
        return pack(read_layout(folder), packed, info, skip_bad=skip_bad, console=console)


def _note_unverified(src: Source, checksum: str, console: Console | None) -> None:
    """One line when a zip or URL is not the official archive."""
    if checksum != OFFICIAL_CHECKSUM:
        say(
            console, unverified(src.location, f"has {checksum}, not the official Tiny-ImageNet-200 {OFFICIAL_CHECKSUM}")
        )


def _recorded_source(root: Path, packed: Path) -> str | None:
    """The source an unusable cache's manifest names, if it can still be read and is still there."""
    try:
        recorded = recorded_manifest(packed)["source"]
        kind, location = recorded["kind"], recorded["location"]
    except (KeyError, TypeError):
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
        return OFFICIAL_CHECKSUM if src.location == TINY_IMAGENET_URL else None
    if src.kind == "zip":
        return f"md5:{file_digest(Path(src.location), 'md5')}"
    return f"listing-sha256:{folder_listing_digest(Path(src.location))}"


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
    say(console, f"extracting {zip_path} into {root / EXTRACTED_DIR}")
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


# ----------------------------------------------------------------------------------------------------
# reading the layout


def read_layout(folder: Path) -> Layout:
    """List and label every train and val image; raise a one-line error for each kind of bad layout."""
    folder = Path(folder)
    wnids_file = folder / "wnids.txt"  # there: the folder is what `locate_dataset` found
    wnids = [line.strip() for line in read_text(wnids_file).splitlines() if line.strip()]
    if not wnids:
        raise ArchbenchError(f"{wnids_file} lists no classes")
    if len(set(wnids)) != len(wnids):
        raise ArchbenchError(f"{wnids_file} lists some wnids more than once")
    classes = sorted(wnids)
    label_of = {wnid: i for i, wnid in enumerate(classes)}
    _refuse_other_class_folders(folder, classes)
    words = _read_words(folder / "words.txt")
    marker = folder / SYNTHETIC_MARKER
    return Layout(
        folder=folder,
        classes=classes,
        names={wnid: words.get(wnid, wnid) for wnid in classes},
        train=[(path, label_of[wnid]) for wnid in classes for path in _class_images(folder, wnid)],
        test=_val_images(folder, label_of),
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


def _refuse_other_class_folders(folder: Path, wnids: list[str]) -> None:
    """The class folders of train/ must be the wnids: one more or one fewer is named, never dropped."""
    train = folder / "train"
    present = {p.name for p in train.iterdir() if p.is_dir()} if train.is_dir() else set()
    if extra := sorted(present - set(wnids)):
        raise ArchbenchError(
            f"{train / extra[0]} is a class folder that {folder / 'wnids.txt'} does not list: "
            "add its wnid there, or move the folder out"
        )
    if missing := sorted(set(wnids) - present):
        raise ArchbenchError(f"{folder / 'wnids.txt'} lists {missing[0]}, but {train / missing[0]} is missing")


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
    images = folder / "val" / "images"
    items, line_of = [], {}
    for number, line in enumerate(read_text(annotations).splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2:
            raise ArchbenchError(f"line {number} of {annotations} is not 'file<TAB>wnid<TAB>box'")
        name, wnid = fields[0].strip(), fields[1].strip()
        if wnid not in label_of:
            raise ArchbenchError(f"line {number} of {annotations} labels {name} with {wnid}, which is not in wnids.txt")
        path = images / name
        if not is_safe_member(name) or not path.resolve().is_relative_to(images.resolve()):
            raise ArchbenchError(f"line {number} of {annotations} names {name!r}, which is not a file in {images}")
        if not path.is_file():
            raise ArchbenchError(f"{path} is listed in {annotations} but does not exist")
        if (first := line_of.setdefault(path.resolve(), number)) != number:
            raise ArchbenchError(f"line {number} of {annotations} lists {name} again (first on line {first})")
        items.append((path, label_of[wnid]))
    if not items:
        raise ArchbenchError(f"{annotations} lists no images")
    return items


# ----------------------------------------------------------------------------------------------------
# decoding and packing


def decode_image(path: Path) -> Decoded:
    """RGB uint8 64 x 64 x 3 pixels; other modes converted (`to_rgb`), other sizes resized (both reported)."""
    try:
        with Image.open(path) as image:
            image.load()  # decode now, so a truncated file fails here rather than later
            converted = image.mode != "RGB"
            rgb = to_rgb(image)
            resized = rgb.size != (IMAGE_SIZE, IMAGE_SIZE)
            if resized:
                rgb = rgb.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR)
            return Decoded(np.asarray(rgb, dtype=np.uint8), converted, resized, None)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        return Decoded(None, False, False, reason(e))


def _decode_chunk(paths: list[Path]) -> list[Decoded]:
    return [decode_image(path) for path in paths]


def _decode_in_order(pool: ThreadPoolExecutor, paths: list[Path], on_chunk) -> Iterator[Decoded]:
    """Decode on the pool (PIL releases the GIL), in order, with a bounded number of chunks in flight: memory
    stays flat and a failure cancels the little work still queued."""
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
    """Decode every image of ``layout`` into ``packed`` (built beside it, renamed in when complete)."""
    say(console, f"packing {len(layout.train):,} train and {len(layout.test):,} test images from {layout.folder}")
    repairs = {"skipped_files": [], "resized_files": [], "converted_to_rgb": 0}
    pool = ThreadPoolExecutor(max_workers=DECODE_WORKERS)
    try:
        with staged(packed, "building") as staging:
            with progress(console) as bars:
                labels = {split: _pack_split(layout, split, staging, pool, skip_bad, bars, repairs) for split in SPLITS}
            _refuse_untrainable(layout, labels)
            manifest = write_manifest(
                staging,
                dataset="synthetic" if layout.synthetic_params is not None else DATASET,
                classes=layout.classes,
                names=layout.names,
                class_order="sorted wnids",
                source=source_info,
                augmentation=AUGMENTATION,
                repairs=repairs,
                synthetic_params=layout.synthetic_params,
            )
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    say_repairs(manifest, console)
    return manifest


def _pack_split(
    layout: Layout, split: str, out: Path, pool, skip_bad: bool, progress: Progress, repairs: dict
) -> np.ndarray:
    """Write ``<split>_images.npy`` and ``<split>_labels.npy`` and return the labels kept; a bad image raises
    or, with skip_bad, is dropped. Dropped, resized and converted images are counted in ``repairs``."""
    items = getattr(layout, split)
    images_path = out / f"{split}_images.npy"
    shape = (len(items), IMAGE_SIZE, IMAGE_SIZE, 3)
    images = np.lib.format.open_memmap(images_path, mode="w+", dtype=np.uint8, shape=shape)
    allocate(images_path)
    labels = np.empty(len(items), dtype=np.int64)
    count = 0
    task = progress.add_task(f"decoding {split}", total=len(items))
    decoded_stream = _decode_in_order(pool, [path for path, _ in items], lambda n: progress.advance(task, n))
    for (path, label), decoded in zip(items, decoded_stream):
        relative = path.relative_to(layout.folder).as_posix()
        if decoded.error is not None:
            if not skip_bad:
                raise unreadable(path, decoded.error)
            repairs["skipped_files"].append(relative)
            continue
        images[count] = decoded.pixels
        labels[count] = label
        count += 1
        repairs["converted_to_rgb"] += decoded.converted
        if decoded.resized:
            repairs["resized_files"].append(relative)
    images.flush()
    del images
    if count < len(items):  # --skip-bad dropped images: keep the rows written
        shorter = images_path.with_name(f"{split}_images.shrinking.npy")
        np.save(shorter, np.load(images_path, mmap_mode="r")[:count])
        os.replace(shorter, images_path)
    np.save(out / f"{split}_labels.npy", labels[:count])
    return labels[:count]


def _refuse_untrainable(layout: Layout, labels: dict[str, np.ndarray]) -> None:
    """An empty split, or a class without training images, is an error naming it (only --skip-bad can
    make one, by skipping every image of it: without it the first unreadable image stops `prepare`)."""
    for split in SPLITS:
        if not len(labels[split]):
            items = getattr(layout, split)
            first = items[0][0].relative_to(layout.folder).as_posix()
            raise ArchbenchError(
                f"--skip-bad skipped all {len(items)} {split} images of {layout.folder} (first: {first}), "
                f"leaving the {split} split empty: replace the unreadable images and rerun"
            )
    untrained = np.flatnonzero(np.bincount(labels["train"], minlength=len(layout.classes)) == 0)
    if untrained.size:
        label = int(untrained[0])
        paths = [path for path, item_label in layout.train if item_label == label]
        raise ArchbenchError(
            f"--skip-bad skipped all {len(paths)} training images of class {layout.classes[label]} "
            f"(first: {paths[0].relative_to(layout.folder).as_posix()}), so the set could not learn it: "
            "replace the unreadable images and rerun"
        )
