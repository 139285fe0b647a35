"""CIFAR-10 and CIFAR-100 from the official python-format archives, and their training augmentation.

The archives' pickled batches are read in place by an unpickler that builds only plain containers and
numpy arrays, and every key, type and range is checked; anything else is one line naming the file.
docs/data.md#cifar-10-and-cifar-100 describes the format, the checks and the augmentation's source.
"""

from __future__ import annotations

import io
import pickle
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from torchvision import datasets

from archbench.data.arrays import SourceArrays
from archbench.data.download import download, refuse_inflation
from archbench.data.files import file_digest, reason
from archbench.data.packed import say, unverified
from archbench.errors import ArchbenchError

PADDING = 4  # pixels of zeros on each side before the random crop (He et al. 2016, §4.2)
SIDE = 32
PIXELS = 3 * SIDE * SIDE
BATCH_KEYS = frozenset({"data", "labels", "fine_labels", "coarse_labels", "filenames", "batch_label"})
META_KEYS = frozenset({"label_names", "num_cases_per_batch", "num_vis", "fine_label_names", "coarse_label_names"})
# What a damaged archive raises while it is listed or read: tarfile's own errors, gzip's (an OSError),
# a truncated stream (EOFError) and a broken deflate stream.
DAMAGED_ARCHIVE_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error)


@dataclass(frozen=True)
class Variant:
    """One of the two CIFAR data sets: where its archive is, what it holds and which keys carry what."""

    name: str
    url: str
    md5: str  # of the archive
    folder: str  # the archive's top folder
    train: tuple[str, ...]  # member names of the training batches, in order
    test: str
    meta: str
    member_md5: dict  # member name -> md5 of the extracted file
    labels: str  # the batch key of the labels trained on
    label_names: str  # the meta key naming those classes
    num_classes: int
    coarse_classes: int = 0  # CIFAR-100's superclasses (0: none)


def _variant(name: str, published: type, labels: str, num_classes: int, coarse_classes: int = 0) -> Variant:
    """A CIFAR data set with the archive, members and md5s torchvision publishes for it (``published``)."""
    meta = published.meta
    return Variant(
        name=name,
        url=published.url,
        md5=published.tgz_md5,
        folder=published.base_folder,
        train=tuple(member for member, _ in published.train_list),
        test=published.test_list[0][0],
        meta=meta["filename"],
        member_md5=dict([*published.train_list, *published.test_list, (meta["filename"], meta["md5"])]),
        labels=labels,
        label_names=meta["key"],
        num_classes=num_classes,
        coarse_classes=coarse_classes,
    )


CIFAR10 = _variant("cifar10", datasets.CIFAR10, "labels", 10)
CIFAR100 = _variant("cifar100", datasets.CIFAR100, "fine_labels", 100, coarse_classes=20)
VARIANTS = {variant.name: variant for variant in (CIFAR10, CIFAR100)}


# ----------------------------------------------------------------------------------------------------
# getting the archive


def load(
    variant: Variant, source: str | Path | None, root: Path, console: Console | None = None
) -> tuple[SourceArrays, dict]:
    """`fetch` and `read` the data set, then say in one line if the source is unverified."""
    path, record = fetch(variant, source, root, console)
    arrays = read(variant, path)
    if not record["verified"]:
        differs = (
            f"holds {variant.name} files whose md5 is not the published one"
            if record["kind"] == "folder"
            else f"has {record['checksum']}, not the official {variant.name} md5:{variant.md5}"
        )
        say(console, unverified(record["location"], differs))
    return arrays, record


def read_source(
    name: str, location: str | None, root: Path, *, image_size: int | None, skip_bad: bool, console: Console | None
) -> tuple[SourceArrays, dict]:
    """The reader contract of `archbench.data.sources` for ``name`` (cifar10 or cifar100): `load`."""
    return load(VARIANTS[name], location, root, console)


