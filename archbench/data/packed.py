"""The one form every data set takes on disk: packed uint8 arrays and a manifest, verified before use.

Whatever the source, `prepare` ends in a folder of four .npy arrays (train and test images and labels) and
manifest.json (`MANIFEST_TYPES`); `verify_cache` checks all of it against itself before a cache is used or
reused, so what a run records is what it trained on. docs/data.md#the-packed-form-for-every-source lists the
manifest's fields, what the fingerprint covers and every check.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from rich.console import Console

from archbench.annotations import matches, type_name
from archbench.data.arrays import SourceArrays
from archbench.data.files import (
    accessing,
    cache_dir,
    describe,
    file_digest,
    public_path,
    remove_abandoned,
    replace_dir,
    staged,
)
from archbench.errors import ArchbenchError

FORMAT_VERSION = 4  # 4: fingerprint of all but NOT_FINGERPRINTED (3: classes, arrays, normalisation, augmentation)
PACKED_DIR = "packed"
SPLITS = ("train", "test")
ARRAYS = tuple(f"{split}_{kind}" for split in SPLITS for kind in ("images", "labels"))
NOT_FINGERPRINTED = ("fingerprint", "format_version", "source", "created_at")  # not what the data is
# Every manifest field and its type: a dict is a record with those fields, float is any JSON number.
MANIFEST_TYPES = {
    "format_version": int,
    "dataset": str,
    "num_classes": int,
    "classes": list[str],
    "class_order": str,
    "names": dict[str, str],
    "image_shape": list[int],
    "splits": {split: {"count": int} for split in SPLITS},
    "class_counts": {split: list[int] for split in SPLITS},
    "arrays": {name: {"file": str, "shape": list[int], "dtype": str, "bytes": int, "sha256": str} for name in ARRAYS},
    "normalisation": {"mean": list[float], "std": list[float], "of": str},
    "augmentation": str,
    "source": {"kind": str, "location": str | None, "checksum": str | None, "verified": bool},  # None: generated
    "fingerprint": str,
    "skipped": int,
    "skipped_files": list[str],
    "resized": int,
    "resized_files": list[str],
    "converted_to_rgb": int,
    "synthetic": bool,
    "synthetic_params": dict | None,
    "extra": dict,
    "created_at": str,
}
STATS_CHUNK = 4096  # images per pass when summing pixels: bounded memory for any split size
# A file modified this recently could change again within the same timestamp tick unnoticed, so its
# verification is not remembered (the same rule git applies to "racily clean" files).
RECENT_NS = 2_000_000_000


def _manifest_field(name: str) -> property:
    return property(lambda data: data.manifest[name], doc=f"The manifest's {name!r}.")


@dataclass(frozen=True)
class PackedData:
    """A prepared dataset: memory-mapped uint8 images (N x H x W x 3) and int64 labels per split."""

    root: Path
    manifest: dict
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray

    dataset = _manifest_field("dataset")
    num_classes = _manifest_field("num_classes")
    classes = _manifest_field("classes")
    names = _manifest_field("names")
    fingerprint = _manifest_field("fingerprint")
    synthetic = _manifest_field("synthetic")

    @property
    def transform(self) -> dict:
        """The loader's per-source settings: ``DeviceLoader(images, labels, ..., **data.transform)``."""
        normalisation = self.manifest["normalisation"]
        return {
            "mean": tuple(normalisation["mean"]),
            "std": tuple(normalisation["std"]),
            "augmentation": self.manifest["augmentation"],
        }


class DamagedCache(ArchbenchError):
    """What is wrong with a packed cache, and the file at fault (``outdated``: another format version)."""

    def __init__(self, path: Path, problem: str, outdated: bool = False):
        super().__init__(f"{public_path(path)} {problem}")
        self.path = path
        self.outdated = outdated


# ----------------------------------------------------------------------------------------------------
# writing


