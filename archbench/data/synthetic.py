"""A synthetic twin of Tiny-ImageNet-200: the same files on disk, generated classes, fully deterministic.

It exists so that every test and smoke run works offline on a laptop, through the same code path as the
real data: `make_synthetic` writes JPEGs in the exact Tiny-ImageNet layout (``wnids.txt`` unsorted,
``words.txt`` with more wnids than classes, ``train/<wnid>/images/`` with ``<wnid>_boxes.txt``,
``val/images/`` labelled by ``val/val_annotations.txt``, an unlabelled ``test/images/``, about one image in
29 saved as grayscale) and then calls `archbench.data.tinyimagenet.prepare` on them.

What the classes look like. Each 64x64 image shows one main object on a cluttered background. A class
fixes three properties of that object:

- its shape, cycling fastest over classes: disc, square, triangle, ring, cross, diamond;
- its texture, the next digit: solid, striped, checked, dotted (classes 24-47 repeat these combinations
  with a finer texture, later ones differ by hue only);
- its base hue, spread round the colour wheel by the golden ratio, so that neighbouring classes get
  distant hues but many classes have similar ones.

Every image draws, independently: the object's position, radius (10-20 px) and rotation; a hue jitter
(s.d. 0.04), saturation and brightness; the texture's phase and its dark tone; a background of a random
low-saturation colour with smooth colour blobs; in half the images a smaller distractor object of a
random shape and any hue; Gaussian pixel noise; and JPEG compression at quality 90. Colour alone
therefore separates the classes only in part (grayscale images lose it entirely), so a network has to
learn shape and texture as well: a small CNN's accuracy climbs over several epochs instead of saturating
in the first.

The default set behind ``--data synthetic`` (10 classes, 100 train and 20 val images each, seed 0) is
generated once into ``$ARCHBENCH_CACHE`` (default ``~/.cache/archbench``) and shared by later runs.
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

from archbench.data.files import cache_dir, read_text, remove_abandoned, replace_dir, require_folder, staged
from archbench.data.tinyimagenet import IMAGE_SIZE, PACKED_DIR, SYNTHETIC_MARKER, check_cache, prepare
from archbench.errors import ArchbenchError

GENERATOR_VERSION = 1  # bump when the pictures change, so cached default sets are regenerated
LAYOUT_DIR = "tiny-imagenet-200"  # the folder name inside the official zip
DEFAULT_PARAMS = {"classes": 10, "train_per_class": 100, "val_per_class": 20, "seed": 0}
SHAPES = ("disc", "square", "triangle", "ring", "cross", "diamond")
TEXTURES = ("solid", "striped", "checked", "dotted")
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
    """Shape, texture, texture frequency and base hue of class ``c`` (see the module docstring)."""
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


def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    r2 = u * u + v * v
    if shape == "disc":
        return r2 <= 1.0
    if shape == "ring":
        return (r2 <= 1.0) & (r2 >= 0.3)
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.8
    if shape == "diamond":
        return np.abs(u) + np.abs(v) <= 1.0
    if shape == "cross":
        return ((np.abs(u) <= 0.3) & (np.abs(v) <= 1.0)) | ((np.abs(v) <= 0.3) & (np.abs(u) <= 1.0))
    if shape == "triangle":  # equilateral, inscribed in the unit circle
        return (v <= 0.5) & (0.866 * u - 0.5 * v <= 0.5) & (-0.866 * u - 0.5 * v <= 0.5)
    raise ValueError(f"unknown shape {shape!r}")


def _texture(texture: str, u: np.ndarray, v: np.ndarray, frequency: float, phase: float) -> np.ndarray:
    """1 where the object shows its colour, 0 where it shows its dark tone."""
    a, b = np.sin(np.pi * frequency * u + phase) > 0, np.sin(np.pi * frequency * v + phase) > 0
    if texture == "solid":
        return np.ones_like(u, dtype=bool)
    if texture == "striped":
        return a
    if texture == "checked":
        return a ^ b
    if texture == "dotted":
        return np.cos(np.pi * frequency * u + phase) + np.cos(np.pi * frequency * v + phase) < 0.9
    raise ValueError(f"unknown texture {texture!r}")


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
        _draw(canvas, _shape_mask(SHAPES[rng.integers(len(SHAPES))], u, v), solid, _rgb(rng.random(), 0.8, 0.9), 1.0)
    u, v = _object_frame(*rng.uniform(16, 48, 2), rng.uniform(10, 20), rng.uniform(0, 2 * np.pi))
    mask = _shape_mask(style["shape"], u, v)
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
    if console is not None:
        console.print(f"writing synthetic JPEGs into {folder}", highlight=False, soft_wrap=True)
    with staged(folder, "writing") as staging:
        _write_layout_files(staging, params)
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


def _write_layout_files(folder: Path, params: dict) -> None:
    jobs = _image_jobs(folder, params)
    everything = [job for split in jobs.values() for job in split]
    for directory in {job.path.parent for job in everything}:
        directory.mkdir(parents=True, exist_ok=True)
    grayscale = [i % GRAYSCALE_EVERY == 3 for i in range(len(everything))]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        boxes = dict(zip(everything, pool.map(_write_image, everything, grayscale)))
    _write_text_files(folder, params, jobs, boxes)


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
    """Write (unless already there) and prepare a synthetic set under ``root``; return its manifest.

    The JPEGs go to ``root/tiny-imagenet-200/`` and the packed cache to ``root/packed/``, exactly where
    `archbench data prepare` puts the real set, so ``--data ROOT`` works for both.
    """
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
    """Root of the default synthetic set, generated on first use and shared by every later run.

    A set that fails `check_cache` (damaged, or of another format version) is generated again.
    Concurrent first uses each build in a private folder and rename it into place; a rename that finds
    the place taken by an intact set simply discards its own copy.
    """
    params = DEFAULT_PARAMS
    final = cache_dir() / (
        f"synthetic-c{params['classes']}-t{params['train_per_class']}-v{params['val_per_class']}"
        f"-s{params['seed']}-g{GENERATOR_VERSION}"
    )
    remove_abandoned(cache_dir())
    if check_cache(final / PACKED_DIR)[0] is not None:
        return final
    if console is not None:
        console.print(f"generating the default synthetic set (once) in {final}", highlight=False, soft_wrap=True)
    with staged(final, "building", install=_install_unless_intact) as staging:
        make_synthetic(staging, **params)
    return final


def _install_unless_intact(staging: Path, final: Path) -> None:
    """Rename ``staging`` to ``final``, unless another process has just put an intact set there."""
    try:
        os.rename(staging, final)
    except OSError:  # another process got there first, or a damaged set sits there
        if check_cache(final / PACKED_DIR)[0] is None:
            replace_dir(staging, final)