def fetch(variant: Variant, source: str | Path | None, root: Path, console: Console | None = None) -> tuple[Path, dict]:
    """The archive or folder to read (``source``: None or a URL, downloaded into ``root``; an archive; the
    extracted folder) and the manifest's ``source`` record for it: ``{kind, location, checksum, verified}``."""
    text = str(source) if source is not None else variant.url
    if text.startswith(("http://", "https://")):
        name = Path(text.split("?")[0]).name or Path(variant.url).name
        path = download(text, Path(root) / name, md5=variant.md5 if text == variant.url else None, console=console)
        kind = "url"
    else:
        path = Path(text).expanduser()
        if not path.exists():
            raise ArchbenchError(f"--source {text} is neither an http(s) URL nor an existing archive or folder")
        kind = "folder" if path.is_dir() else "file"
    if kind == "folder":
        path = batches_folder(variant, path)
        digests = {m: file_digest(path / m, "md5") if (path / m).is_file() else None for m in variant.member_md5}
        checksum = "md5:" + ",".join(f"{member}={digest}" for member, digest in sorted(digests.items()))
        verified = digests == variant.member_md5
    else:
        md5 = file_digest(path, "md5")
        checksum, verified = f"md5:{md5}", md5 == variant.md5
    location = text if kind == "url" else str(path)
    return path, {"kind": kind, "location": location, "checksum": checksum, "verified": verified}


def batches_folder(variant: Variant, folder: Path) -> Path:
    """The folder holding the batches: ``folder`` itself or its ``cifar-10-batches-py``/``cifar-100-python``."""
    folder = Path(folder)
    if (folder / variant.meta).is_file():
        return folder
    if (folder / variant.folder / variant.meta).is_file():
        return folder / variant.folder
    raise ArchbenchError(
        f"{folder / variant.folder / variant.meta} is missing, so {folder} is not a {variant.name} folder"
    )


# ----------------------------------------------------------------------------------------------------
# reading


def read(variant: Variant, path: Path) -> SourceArrays:
    """The train and test splits of the archive (or extracted folder) at ``path``; one line naming the file
    at fault for anything that is not the official format."""
    path = Path(path)
    members = _folder_members(variant, path) if path.is_dir() else _archive_members(variant, path)
    meta = _checked_meta(variant, members[variant.meta])
    names = meta[variant.label_names]
    files = {"train": variant.train, "test": (variant.test,)}
    splits = {split: [_checked_batch(variant, members[m], len(names)) for m in files[split]] for split in files}
    images = {split: np.concatenate([b.images for b in batches]) for split, batches in splits.items()}
    labels = {split: np.concatenate([b.labels for b in batches]) for split, batches in splits.items()}
    for split in splits:
        if not len(labels[split]):
            where = ", ".join(members[m].where for m in files[split])
            raise ArchbenchError(
                f"{where} hold{'s' if len(files[split]) == 1 else ''} no images: the {split} split is empty"
            )
    if (untrained := np.flatnonzero(np.bincount(labels["train"], minlength=len(names)) == 0)).size:
        raise ArchbenchError(
            f"{path}: the training batches hold no image of class {names[untrained[0]]}, so a run could not learn it"
        )
    extra = {}
    if variant.coarse_classes:
        coarse = {split: np.concatenate([b.coarse for b in batches]) for split, batches in splits.items()}
        extra = {
            "coarse_classes": meta["coarse_label_names"],
            "coarse_of_class": _coarse_of_class(variant, path, labels, coarse, len(names)),
        }
    return SourceArrays(
        classes=list(names),
        train_images=images["train"],
        train_labels=labels["train"],
        test_images=images["test"],
        test_labels=labels["test"],
        extra=extra,
    )


@dataclass
class _Member:
    where: str  # "ARCHIVE:MEMBER" or the file's path, for messages
    data: bytes


