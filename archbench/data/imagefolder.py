"""Your own images in torchvision's ImageFolder layout, as one square size of RGB arrays.

The classes and files are those torchvision's ``ImageFolder`` takes, so the labels are its labels; each
image is made 8-bit RGB (`to_rgb`) and resized as ``Resize(S)`` + ``CenterCrop(S)``.
docs/data.md#your-own-images gives the layout and the conversion rules.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image
from rich.console import Console
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from archbench.data.arrays import SourceArrays
from archbench.data.files import folder_listing_digest, progress, reason
from archbench.data.packed import say
from archbench.errors import ArchbenchError

TEST_FOLDERS = ("test", "val")  # the first that exists is the test split
SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
DECODE_WORKERS = os.cpu_count() or 1  # decoding is CPU-bound: more threads than cores gain nothing


def read_imagefolder(
    location: str | None, root: Path, *, image_size: int | None, skip_bad: bool, console: Console | None
) -> tuple[SourceArrays, dict]:
    """The reader contract of `archbench.data.sources`: the tree at ``location`` (``--source``, required), and
    where it came from. There is no official checksum; the recorded one is a digest of the tree's listing
    (every file's path, size and modification time) and of ``image_size`` when one is asked for."""
    if location is None:
        raise ArchbenchError("imagefolder needs --source FOLDER: the folder holding train/ and test/ (or val/)")
    arrays = read(location, image_size, skip_bad, console)
    checksum = f"listing-sha256:{folder_listing_digest(Path(location).expanduser())}"
    if image_size is not None:
        checksum += f";image-size:{image_size}"
    origin = {"kind": "folder", "location": str(Path(location).expanduser().resolve()), "checksum": checksum}
    return arrays, {**origin, "official": None}


def read(
    source: Path | str, image_size: int | None = None, skip_bad: bool = False, console: Console | None = None
) -> SourceArrays:
    """The train and test splits of the ImageFolder tree at ``source`` (docs/data.md#your-own-images)."""
    source = Path(source).expanduser()
    if not source.is_dir():
        raise ArchbenchError(f"--source {source} is not a folder: an ImageFolder source is a folder holding train/")
    train_dir = source / "train"
    test_dir = next((source / name for name in TEST_FOLDERS if (source / name).is_dir()), None)
    if not train_dir.is_dir():
        raise ArchbenchError(f"{train_dir} is missing: an ImageFolder source holds train/<class>/ and test/<class>/")
    if test_dir is None:
        raise ArchbenchError(f"{source / 'test'} is missing (and so is {source / 'val'}): the test split needs one")
    if test_dir.name == "test" and (source / "val").is_dir():
        say(console, f"using {test_dir} as the test split ({source / 'val'} is not read)")
    classes = _classes(train_dir)
    if (test_classes := _classes(test_dir)) != classes:
        only = {train_dir: set(classes) - set(test_classes), test_dir: set(test_classes) - set(classes)}
        difference = "; ".join(f"only {d} has {', '.join(sorted(names))}" for d, names in only.items() if names)
        raise ArchbenchError(
            f"the train and test class folders differ ({difference}): both splits need the same classes"
        )
    index = {name: i for i, name in enumerate(classes)}
    folders = {"train": train_dir, "test": test_dir}
    items = {split: _items(folder, index) for split, folder in folders.items()}
    for split, folder in folders.items():
        if not items[split]:
            raise ArchbenchError(f"{folder} holds no images ({', '.join(IMG_EXTENSIONS)}): the {split} split is empty")
    counts = np.bincount([label for _, label in items["train"]], minlength=len(classes))
    if (empty := np.flatnonzero(counts == 0)).size:
        raise ArchbenchError(
            f"the class folder {train_dir / classes[empty[0]]} holds no images, but every class needs training images"
        )
    skipped: list[str] = []
    with ThreadPoolExecutor(max_workers=DECODE_WORKERS) as pool:
        size_from = "--image-size"
        if image_size is None:
            image_size = _median_side(pool, items["train"], source, skip_bad)
            size_from = "the median shorter side of the training images"
        say(
            console,
            f"reading {sum(map(len, items.values())):,} images from {source}, resized to {image_size}x{image_size}",
        )
        arrays = {
            split: _decode_split(pool, split, items[split], image_size, source, skip_bad, skipped, console)
            for split in folders
        }
    for split, folder in folders.items():
        if len(arrays[split][1]) == 0:
            raise ArchbenchError(f"--skip-bad skipped every image of {folder}, leaving the {split} split empty")
    kept = np.bincount(arrays["train"][1], minlength=len(classes))
    if (empty := np.flatnonzero(kept == 0)).size:
        raise ArchbenchError(
            f"--skip-bad skipped every image of {train_dir / classes[empty[0]]}, so a run could not learn that class"
        )
    return SourceArrays(
        classes=classes,
        train_images=arrays["train"][0],
        train_labels=arrays["train"][1],
        test_images=arrays["test"][0],
        test_labels=arrays["test"][1],
        extra={
            "image_size": image_size,
            "image_size_from": size_from,
            "resize": "shorter side to the image size (bilinear, antialiased), centre crop",
            "test_folder": test_dir.name,
        },
        repairs={"skipped_files": skipped},
    )


def _classes(folder: Path) -> list[str]:
    try:
        return find_classes(folder)[0]
    except FileNotFoundError:
        raise ArchbenchError(f"{folder} holds no class folders: put each class's images in {folder}/<class>/") from None


def _items(folder: Path, index: dict[str, int]) -> list[tuple[Path, int]]:
    return [(Path(path), label) for path, label in make_dataset(folder, index, IMG_EXTENSIONS, allow_empty=True)]


def _median_side(pool: ThreadPoolExecutor, items: list[tuple[Path, int]], source: Path, skip_bad: bool) -> int:
    """The median of the training images' shorter sides (read from their headers)."""
    sides = []
    for (path, _), side in zip(items, pool.map(_shorter_side, [path for path, _ in items])):
        if isinstance(side, str):
            if not skip_bad:
                raise unreadable(path, side)
            continue  # the decoding pass records it as skipped
        sides.append(side)
    if not sides:
        raise ArchbenchError(f"--skip-bad skipped every image of {source / 'train'}, leaving the train split empty")
    return max(1, int(round(float(np.median(sides)))))


def _shorter_side(path: Path) -> int | str:
    try:
        with Image.open(path) as image:
            return min(image.size)
    except Exception as e:  # a damaged file can make PIL raise almost anything
        return reason(e)


def _decode_split(
    pool: ThreadPoolExecutor,
    split: str,
    items: list[tuple[Path, int]],
    size: int,
    source: Path,
    skip_bad: bool,
    skipped: list[str],
    console: Console | None,
) -> tuple[np.ndarray, np.ndarray]:
    images = np.empty((len(items), size, size, 3), dtype=np.uint8)
    labels = np.empty(len(items), dtype=np.int64)
    count = 0
    with progress(console) as bars:
        task = bars.add_task(f"decoding {split}", total=len(items))
        for (path, label), pixels in zip(items, pool.map(lambda p: decode(p, size), [p for p, _ in items])):
            bars.advance(task)
            if isinstance(pixels, str):
                if not skip_bad:
                    raise unreadable(path, pixels)
                skipped.append(path.relative_to(source).as_posix())
                continue
            images[count] = pixels
            labels[count] = label
            count += 1
    return images[:count], labels[:count]


def decode(path: Path, size: int) -> np.ndarray | str:
    """The image at ``path`` as uint8 size x size x 3 (docs/data.md#your-own-images), or why it cannot be read."""
    try:
        with Image.open(path) as image:
            image.load()
            rgb = to_rgb(image)
    except Exception as e:  # a damaged file can make PIL raise almost anything
        return reason(e)
    resized = TF.resize(rgb, size, interpolation=InterpolationMode.BILINEAR, antialias=True)
    return np.asarray(TF.center_crop(resized, size), dtype=np.uint8)


def to_rgb(image: Image.Image) -> Image.Image:
    """An 8-bit RGB copy of ``image``: 16-bit values scaled, transparency composited over black."""
    if image.mode in SIXTEEN_BIT_MODES:
        values = np.asarray(image).astype(np.float64)
        if values.size and (values.min() < 0 or values.max() > 65535):  # only mode I (32 bits) holds such values
            low, high = int(values.min()), int(values.max())
            raise ValueError(f"its 32-bit pixels run from {low} to {high}, beyond 16 bits, with no fixed 8-bit scale")
        return Image.fromarray(np.round(values / 257).astype(np.uint8), "L").convert("RGB")
    if image.mode == "F":
        raise ValueError("its pixels are 32-bit floats (PIL mode F), which have no fixed 8-bit scale")
    if image.mode in ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(black, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def unreadable(path: Path, why: str) -> ArchbenchError:
    """The error for an image that cannot be decoded, without --skip-bad."""
    return ArchbenchError(
        f"{path} is not a readable image ({why}): replace it, or rerun with --skip-bad to skip such files"
    )