def channel_statistics(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and population std of uint8 N x H x W x 3 pixels, scaled to [0, 1]: exact int64 sums
    read in chunks, so the result does not depend on order and a memory-mapped split is never loaded whole."""
    total = np.zeros(3, dtype=np.int64)
    squares = np.zeros(3, dtype=np.int64)
    for start in range(0, len(images), STATS_CHUNK):
        chunk = np.asarray(images[start : start + STATS_CHUNK]).reshape(-1, 3).astype(np.int64)
        total += chunk.sum(axis=0)
        squares += (chunk * chunk).sum(axis=0)
    pixels = len(images) * int(np.prod(images.shape[1:3]))
    mean = total / pixels
    variance = squares / pixels - mean * mean
    return (mean / 255).tolist(), (np.sqrt(np.maximum(variance, 0.0)) / 255).tolist()


def write_manifest(
    packed: Path,
    *,
    dataset: str,
    classes: list[str],
    names: dict[str, str],
    class_order: str,
    source: dict,
    augmentation: str,
    extra: dict | None = None,
    repairs: dict | None = None,
    synthetic_params: dict | None = None,
) -> dict:
    """Write manifest.json for the four arrays already in ``packed``, check it (`verify_cache`, short of
    re-hashing the files just hashed) and return it; ``repairs`` defaults to nothing skipped or changed."""
    arrays = {name: _array_record(packed / f"{name}.npy") for name in ARRAYS}
    labels = {split: np.load(packed / f"{split}_labels.npy") for split in SPLITS}
    train_images = np.load(packed / "train_images.npy", mmap_mode="r")
    mean, std = channel_statistics(train_images)
    normalisation = {"mean": mean, "std": std, "of": "the training split's pixels, scaled to [0, 1]"}
    repairs = {"skipped_files": [], "resized_files": [], "converted_to_rgb": 0, **(repairs or {})}
    manifest = {
        "format_version": FORMAT_VERSION,
        "dataset": dataset,
        "num_classes": len(classes),
        "classes": list(classes),
        "class_order": class_order,
        "names": names,
        "image_shape": list(train_images.shape[1:]),
        "splits": {split: {"count": int(len(labels[split]))} for split in SPLITS},
        "class_counts": {split: np.bincount(labels[split], minlength=len(classes)).tolist() for split in SPLITS},
        "arrays": arrays,
        "normalisation": normalisation,
        "augmentation": augmentation,
        "source": source,
        "skipped": len(repairs["skipped_files"]),
        "skipped_files": repairs["skipped_files"],
        "resized": len(repairs["resized_files"]),
        "resized_files": repairs["resized_files"],
        "converted_to_rgb": repairs["converted_to_rgb"],
        "synthetic": synthetic_params is not None,
        "synthetic_params": synthetic_params,
        "extra": extra or {},
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    manifest["fingerprint"] = fingerprint(manifest)
    del train_images
    (packed / "manifest.json").write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    verify_cache(packed, hash_files=False)
    return manifest


def pack_arrays(
    arrays: SourceArrays,
    packed: Path,
    *,
    dataset: str,
    source: dict,
    augmentation: str,
    class_order: str = "as the source numbers its labels",
    console: Console | None = None,
) -> dict:
    """Write a source's in-memory splits as a packed cache at ``packed`` (built beside it, renamed in when
    complete) and return its manifest; a split or class the checks refuse leaves nothing behind."""
    _refuse_bad_arrays(arrays, dataset, source.get("location"))
    say(console, f"packing {len(arrays.train_labels):,} train and {len(arrays.test_labels):,} test images of {dataset}")
    with staged(Path(packed), "building") as staging:
        for split in SPLITS:
            np.save(staging / f"{split}_images.npy", np.ascontiguousarray(getattr(arrays, f"{split}_images")))
            np.save(staging / f"{split}_labels.npy", np.asarray(getattr(arrays, f"{split}_labels"), dtype=np.int64))
        try:
            manifest = write_manifest(
                staging,
                dataset=dataset,
                classes=arrays.classes,
                names=arrays.names or {c: c for c in arrays.classes},
                class_order=class_order,
                source=source,
                augmentation=augmentation,
                extra=arrays.extra,
                repairs=arrays.repairs,
            )
        except DamagedCache as e:  # e.g. a split empty or a class without training images
            raise ArchbenchError(f"the {dataset} data cannot be packed: {e.message}") from None
    say_repairs(manifest, console)
    return manifest


def _refuse_bad_arrays(arrays: SourceArrays, dataset: str, location: str | None = None) -> None:
    """Shapes and dtypes a source must hand over (anything else is a mistake in the source module), and no
    empty split: checked here, before any statistics, naming the input (``location``) rather than a cache."""
    read_from = f" read from {location}" if location else ""
    for split in SPLITS:
        images, labels = getattr(arrays, f"{split}_images"), getattr(arrays, f"{split}_labels")
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ArchbenchError(
                f"the {dataset} {split} images are {images.dtype} {list(images.shape)}, not uint8 N x H x W x 3"
            )
        if len(images) != len(labels):
            raise ArchbenchError(f"the {dataset} {split} split has {len(images)} images but {len(labels)} labels")
        if not len(images):
            raise ArchbenchError(f"the {dataset} {split} split{read_from} is empty: it holds no images")
    flat = np.flatnonzero(np.asarray(channel_statistics(arrays.train_images)[1]) == 0)
    if len(flat):
        raise ArchbenchError(
            f"the {dataset} training images are all alike in channel {int(flat[0])}, so they cannot be normalised"
        )
    if arrays.train_images.shape[1:] != arrays.test_images.shape[1:]:
        raise ArchbenchError(
            f"the {dataset} train images are {list(arrays.train_images.shape[1:])} but the test images "
            f"{list(arrays.test_images.shape[1:])}: both splits need one shape"
        )


def _array_record(path: Path) -> dict:
    array = np.load(path, mmap_mode="r")
    return {
        "file": path.name,
        "shape": list(array.shape),
        "dtype": str(array.dtype),
        "bytes": path.stat().st_size,
        "sha256": file_digest(path, "sha256"),
    }


def fingerprint(manifest: dict) -> str:
    """sha256 of everything ``manifest`` says about the data: every field but `NOT_FINGERPRINTED`."""
    content = {key: value for key, value in manifest.items() if key not in NOT_FINGERPRINTED}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


# ----------------------------------------------------------------------------------------------------
# checking


def verify_cache(packed: Path, hash_files: bool = True) -> tuple[dict, dict[str, np.ndarray]]:
    """The manifest and memory-mapped arrays of the cache in ``packed``, after every check (docs/data.md); the
    first that fails raises `DamagedCache` naming the file at fault."""
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


def reusable_cache(packed: Path, checksum: str | None, skip_bad: bool, console: Console | None) -> dict | None:
    """The cache's manifest if it is intact, built from ``checksum`` (any source if None) and allowed."""
    if not (packed / "manifest.json").exists():
        return None
    manifest, problem = check_cache(packed)
    if manifest is None:
        say(console, f"the packed cache in {packed} cannot be reused ({problem}); rebuilding it")
        return None
    if checksum is not None and manifest["source"]["checksum"] != checksum:
        say(console, f"the packed cache in {packed} was built from another source; rebuilding it")
        return None
    if manifest["skipped"] and not skip_bad:
        return None  # rebuilding stops at the first bad file and names it
    say(console, f"reusing the packed cache in {packed}")
    return manifest


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
    problem = _type_problem(manifest, MANIFEST_TYPES) or _manifest_problem(manifest)
    if problem is not None:
        raise DamagedCache(path, problem)
    return manifest