def _archive_members(variant: Variant, archive: Path) -> dict[str, _Member]:
    """The bytes of the archive's batch and meta members (read in place, nothing extracted)."""
    wanted = {f"{variant.folder}/{name}": name for name in (*variant.train, variant.test, variant.meta)}
    members: dict[str, _Member] = {}
    inflated = 0
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for info in tar:
                inflated += info.size
                refuse_inflation(archive, inflated, partial=True)  # before the member is read or skipped
                name = wanted.get(info.name.removeprefix("./"))
                if name is None:
                    continue
                if not info.isfile():
                    raise ArchbenchError(f"{archive} holds {info.name} as a link or folder, not a file")
                with tar.extractfile(info) as f:
                    members[name] = _Member(f"{archive}:{info.name}", f.read())
    except DAMAGED_ARCHIVE_ERRORS as e:
        raise ArchbenchError(f"{archive} is not a readable {variant.name} archive ({reason(e)})") from None
    missing = [member for member in wanted if wanted[member] not in members]
    if missing:
        raise ArchbenchError(
            f"{archive} lacks {missing[0]}, so it is not the official {Path(variant.url).name} (or is truncated)"
        )
    return members


def _folder_members(variant: Variant, folder: Path) -> dict[str, _Member]:
    members = {}
    for name in (*variant.train, variant.test, variant.meta):
        path = folder / name
        if not path.is_file():
            raise ArchbenchError(f"{path} is missing, so {folder} is not a complete {variant.name} folder")
        members[name] = _Member(str(path), path.read_bytes())
    return members


class _ArraysOnly(pickle.Unpickler):
    """Unpickles plain containers, strings, numbers and numpy arrays; refuses every other global by name
    (``find_class`` is a pickle's only way to a callable, so nothing else is even imported)."""

    def find_class(self, module: str, name: str):
        allowed = _ARRAY_GLOBALS.get((module, name))
        if allowed is None:
            raise pickle.UnpicklingError(f"it names {module}.{name}, which a CIFAR batch never holds")
        return allowed


def _reconstruct():
    """numpy's array unpickling helper, from where this numpy keeps it (``numpy._core`` since numpy 2)."""
    return (getattr(np, "_core", None) or np.core).multiarray._reconstruct


# The official batches were pickled by Python 2 with numpy 1.x, which named the helper numpy.core.multiarray.
_ARRAY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct(),
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct(),
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


def _unpickle(member: _Member, kind: str) -> dict:
    """The member's dict with string keys; a pickle that is not a plain dict of known keys is refused."""
    try:
        # latin1 turns Python 2 str (keys, names, and the array bytes) into str, as numpy expects
        value = _ArraysOnly(io.BytesIO(member.data), encoding="latin1").load()
    except Exception as e:  # a malformed pickle can raise almost anything; none of it is ours to show
        raise ArchbenchError(f"{member.where} is not a CIFAR {kind} ({reason(e)})") from None
    if not isinstance(value, dict):
        raise ArchbenchError(f"{member.where} is not a CIFAR {kind} (it holds a {type(value).__name__}, not a dict)")
    value = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in value.items()}
    known = META_KEYS if kind == "meta file" else BATCH_KEYS
    unknown = sorted(str(k) for k in value if k not in known)
    if unknown:
        raise ArchbenchError(f"{member.where} is not a CIFAR {kind} (it holds the unknown key {unknown[0]!r})")
    return value


def _checked_meta(variant: Variant, member: _Member) -> dict:
    meta = _unpickle(member, "meta file")
    keys = [variant.label_names] + (["coarse_label_names"] if variant.coarse_classes else [])
    expected = [variant.num_classes] + ([variant.coarse_classes] if variant.coarse_classes else [])
    for key, count in zip(keys, expected):
        names = meta.get(key)
        if names is None:
            raise ArchbenchError(f"{member.where} lacks {key!r}, so it is not the {variant.name} meta file")
        if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
            raise ArchbenchError(f"{member.where}: {key!r} is not a list of class names")
        if len(names) != count:
            raise ArchbenchError(f"{member.where} names {len(names)} classes in {key!r}, not {variant.name}'s {count}")
        if len(set(names)) != len(names):
            raise ArchbenchError(f"{member.where} names some classes in {key!r} more than once")
    return meta


@dataclass
class _Batch:
    images: np.ndarray  # uint8 N x 32 x 32 x 3
    labels: np.ndarray  # int64 N
    coarse: np.ndarray | None


