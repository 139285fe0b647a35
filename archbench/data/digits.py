"""Real handwritten digits, offline: the UCI optical-recognition digits as scikit-learn bundles them.

The CSV inside scikit-learn's wheel is read directly (64 pixel columns, then the label, one image a row),
without importing scikit-learn, and split by a fixed rule (`SPLIT_RULE`). docs/data.md#the-digits gives
the source, the licence, the scaling and the split.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import io
import zlib
from functools import partial
from pathlib import Path

import numpy as np
from rich.console import Console

from archbench.data.arrays import SourceArrays
from archbench.data.download import MAX_INFLATED_BYTES, MAX_RATIO, refuse_inflation
from archbench.data.packed import FORMAT_VERSION, built_once
from archbench.errors import ArchbenchError

DATASET = "digits"
BUNDLED = ("datasets", "data", "digits.csv.gz")  # inside the sklearn package
CONTENT_SHA256 = "6ebb3d2fee246a4e99363262ddf8a00a3c41bee6014c373ed9d9216ba7f651b8"  # the decompressed CSV
SIDE = 8
MAX_VALUE = 16
CLASSES = [str(d) for d in range(10)]
TEST_EVERY = 5
SPLIT_RULE = (
    f"within each class, in file order, every {TEST_EVERY}th image (class positions {TEST_EVERY - 1}, "
    f"{2 * TEST_EVERY - 1}, {3 * TEST_EVERY - 1}, ...) is a test image; the others train"
)
LICENCE = "CC BY 4.0"
ATTRIBUTION = (
    "E. Alpaydin and C. Kaynak (1998), Optical Recognition of Handwritten Digits, UCI Machine Learning "
    "Repository, https://doi.org/10.24432/C50P49 (the copy bundled with scikit-learn)"
)


def bundled_file() -> Path:
    """scikit-learn's copy of the digits, found without importing scikit-learn (about a second)."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise ArchbenchError(
            "the digits come with scikit-learn, which is not installed: `pip install scikit-learn`, "
            "or pass a copy of digits.csv.gz with --source"
        )
    path = Path(spec.submodule_search_locations[0], *BUNDLED)
    if not path.is_file():
        raise ArchbenchError(f"{path} is missing from the installed scikit-learn: reinstall scikit-learn")
    return path


def read(
    location: str | None, root: Path, *, image_size: int | None, skip_bad: bool, console: Console | None
) -> tuple[SourceArrays, dict]:
    """The reader contract of `archbench.data.sources`: the digits from ``location`` (None: scikit-learn's
    copy), with the bundled content's checksum as the official one."""
    path = Path(location).expanduser() if location is not None else bundled_file()
    if not path.is_file():
        raise ArchbenchError(f"--source {path} is not a file: pass a copy of scikit-learn's digits.csv.gz")
    content = _content(path)
    pixels, labels = _parse(content, path)
    images = np.rint(pixels.astype(np.float64) * 255 / MAX_VALUE).astype(np.uint8).reshape(-1, SIDE, SIDE, 1)
    images = np.repeat(images, 3, axis=3)
    test = test_mask(labels)
    arrays = SourceArrays(
        classes=CLASSES,
        train_images=images[~test],
        train_labels=labels[~test],
        test_images=images[test],
        test_labels=labels[test],
        names={c: f"digit {c}" for c in CLASSES},
        extra={
            "licence": LICENCE,
            "attribution": ATTRIBUTION,
            "split": SPLIT_RULE,
            "scaling": f"uint8 = round(value * 255 / {MAX_VALUE}), gray copied to 3 channels",
        },
    )
    where = "scikit-learn's sklearn/datasets/data/digits.csv.gz" if location is None else str(path.resolve())
    checksum = f"sha256:{hashlib.sha256(content).hexdigest()}"
    return arrays, {"kind": "file", "location": where, "checksum": checksum, "official": f"sha256:{CONTENT_SHA256}"}


def test_mask(labels: np.ndarray) -> np.ndarray:
    """True for the test images of `SPLIT_RULE`: positions TEST_EVERY - 1, 2 * TEST_EVERY - 1, ... of each class."""
    mask = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        mask[rows[TEST_EVERY - 1 :: TEST_EVERY]] = True
    return mask


def _content(path: Path) -> bytes:
    """The CSV's bytes, decompressed when gzipped (no further than the limits on inflation allow); a damaged
    file is one line naming it."""
    data = path.read_bytes()
    if data[:2] != b"\x1f\x8b":
        return data
    limit = min(MAX_INFLATED_BYTES, MAX_RATIO * len(data))
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as f:
            content = f.read(limit + 1)
    except (OSError, EOFError, zlib.error) as e:
        raise ArchbenchError(f"{path} is not a readable gzip file ({e}): replace it with a good copy") from None
    refuse_inflation(path, len(content), partial=len(content) > limit)
    return content


def _parse(content: bytes, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """64 pixel values 0-16 and a label 0-9 per row; anything else is one line naming the file and row."""
    rows = [line for line in content.decode("ascii", errors="replace").splitlines() if line.strip()]
    values = []
    for number, line in enumerate(rows, start=1):
        fields = line.split(",")
        try:
            row = [int(field) for field in fields]
        except ValueError:
            row = []
        if len(row) != SIDE * SIDE + 1 or min(row[:-1]) < 0 or max(row[:-1]) > MAX_VALUE or row[-1] not in range(10):
            raise ArchbenchError(
                f"row {number} of {path} is not {SIDE * SIDE} pixel values 0-{MAX_VALUE} and a digit label, "
                "so it is not the digits CSV"
            )
        values.append(row)
    if not values:
        raise ArchbenchError(f"{path} holds no images, so it is not the digits CSV")
    table = np.array(values, dtype=np.int64)
    labels = table[:, -1]
    counts = np.bincount(labels, minlength=10)
    if counts.min() < TEST_EVERY:
        fewest = int(counts.argmin())
        raise ArchbenchError(
            f"{path} has {counts[fewest]} images of the digit {fewest}, fewer than {TEST_EVERY}: "
            "too few for a train and a test split"
        )
    return table[:, :-1], labels


def builtin_root(console: Console | None = None) -> Path:
    """The packed digits in the archbench cache, built (once, offline) on first use; rebuilt if damaged."""
    from archbench.data.sources import prepare_arrays

    build = partial(prepare_arrays, DATASET, location=None, console=None)
    return built_once(f"digits-f{FORMAT_VERSION}", "packing the digits", build, console)