def _type_problem(value, expected, where: str = "") -> str | None:
    """Why ``value`` (the manifest's field ``where``) is not of the ``expected`` type of `MANIFEST_TYPES`, or None."""
    if isinstance(expected, dict):
        if not isinstance(value, dict):
            return f"records {where} as {json.dumps(value)[:40]}, not an object"
        for key, inner in expected.items():
            field = f"{where}.{key}" if where else key
            if key not in value:
                return f"lacks the field {field}"
            if problem := _type_problem(value[key], inner, field):
                return problem
        return None
    if not matches(value, expected):
        return f"records {where} as {json.dumps(value)[:40]}, not {type_name(expected)}"
    return None


def _manifest_problem(manifest: dict) -> str | None:
    classes, arrays = manifest["classes"], manifest["arrays"]
    if sorted(arrays) != sorted(ARRAYS) or any(arrays[name]["file"] != f"{name}.npy" for name in ARRAYS):
        return f"lists the arrays {sorted(arrays)} instead of {list(ARRAYS)}"
    if manifest["fingerprint"] != (recomputed := fingerprint(manifest)):
        return (
            f"records the fingerprint {manifest['fingerprint']}, but its fields give {recomputed}: it was edited "
            "after packing"
        )
    if len(set(classes)) != len(classes):
        return "lists some classes more than once"
    if manifest["num_classes"] != len(classes):
        return f"records {manifest['num_classes']} classes but lists {len(classes)}"
    shape = manifest["image_shape"]
    if len(shape) != 3 or shape[2] != 3 or min(shape) < 1:
        return f"records images of shape {shape}, not H x W x 3"
    for split in SPLITS:
        if arrays[f"{split}_images"]["shape"][1:] != shape:
            return f"records images of shape {shape}, but {split}_images.npy of {arrays[f'{split}_images']['shape']}"
    mean, std = manifest["normalisation"]["mean"], manifest["normalisation"]["std"]
    if len(mean) != 3 or len(std) != 3 or not all(s > 0 for s in std):
        return f"records the normalisation {manifest['normalisation']}, not a mean and a positive std per channel"
    for split in SPLITS:
        counts, total = manifest["class_counts"][split], manifest["splits"][split]["count"]
        if len(counts) != len(classes) or sum(counts) != total:
            return f"records {total} {split} images but per-class counts {counts} for {len(classes)} classes"
    if manifest["synthetic"] != (manifest["synthetic_params"] is not None):
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
        height, width, _ = manifest["image_shape"]
        expected = f"uint8 N x {height} x {width} x 3"
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


# ----------------------------------------------------------------------------------------------------
# loading


def packed_dir(root: Path) -> Path:
    """The folder holding manifest.json: ``root/packed`` for a prepared root, or ``root`` itself."""
    root = Path(root)
    return root if (root / "manifest.json").exists() else root / PACKED_DIR


