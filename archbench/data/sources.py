"""Data sources by name: how each is prepared, all ending in the same packed, verified form.

`SOURCES` maps the names `archbench data prepare DATASET` takes to a `DataSource`. Most are *readers*,
packed by `prepare_arrays`; Tiny-ImageNet streams its JPEGs to disk with its own `prepare`. A reader::

    read(location: str | None, root: Path, *, image_size: int | None, skip_bad: bool, console)
        -> (SourceArrays, {"kind": ..., "location": ..., "checksum": ..., "official": checksum or None})

``location`` is ``--source`` (None: the official one, downloaded into ``root`` if need be); ``official`` is
the official archive's checksum (None where there is none). The manifest records ``verified: checksum ==
official``, and a mismatch is said in one line; a reader that judges this itself (CIFAR) returns
``verified`` instead of ``official`` and says the line.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from archbench.data.files import accessing, remove_abandoned, require_folder
from archbench.data.packed import (
    PACKED_DIR,
    PackedData,
    load_packed,
    pack_arrays,
    recorded_manifest,
    reusable_cache,
    say,
    unverified,
)
from archbench.errors import ArchbenchError

DEFAULT_DATASET = "tiny-imagenet"
DATA_DIR = Path("data")  # where `prepare` puts a data set by default: data/ for Tiny-ImageNet, data/NAME for others


def _lazy(module: str, function: str, *bound) -> Callable:
    """``module.function`` with the arguments ``bound`` first, imported when first called (a source's
    dependencies load only when it is used)."""

    def call(*args, **kwargs):
        return getattr(importlib.import_module(module), function)(*bound, *args, **kwargs)

    call.__qualname__ = f"{module}.{function}"
    return call


@dataclass(frozen=True)
class DataSource:
    name: str
    summary: str
    augmentation: str  # a key of archbench.data.loader.AUGMENTATIONS
    read: Callable | None = None  # a reader (the contract above); None for a source with its own `prepare`
    prepare: Callable | None = None  # prepare(root, source, skip_bad, console) -> manifest
    builtin: Callable[[Console | None], Path] | None = None  # root of the offline copy, built on first use
    takes_image_size: bool = False  # whether --image-size applies


SOURCES: dict[str, DataSource] = {
    source.name: source
    for source in (
        DataSource(
            "tiny-imagenet",
            "Tiny-ImageNet-200 (200 classes, 64x64): the official zip, a local copy or its extracted folder",
            "upscale-crop-flip",
            prepare=_lazy("archbench.data.tinyimagenet", "prepare"),
        ),
        DataSource(
            "cifar10",
            "CIFAR-10 (10 classes, 32x32): the official python-format archive",
            "pad-crop-flip",
            read=_lazy("archbench.data.cifar", "read_source", "cifar10"),
        ),
        DataSource(
            "cifar100",
            "CIFAR-100 (100 fine classes, 32x32): the official python-format archive",
            "pad-crop-flip",
            read=_lazy("archbench.data.cifar", "read_source", "cifar100"),
        ),
        DataSource(
            "imagefolder",
            "your own images in torchvision's ImageFolder layout (train/ and val/ or test/ class folders)",
            "upscale-crop-flip",
            read=_lazy("archbench.data.imagefolder", "read_imagefolder"),
            takes_image_size=True,
        ),
        DataSource(
            "digits",
            "real handwritten digits (UCI, 1,797 8x8 images, 10 classes) bundled with scikit-learn: offline",
            "upscale-crop",
            read=_lazy("archbench.data.digits", "read"),
            builtin=_lazy("archbench.data.digits", "builtin_root"),
        ),
    )
}
SYNTHETIC = "synthetic"  # the default synthetic set: a built-in --data name, made by `archbench data synth`


def source(name: str) -> DataSource:
    if name not in SOURCES:
        raise ArchbenchError(f"unknown data set '{name}'; use one of: {', '.join(SOURCES)}")
    return SOURCES[name]


def default_root(name: str) -> Path:
    """`prepare`'s --root when none is given, and where ``--data NAME`` looks for a prepared set."""
    return DATA_DIR if name == DEFAULT_DATASET else DATA_DIR / name


