"""A synthetic twin of Tiny-ImageNet-200: the same files on disk, generated classes, fully deterministic.

It lets every test and smoke run work offline through the same code path as the real data:
`make_synthetic` writes JPEGs in the exact Tiny-ImageNet layout and then calls
`archbench.data.tinyimagenet.prepare` on them. docs/data.md#the-synthetic-set says what the classes look
like and why.
"""

from __future__ import annotations

import colorsys
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image
from rich.console import Console

from archbench.data.files import read_text, remove_abandoned, require_folder, staged
from archbench.data.packed import built_once, say
from archbench.data.tinyimagenet import IMAGE_SIZE, SYNTHETIC_MARKER, prepare
from archbench.errors import ArchbenchError

GENERATOR_VERSION = 1  # bump when the pictures change, so cached default sets are regenerated
LAYOUT_DIR = "tiny-imagenet-200"  # the folder name inside the official zip
DEFAULT_PARAMS = {"classes": 10, "train_per_class": 100, "val_per_class": 20, "seed": 0}
# Each shape's mask over the object's frame (u, v), in units of its radius.
_SHAPES = {
    "disc": lambda u, v: u * u + v * v <= 1.0,
    "square": lambda u, v: np.maximum(np.abs(u), np.abs(v)) <= 0.8,
    # equilateral, inscribed in the unit circle
    "triangle": lambda u, v: (v <= 0.5) & (0.866 * u - 0.5 * v <= 0.5) & (-0.866 * u - 0.5 * v <= 0.5),
    "ring": lambda u, v: (u * u + v * v <= 1.0) & (u * u + v * v >= 0.3),
    "cross": lambda u, v: ((np.abs(u) <= 0.3) & (np.abs(v) <= 1.0)) | ((np.abs(v) <= 0.3) & (np.abs(u) <= 1.0)),
    "diamond": lambda u, v: np.abs(u) + np.abs(v) <= 1.0,
}
# Each texture: True where the object shows its colour, False where it shows its dark tone; ``a`` and ``b`` are
# the phases along u and v, in radians.
_TEXTURES = {
    "solid": lambda a, b: np.ones_like(a, dtype=bool),
    "striped": lambda a, b: np.sin(a) > 0,
    "checked": lambda a, b: (np.sin(a) > 0) ^ (np.sin(b) > 0),
    "dotted": lambda a, b: np.cos(a) + np.cos(b) < 0.9,
}
SHAPES, TEXTURES = tuple(_SHAPES), tuple(_TEXTURES)
GOLDEN = 0.6180339887498949
GRAYSCALE_EVERY = 29  # one image in 29 is stored as grayscale, like a sprinkling of the real set's
WNID_BASE = 99_000_000  # synthetic wnids n99000000, n99000001, ...: never a real ImageNet wnid

_Y, _X = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32) + 0.5  # pixel centres


def _interpolation_matrix(points: int) -> np.ndarray:
    """IMAGE_SIZE x points linear-interpolation weights: smooth backgrounds from a few control points."""
    position = np.linspace(0, points - 1, IMAGE_SIZE)
    return np.maximum(0.0, 1.0 - np.abs(position[:, None] - np.arange(points)[None, :])).astype(np.float32)


_BLOBS = _interpolation_matrix(4)


# ----------------------------------------------------------------------------------------------------
# the classes