def load_packed(root: Path | str) -> PackedData:
    """Memory-map a prepared dataset (``archbench data prepare DATASET --root ROOT``) after `verify_cache`."""
    root = Path(root)
    with accessing(root):
        if root.exists() and not root.is_dir():
            raise ArchbenchError(f"{root} is a file, not a folder of prepared data (see `archbench data prepare`)")
        packed = packed_dir(root)
        if not (packed / "manifest.json").exists():
            raise ArchbenchError(
                f"no prepared data in {root}: run `archbench data prepare [DATASET] --root {root}` to prepare a data "
                "set there, or pass --data digits (real handwritten digits, offline) or --data synthetic"
            )
        try:
            manifest, arrays = verify_cache(packed)
        except DamagedCache as e:
            command = f"archbench data prepare{_rebuild_arguments(packed)} --root {_prepared_root(root, packed)}"
            rebuild = f"rebuild it with `{command}`"
            if e.outdated:
                raise ArchbenchError(
                    f"the packed data in {packed} was made by another archbench version ({e.message}): {rebuild}"
                ) from None
            raise ArchbenchError(f"damaged packed data: {e.message}; {rebuild}") from None
    return PackedData(root=root, manifest=manifest, **arrays)


def _rebuild_arguments(packed: Path) -> str:
    """`` DATASET [--source S] [--image-size N]`` for the rebuild command, as a manifest says them that is older
    or still matches its fingerprint (an edited one may name another data set); nothing for Tiny-ImageNet and
    synthetic sets, which find their recorded source themselves."""
    manifest = recorded_manifest(packed)
    try:
        if manifest["format_version"] == FORMAT_VERSION and manifest["fingerprint"] != fingerprint(manifest):
            return ""
        dataset, location = manifest.get("dataset"), manifest.get("source", {}).get("location")
        extra = manifest.get("extra", {})
        size = extra.get("image_size") if extra.get("image_size_from") == "--image-size" else None
    except (AttributeError, KeyError, TypeError):
        return ""
    if not isinstance(dataset, str) or dataset in ("tiny-imagenet", "synthetic"):
        return ""
    arguments = f" {dataset}"
    if isinstance(location, str) and (location.startswith(("http://", "https://")) or Path(location).exists()):
        arguments += f" --source {shlex.quote(location)}"
    return arguments + (f" --image-size {size}" if isinstance(size, int) else "")


def built_once(name: str, doing: str, build: Callable[[Path], object], console: Console | None) -> Path:
    """``cache_dir() / name``, a data set ``build(folder)`` makes there on first use and again if it is damaged;
    concurrent first uses each build their own copy, and the first intact one stays."""
    final = cache_dir() / name
    remove_abandoned(cache_dir())
    if check_cache(final / PACKED_DIR)[0] is not None:
        return final
    say(console, f"{doing} (once) in {final}")
    with staged(final, "building", install=_install_unless_intact) as staging:
        build(staging)
    return final


def _install_unless_intact(staging: Path, final: Path) -> None:
    """Rename ``staging`` to ``final``, unless another process has just put an intact set there."""
    try:
        os.rename(staging, final)
    except OSError:  # another process got there first, or a damaged set sits there
        if check_cache(final / PACKED_DIR)[0] is None:
            replace_dir(staging, final)


def recorded_manifest(packed: Path) -> dict:
    """manifest.json as it stands, unchecked ({} where there is no readable JSON object)."""
    try:
        manifest = json.loads((packed / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return manifest if isinstance(manifest, dict) else {}


def _prepared_root(root: Path, packed: Path) -> Path:
    """The --root that `prepare` rebuilds ``packed`` under."""
    return packed.parent if packed == root and packed.name == PACKED_DIR else root


def say(console: Console | None, message: str) -> None:
    if console is not None:
        console.print(message, highlight=False, soft_wrap=True)


def say_repairs(manifest: dict, console: Console | None) -> None:
    """One line for each kind of repair the images needed on the way: converted, resized, skipped."""
    if manifest["converted_to_rgb"]:
        say(console, f"converted {manifest['converted_to_rgb']} images that were not 8-bit RGB to RGB")
    if manifest["resized"]:
        height, width, _ = manifest["image_shape"]
        first = manifest["resized_files"][0]
        say(console, f"resized {manifest['resized']} images that were not {height}x{width} (first: {first})")
    if manifest["skipped"]:
        first = manifest["skipped_files"][0]
        say(console, f"[yellow]skipped {manifest['skipped']} unreadable images[/] (first: {first})")


def unverified(location: str, differs: str) -> str:
    """The line that says a source is not the official one (``differs``: how), and is used all the same."""
    return f"[yellow]unverified:[/] {location} {differs}; using it, recorded as unverified"