def builtin_names() -> list[str]:
    """The --data names that need no prepared folder."""
    return [name for name, s in SOURCES.items() if s.builtin is not None] + [SYNTHETIC]


def prepare(
    name: str = DEFAULT_DATASET,
    root: Path | str | None = None,
    location: str | None = None,
    *,
    image_size: int | None = None,
    skip_bad: bool = False,
    console: Console | None = None,
) -> dict:
    """`archbench data prepare NAME`: make ``root/packed`` (default: `default_root`) hold the data set and return
    its manifest."""
    spec = source(name)
    root = default_root(name) if root is None else root
    if image_size is not None and not spec.takes_image_size:
        with_size = ", ".join(n for n, s in SOURCES.items() if s.takes_image_size)
        raise ArchbenchError(f"--image-size applies to {with_size} only: {name} images keep their size")
    remove_abandoned(Path(root))  # what an interrupted `prepare` left
    if spec.prepare is not None:
        return spec.prepare(root=root, source=location, skip_bad=skip_bad, console=console)
    return prepare_arrays(name, root, location, image_size=image_size, skip_bad=skip_bad, console=console)


def prepare_arrays(
    name: str,
    root: Path | str,
    location: str | None,
    *,
    image_size: int | None = None,
    skip_bad: bool = False,
    console: Console | None = None,
) -> dict:
    """Read a reader source and pack it into ``root/packed``, unless an intact cache of the same content is there."""
    spec = source(name)
    root = Path(root)
    require_folder(root, "--root")
    with accessing(root):
        packed = root / PACKED_DIR
        checked = location is None and image_size is None and recorded_manifest(packed).get("dataset") == name
        if checked:
            # no source named: an intact cache of this data set is the answer, before any read or download
            if (manifest := reusable_cache(packed, None, skip_bad, console)) is not None:
                return manifest
        arrays, origin = spec.read(location, root, image_size=image_size, skip_bad=skip_bad, console=console)
        official = origin.pop("official", None)
        verified = origin.pop("verified", official is not None and origin["checksum"] == official)
        if official is not None and not verified:
            say(
                console, unverified(origin["location"], f"has {origin['checksum']}, not the official {name} {official}")
            )
        info = {**origin, "verified": verified}
        manifest = None if checked else reusable_cache(packed, info["checksum"], skip_bad, console)
        if manifest is not None and manifest["dataset"] == name:
            return manifest
        return pack_arrays(arrays, packed, dataset=name, source=info, augmentation=spec.augmentation, console=console)


def resolve(spec: str | Path = SYNTHETIC, console: Console | None = None) -> PackedData:
    """``--data``: a data set's name (the set prepared into its `default_root`, else for a built-in name such
    as the digits the copy built offline on first use and cached), the default synthetic set, or a prepared
    folder. Either way the data is verified against its manifest before it is returned."""
    text = str(spec)
    if text == SYNTHETIC:
        from archbench.data.synthetic import default_synthetic

        return load_packed(default_synthetic(console))
    if text in SOURCES and (SOURCES[text].builtin is not None or not Path(text).exists()):
        root = default_root(text)
        if (root / PACKED_DIR / "manifest.json").exists():  # prepared here by the user: theirs comes first
            return load_packed(root)
        if SOURCES[text].builtin is not None:
            return load_packed(SOURCES[text].builtin(console))
        raise ArchbenchError(
            f"--data {text}: {text} must be prepared first: run `archbench data prepare {text}` (into {root}; "
            f"or with --root DIR, then pass --data DIR); built in, offline: {', '.join(builtin_names())}"
        )
    return load_packed(Path(spec))