def class_style(c: int) -> dict:
    """Shape, texture, texture frequency and base hue of class ``c`` (docs/data.md#the-synthetic-set)."""
    combination = c // len(SHAPES)
    return {
        "shape": SHAPES[c % len(SHAPES)],
        "texture": TEXTURES[combination % len(TEXTURES)],
        "frequency": 2.5 if (combination // len(TEXTURES)) % 2 == 0 else 4.0,
        "hue": (c * GOLDEN) % 1.0,
    }


def class_name(c: int) -> str:
    style = class_style(c)
    fine = " (fine)" if style["frequency"] > 2.5 and style["texture"] != "solid" else ""
    return f"{style['texture']}{fine} {style['shape']}, hue {style['hue']:.2f}"


def wnid(c: int) -> str:
    return f"n{WNID_BASE + c:08d}"


# ----------------------------------------------------------------------------------------------------
# drawing one image


def _object_frame(cx: float, cy: float, radius: float, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates in the object's rotated frame, in units of its radius."""
    dx, dy = _X - cx, _Y - cy
    cos, sin = np.cos(angle), np.sin(angle)
    return (dx * cos + dy * sin) / radius, (-dx * sin + dy * cos) / radius


def _texture(texture: str, u: np.ndarray, v: np.ndarray, frequency: float, phase: float) -> np.ndarray:
    return _TEXTURES[texture](np.pi * frequency * u + phase, np.pi * frequency * v + phase)


def _rgb(hue: float, saturation: float, value: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(hue % 1.0, saturation, value), dtype=np.float32)


def _background(rng: np.random.Generator) -> np.ndarray:
    base = _rgb(rng.random(), rng.uniform(0.0, 0.4), rng.uniform(0.25, 0.85))
    blobs = np.einsum("ia,abc,jb->ijc", _BLOBS, rng.normal(0.0, 0.15, (4, 4, 3)).astype(np.float32), _BLOBS)
    return base + blobs


def _draw(canvas: np.ndarray, mask: np.ndarray, texture: np.ndarray, colour: np.ndarray, dark: float) -> None:
    canvas[mask] = np.where(texture[mask][:, None], colour, colour * dark)


def render(c: int, rng: np.random.Generator) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """One RGB uint8 image of class ``c`` and the main object's box (x0, y0, x1, y1)."""
    style = class_style(c)
    canvas = _background(rng)
    if rng.random() < 0.5:  # a distractor, drawn first so that the class object covers it
        u, v = _object_frame(*rng.uniform(6, 58, 2), rng.uniform(4, 8), rng.uniform(0, 2 * np.pi))
        solid = np.ones_like(u, dtype=bool)
        _draw(canvas, _SHAPES[SHAPES[rng.integers(len(SHAPES))]](u, v), solid, _rgb(rng.random(), 0.8, 0.9), 1.0)
    u, v = _object_frame(*rng.uniform(16, 48, 2), rng.uniform(10, 20), rng.uniform(0, 2 * np.pi))
    mask = _SHAPES[style["shape"]](u, v)
    colour = _rgb(style["hue"] + rng.normal(0, 0.04), rng.uniform(0.55, 1.0), rng.uniform(0.6, 1.0))
    texture = _texture(style["texture"], u, v, style["frequency"], rng.uniform(0, 2 * np.pi))
    _draw(canvas, mask, texture, colour, rng.uniform(0.2, 0.45))
    canvas += rng.normal(0, rng.uniform(0.02, 0.07), canvas.shape).astype(np.float32)
    pixels = np.clip(canvas * 255 + 0.5, 0, 255).astype(np.uint8)
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:  # the object can be all but invisible (a thin ring at the edge): box the whole image
        return pixels, (0, 0, IMAGE_SIZE - 1, IMAGE_SIZE - 1)
    return pixels, (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()))


def _write_image(job: ImageJob, grayscale: bool) -> tuple[int, int, int, int]:
    pixels, box = render(job.label, np.random.default_rng(job.key))
    image = Image.fromarray(pixels)
    (image.convert("L") if grayscale else image).save(job.path, "JPEG", quality=90)
    return box


# ----------------------------------------------------------------------------------------------------
# the layout


def synthetic_params(classes: int, train_per_class: int, val_per_class: int, seed: int) -> dict:
    if classes < 2:
        raise ArchbenchError(f"a synthetic dataset needs at least 2 classes, not {classes}")
    if train_per_class < 1 or val_per_class < 1:
        raise ArchbenchError("a synthetic dataset needs at least 1 train and 1 val image per class")
    return {
        "classes": classes,
        "train_per_class": train_per_class,
        "val_per_class": val_per_class,
        "seed": seed,
        "generator_version": GENERATOR_VERSION,
    }


def write_layout(folder: Path, params: dict, console: Console | None = None) -> Path:
    """Write the JPEG layout for ``params`` into ``folder`` (built beside it, then renamed in)."""
    folder = Path(folder)
    say(console, f"writing synthetic JPEGs into {folder}")
    with staged(folder, "writing") as staging:
        jobs = _image_jobs(staging, params)
        everything = [job for split in jobs.values() for job in split]
        for directory in {job.path.parent for job in everything}:
            directory.mkdir(parents=True, exist_ok=True)
        grayscale = [i % GRAYSCALE_EVERY == 3 for i in range(len(everything))]
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            boxes = dict(zip(everything, pool.map(_write_image, everything, grayscale)))
        _write_text_files(staging, params, jobs, boxes)
    return folder


class ImageJob(NamedTuple):
    path: Path
    label: int
    key: tuple[int, ...]  # seeds this image's own generator, so the pixels do not depend on thread order


def _image_jobs(folder: Path, params: dict) -> dict[str, list[ImageJob]]:
    """Every image to draw, per split; val and test classes are shuffled, as in the real set."""
    n, seed = params["classes"], params["seed"]
    train = [
        ImageJob(folder / "train" / wnid(c) / "images" / f"{wnid(c)}_{i}.JPEG", c, (seed, 0, c, i))
        for c in range(n)
        for i in range(params["train_per_class"])
    ]
    val_labels = np.random.default_rng([seed, 1]).permutation(np.repeat(np.arange(n), params["val_per_class"]))
    val = [
        ImageJob(folder / "val" / "images" / f"val_{k}.JPEG", int(c), (seed, 1, k)) for k, c in enumerate(val_labels)
    ]
    test_labels = np.random.default_rng([seed, 2]).integers(0, n, len(val))  # unlabelled on disk
    test = [
        ImageJob(folder / "test" / "images" / f"test_{k}.JPEG", int(c), (seed, 2, k)) for k, c in enumerate(test_labels)
    ]
    return {"train": train, "val": val, "test": test}


def _write_text_files(folder: Path, params: dict, jobs: dict[str, list[ImageJob]], boxes: dict) -> None:
    """wnids.txt (unsorted), words.txt (more wnids than classes), the box files and the val labels."""
    n = params["classes"]
    for c in range(n):
        rows = [_tsv(job.path.name, *boxes[job]) for job in jobs["train"] if job.label == c]
        _write_lines(folder / "train" / wnid(c) / f"{wnid(c)}_boxes.txt", rows)
    val_rows = [_tsv(job.path.name, wnid(job.label), *boxes[job]) for job in jobs["val"]]
    _write_lines(folder / "val" / "val_annotations.txt", val_rows)
    order = np.random.default_rng([params["seed"], 3]).permutation(n)
    _write_lines(folder / "wnids.txt", [wnid(int(c)) for c in order])
    unused = [(f"n{WNID_BASE - k:08d}", "unused synthetic label") for k in range(1, 6)]
    words = sorted([(wnid(c), class_name(c)) for c in range(n)] + unused)
    _write_lines(folder / "words.txt", [_tsv(w, name) for w, name in words])
    (folder / SYNTHETIC_MARKER).write_text(json.dumps(params, indent=1) + "\n", encoding="utf-8")


def _tsv(*fields) -> str:
    return "\t".join(str(f) for f in fields)


def _write_lines(path: Path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def _written_params(folder: Path) -> dict | None:
    try:
        return json.loads(read_text(folder / SYNTHETIC_MARKER))
    except (OSError, ValueError, ArchbenchError):
        return None


def make_synthetic(
    root: Path | str,
    classes: int = 10,
    train_per_class: int = 100,
    val_per_class: int = 20,
    seed: int = 0,
    console: Console | None = None,
) -> dict:
    """Write (unless already there) and prepare a synthetic set under ``root``, where `archbench data prepare`
    puts the real one (``root/tiny-imagenet-200/``, ``root/packed/``); return its manifest."""
    params = synthetic_params(classes, train_per_class, val_per_class, seed)
    root = Path(root)
    require_folder(root, "--root")
    remove_abandoned(root)  # what an interrupted `data synth` left
    layout = root / LAYOUT_DIR
    if _written_params(layout) != params:
        write_layout(layout, params, console)
    return prepare(root, source=layout, console=console)


# ----------------------------------------------------------------------------------------------------
# the shared default set


def default_synthetic(console: Console | None = None) -> Path:
    """Root of the default synthetic set, generated on first use and shared by every later run."""
    params = DEFAULT_PARAMS
    name = (
        f"synthetic-c{params['classes']}-t{params['train_per_class']}-v{params['val_per_class']}"
        f"-s{params['seed']}-g{GENERATOR_VERSION}"
    )
    return built_once(
        name, "generating the default synthetic set", lambda staging: make_synthetic(staging, **params), console
    )