def _checked_batch(variant: Variant, member: _Member, num_classes: int) -> _Batch:
    batch = _unpickle(member, "batch")
    data = batch.get("data")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != PIXELS:
        found = f"{data.dtype} {list(data.shape)}" if isinstance(data, np.ndarray) else type(data).__name__
        raise ArchbenchError(f"{member.where}: 'data' is {found}, not uint8 N x {PIXELS}")
    labels = _checked_labels(member, batch, variant.labels, len(data), num_classes)
    coarse = None
    if variant.coarse_classes:
        coarse = _checked_labels(member, batch, "coarse_labels", len(data), variant.coarse_classes)
    images = data.reshape(-1, 3, SIDE, SIDE).transpose(0, 2, 3, 1)
    return _Batch(np.ascontiguousarray(images), labels, coarse)


def _checked_labels(member: _Member, batch: dict, key: str, count: int, num_classes: int) -> np.ndarray:
    values = batch.get(key)
    if values is None:
        raise ArchbenchError(f"{member.where} lacks {key!r}, so it is not a CIFAR batch of this data set")
    if not isinstance(values, list | np.ndarray) or not all(isinstance(v, int | np.integer) for v in values):
        raise ArchbenchError(f"{member.where}: {key!r} is not a list of integer labels")
    labels = np.asarray(values, dtype=np.int64).reshape(-1)
    if len(labels) != count:
        raise ArchbenchError(f"{member.where} holds {count} images but {len(labels)} {key}")
    outside = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if len(outside):
        row = int(outside[0])
        raise ArchbenchError(f"{member.where}: {key}[{row}] is {labels[row]}, outside the {num_classes} classes")
    return labels


def _coarse_of_class(
    variant: Variant, path: Path, fine: dict[str, np.ndarray], coarse: dict[str, np.ndarray], num_classes: int
) -> list[int | None]:
    """Each fine class's coarse class (None for one no image shows); a fine class seen with two is refused."""
    pairs = np.unique(np.stack([np.concatenate(list(fine.values())), np.concatenate(list(coarse.values()))]), axis=1)
    of_class: list[int | None] = [None] * num_classes
    for f, c in pairs.T.tolist():
        if of_class[f] is not None:
            raise ArchbenchError(
                f"{path} labels fine class {f} with coarse classes {of_class[f]} and {c}: not the {variant.name} data"
            )
        of_class[f] = c
    return of_class


# ----------------------------------------------------------------------------------------------------
# augmentation


def pad_crop_flip(
    x: torch.Tensor, size: int, offsets: torch.Tensor | None = None, flips: torch.Tensor | None = None
) -> torch.Tensor:
    """uint8 B x H x W x C -> B x size x size x C: zero-pad by `PADDING`, crop at ``offsets`` (B x 2: top, left
    in the padded image; default: the centre), mirror where ``flips``; one gather on ``x``'s device."""
    batch, height, width, _ = x.shape
    if offsets is None:  # rounded as torchvision's center_crop rounds
        centre = [int(round(crop_room(side, size) / 2.0)) for side in (height, width)]
        offsets = torch.tensor(centre).expand(batch, 2)
    offsets = offsets.to(x.device)
    padded = F.pad(x, (0, 0, PADDING, PADDING, PADDING, PADDING))
    k = torch.arange(size, device=x.device)
    rows = offsets[:, :1] + k  # B x size
    cols = offsets[:, 1:] + k
    if flips is not None:
        cols = torch.where(flips.to(x.device).view(-1, 1), cols.flip(1), cols)
    index = torch.arange(batch, device=x.device).view(-1, 1, 1)
    return padded[index, rows[:, :, None], cols[:, None, :]]


def crop_room(height: int, size: int) -> int:
    """The largest crop offset: a ``size`` crop fits at offsets 0..room of the padded image."""
    room = height + 2 * PADDING - size
    if room < 0:
        raise ArchbenchError(
            f"a {size}x{size} crop does not fit in {height}-pixel images padded by {PADDING}: "
            f"use --image-size {height + 2 * PADDING} or less"
        )
    return room
