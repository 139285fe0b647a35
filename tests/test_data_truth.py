"""Data that is what it says: splits that are the layout's, images made RGB one way, a manifest whose every
field is covered by its fingerprint and typed, archives checked before they inflate, and no staging folder
of a killed run left behind.

Each test damages a tiny input in an official format, runs the ordinary command or function, and checks
the one-line error and that nothing wrong was written.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_SET as TINY
from PIL import Image
from typer.testing import CliRunner

from archbench.cli import app
from archbench.data import download, resolve, sources, synthetic
from archbench.data.cifar import CIFAR10
from archbench.data.files import remove_abandoned, staged
from archbench.data.imagefolder import read, to_rgb
from archbench.data.packed import FORMAT_VERSION, PACKED_DIR, fingerprint, load_packed
from archbench.data.synthetic import LAYOUT_DIR, wnid
from archbench.data.tinyimagenet import EXTRACTED_DIR, prepare
from archbench.errors import ArchbenchError


def _refused(function, *args, **kwargs) -> str:
    """The one-line message with which ``function(*args, **kwargs)`` is refused."""
    with pytest.raises(ArchbenchError) as info:
        function(*args, **kwargs)
    message = info.value.message
    assert "\n" not in message and str(info.value) == message
    return message


def _snapshot(folder: Path) -> dict[str, bytes | None]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() if p.is_file() else None for p in folder.rglob("*")}


# ----------------------------------------------------------------------------------------------------
# Tiny-ImageNet: the splits are the layout's


def _annotations(layout: Path) -> Path:
    return layout / "val" / "val_annotations.txt"


def _point_first_val_entry_at(layout: Path, name: str) -> None:
    path = _annotations(layout)
    first, *rest = path.read_text().splitlines()
    path.write_text("\n".join(["\t".join([name, *first.split("\t")[1:]]), *rest]) + "\n")


def _train_image(layout: Path) -> Path:
    return sorted((layout / "train" / wnid(0) / "images").iterdir())[0]


@pytest.mark.parametrize("escape", ["absolute", "dot-dot", "link out"])
def test_val_entry_that_leaves_the_images_folder_is_refused_by_name(layout, tmp_path, escape):
    train_image = _train_image(layout)  # a training image, which the test split would then hold too
    name = {
        "absolute": str(train_image),
        "dot-dot": f"../../train/{wnid(0)}/images/{train_image.name}",
        "link out": "linked.JPEG",
    }[escape]
    if escape == "link out":
        (layout / "val" / "images" / name).symlink_to(train_image)
    _point_first_val_entry_at(layout, name)
    message = _refused(prepare, tmp_path / "root", source=layout)
    assert f"line 1 of {_annotations(layout)} names {name!r}, which is not a file in {layout / 'val' / 'images'}" in (
        message
    )
    assert not (tmp_path / "root").exists()


def test_val_image_listed_twice_is_refused(layout, tmp_path):
    path = _annotations(layout)
    lines = path.read_text().splitlines()
    first = lines[0].split("\t")[0]
    path.write_text("\n".join([*lines, lines[0]]) + "\n")
    message = _refused(prepare, tmp_path / "root", source=layout)
    assert f"line {len(lines) + 1} of {path} lists {first} again (first on line 1)" in message
    assert not (tmp_path / "root").exists()


def test_class_folder_that_wnids_does_not_list_is_refused_by_name(layout, tmp_path):
    extra = layout / "train" / "n01234567" / "images"
    extra.mkdir(parents=True)
    shutil.copy(_train_image(layout), extra / "n01234567_0.JPEG")
    message = _refused(prepare, tmp_path / "root", source=layout)
    assert f"{layout / 'train' / 'n01234567'} is a class folder that {layout / 'wnids.txt'} does not list" in message
    assert not (tmp_path / "root").exists()


def test_class_folder_that_is_missing_is_refused_by_name(layout, tmp_path):
    shutil.rmtree(layout / "train" / wnid(1))
    message = _refused(prepare, tmp_path / "root", source=layout)
    assert f"{layout / 'wnids.txt'} lists {wnid(1)}, but {layout / 'train' / wnid(1)} is missing" in message
    assert not (tmp_path / "root").exists()


def test_tiny_imagenet_makes_rgb_as_an_imagefolder_does(layout, tmp_path):
    """A 16-bit grayscale PNG is scaled (PIL's convert would clip it) and an RGBA one composited over black
    (convert would drop the alpha): the same pixels `to_rgb` gives the ImageFolder reader."""
    rng = np.random.default_rng(0)
    images = {
        "I;16": Image.fromarray(rng.integers(0, 65536, (64, 64), dtype=np.uint16)),
        "RGBA": Image.fromarray(rng.integers(0, 256, (64, 64, 4), dtype=np.uint8), "RGBA"),
    }
    folder = layout / "train" / wnid(0) / "images"
    first_two = sorted(folder.iterdir())[:2]
    for path, image in zip(first_two, images.values()):
        path.unlink()
        image.save(path.with_suffix(".png"))
    prepare(tmp_path / "root", source=layout)
    packed = load_packed(tmp_path / "root")
    for row, path in enumerate(first_two):
        with Image.open(path.with_suffix(".png")) as image:
            assert image.mode in images
            np.testing.assert_array_equal(packed.train_images[row], np.asarray(to_rgb(image)))


# ----------------------------------------------------------------------------------------------------
# ImageFolder: every mode made RGB correctly, or refused by name


def _tree_with(tmp_path: Path, image: Image.Image, name: str) -> Path:
    root = tmp_path / "tree"
    for split in ("train", "test"):
        (root / split / "only").mkdir(parents=True)
    image.save(root / "train" / "only" / name)
    Image.new("RGB", image.size).save(root / "test" / "only" / "y.png")
    return root


def test_big_endian_16_bit_tiff_is_scaled_in_its_byte_order(tmp_path):
    values = np.tile(np.array([0, 257, 40000, 65535], dtype=np.uint16), (4, 1))
    tree = _tree_with(tmp_path, Image.frombytes("I;16B", (4, 4), values.astype(">u2").tobytes()), "x.tif")
    with Image.open(tree / "train" / "only" / "x.tif") as opened:
        assert opened.mode == "I;16B"
    np.testing.assert_array_equal(read(tree, image_size=4).train_images[0][0, :, 0], [0, 1, 156, 255])


def test_32_bit_integer_image_beyond_16_bits_is_refused_by_name(tmp_path):
    image = Image.fromarray(np.array([[0, 70000], [5, 6]], dtype=np.int32), "I")
    tree = _tree_with(tmp_path, image, "deep.tif")
    message = _refused(read, tree, image_size=2)
    path = tree / "train" / "only" / "deep.tif"
    assert f"{path} is not a readable image (its 32-bit pixels run from 0 to 70000, beyond 16 bits" in message


def test_32_bit_integer_image_within_16_bits_is_scaled_as_16_bits(tmp_path):
    image = Image.fromarray(np.array([[0, 257], [65535, 514]], dtype=np.int32), "I")
    tree = _tree_with(tmp_path, image, "deep.tif")
    np.testing.assert_array_equal(read(tree, image_size=2).train_images[0][..., 0], [[0, 1], [255, 2]])


# ----------------------------------------------------------------------------------------------------
# the manifest: every field that says what the data is, in the fingerprint; every field of its type


@pytest.fixture(scope="module")
def digits_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("digits")
    sources.prepare("digits", root)
    return root


def _edit(root: Path, refingerprint: bool = False, **fields) -> None:
    """Change manifest.json's fields (with ``refingerprint``, as a packer that was wrong would: the fingerprint
    then matches, and only the other checks can catch it)."""
    path = root / PACKED_DIR / "manifest.json"
    manifest = {**json.loads(path.read_text()), **fields}
    if refingerprint:
        manifest["fingerprint"] = fingerprint(manifest)
    path.write_text(json.dumps(manifest, indent=1))


@pytest.mark.parametrize(
    "fields",
    [{"dataset": "cifar10"}, {"synthetic": True, "synthetic_params": {"seed": 0}}, {"extra": {}}],
    ids=["renamed", "said synthetic", "facts dropped"],
)
def test_an_edited_digits_manifest_is_refused_in_one_line(digits_root, tmp_path, fields):
    root = Path(shutil.copytree(digits_root, tmp_path / "copy"))
    _edit(root, **fields)
    before = _snapshot(root)
    message = _refused(load_packed, root)
    assert f"{root / PACKED_DIR / 'manifest.json'} records the fingerprint" in message
    assert "cifar10" not in message.split("rebuild it with")[1]  # the edited name is not trusted
    assert _snapshot(root) == before


@pytest.mark.parametrize(
    "fields, expected",
    [
        ({"splits": {"train": {"count": "1442"}, "test": {"count": 355}}}, 'splits.train.count as "1442", not int'),
        ({"synthetic": "no"}, 'synthetic as "no", not bool'),
        ({"synthetic": 0}, "synthetic as 0, not bool"),
        ({"skipped": True}, "skipped as true, not int"),
        ({"num_classes": 10.0}, "num_classes as 10.0, not int"),
        ({"classes": ["0", 1]}, 'classes as ["0", 1], not list[str]'),
        (
            {"normalisation": {"mean": "0.5", "std": [0.1] * 3, "of": ""}},
            'normalisation.mean as "0.5", not list[float]',
        ),
        ({"synthetic_params": []}, "synthetic_params as [], not dict | None"),
        ({"source": None}, "source as null, not an object"),
        ({"augmentation": None}, "augmentation as null, not str"),
    ],
)
def test_a_manifest_field_of_the_wrong_type_is_one_line(digits_root, tmp_path, fields, expected):
    root = Path(shutil.copytree(digits_root, tmp_path / "copy"))
    _edit(root, refingerprint=True, **fields)
    message = _refused(load_packed, root)
    assert f"damaged packed data: {root / PACKED_DIR / 'manifest.json'} records {expected}" in message


def test_a_missing_manifest_field_is_named(digits_root, tmp_path):
    root = Path(shutil.copytree(digits_root, tmp_path / "copy"))
    path = root / PACKED_DIR / "manifest.json"
    manifest = json.loads(path.read_text())
    del manifest["arrays"]["test_labels"]["sha256"]
    path.write_text(json.dumps(manifest))
    assert f"{path} lacks the field arrays.test_labels.sha256" in _refused(load_packed, root)


def test_an_older_digits_folder_says_how_to_prepare_it_again(digits_root, tmp_path):
    root = Path(shutil.copytree(digits_root, tmp_path / "copy"))
    _edit(root, format_version=FORMAT_VERSION - 1)
    message = _refused(load_packed, root)
    assert f"is format {FORMAT_VERSION - 1}, and this archbench reads format {FORMAT_VERSION}" in message
    assert message.endswith(f"rebuild it with `archbench data prepare digits --root {root}`")
    sources.prepare("digits", root)
    assert load_packed(root).fingerprint == load_packed(digits_root).fingerprint


def test_an_older_imagefolder_folder_names_its_source_and_size(tmp_path):
    tree = _tree_with(tmp_path, Image.fromarray(np.arange(48, dtype=np.uint8).reshape(4, 4, 3)), "x.png")
    root = tmp_path / "prepared"
    sources.prepare("imagefolder", root, str(tree), image_size=3)
    _edit(root, format_version=FORMAT_VERSION - 1)
    command = f"archbench data prepare imagefolder --source {tree.resolve()} --image-size 3 --root {root}"
    assert _refused(load_packed, root).endswith(f"rebuild it with `{command}`")


# ----------------------------------------------------------------------------------------------------
# archives: how far they inflate, checked before they are unpacked


def _limits_in_message(message: str, archive: Path) -> None:
    assert f"{archive} inflates its " in message
    assert f"beyond the limits of {download.MAX_RATIO} times and {download.MAX_INFLATED_BYTES:,} bytes" in message


def test_zip_bomb_is_refused_before_anything_is_written(tiny_root, tmp_path):
    archive = tmp_path / "tiny-imagenet-200.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        for path in sorted((tiny_root / LAYOUT_DIR).rglob("*")):
            z.write(path, path.relative_to(tiny_root).as_posix())
        z.writestr(f"{LAYOUT_DIR}/val/images/zeros.JPEG", bytes(64 << 20))  # 64 MiB of zeros: about 64 KiB
    message = _refused(prepare, tmp_path / "root", source=archive)
    _limits_in_message(message, archive)
    assert not (tmp_path / "root").exists()


def test_zip_beyond_the_size_limit_is_refused(monkeypatch, tiny_root, tmp_path):
    archive = tmp_path / "t.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for path in sorted((tiny_root / LAYOUT_DIR).rglob("*")):
            z.write(path, path.relative_to(tiny_root).as_posix())
    monkeypatch.setattr(download, "MAX_INFLATED_BYTES", 10_000)
    message = _refused(download.extract_zip, archive, tmp_path / "out")
    assert f"beyond the limits of {download.MAX_RATIO} times and 10,000 bytes" in message
    assert sorted(os.listdir(tmp_path)) == ["t.zip"]


def test_tar_bomb_is_refused_before_its_member_is_read(tmp_path):
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo(f"{CIFAR10.folder}/data_batch_1")
        info.size = 64 << 20
        tar.addfile(info, io.BytesIO(bytes(info.size)))
    message = _refused(sources.prepare, "cifar10", tmp_path / "root", str(archive))
    _limits_in_message(message, archive)
    assert "to at least 67,108,864 (" in message and not (tmp_path / "root").exists()


def test_gzip_bomb_is_refused_before_it_is_parsed(tmp_path):
    source = tmp_path / "digits.csv.gz"
    source.write_bytes(gzip.compress(bytes(64 << 20)))
    message = _refused(sources.prepare, "digits", tmp_path / "root", str(source))
    _limits_in_message(message, source)
    assert not (tmp_path / "root").exists()


# ----------------------------------------------------------------------------------------------------
# staging folders of a killed run


def _kill_inside_staging(dest: Path) -> None:
    """A process that dies (SIGKILL: no cleanup can run) while it builds ``dest`` in a staging folder."""
    code = (
        "import os, signal, sys; from pathlib import Path; from archbench.data.files import staged\n"
        "with staged(Path(sys.argv[1]), 'building') as staging:\n"
        "    (staging / 'half.npy').write_bytes(b'x' * 1000)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    result = subprocess.run([sys.executable, "-c", code, str(dest)], check=False)
    assert result.returncode == -signal.SIGKILL


def _staging(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


SYNTH = ["data", "synth", "--classes", "2", "--train-per-class", "2", "--test-per-class", "1"]


@pytest.mark.parametrize("command", ["synth", "prepare"])
def test_staging_folders_of_a_killed_run_are_removed_by_the_next(tmp_path, command):
    root = tmp_path / "root"
    args = [*SYNTH, "--root", str(root)] if command == "synth" else ["data", "prepare", "digits", "--root", str(root)]
    runner = CliRunner()
    assert runner.invoke(app, args).exit_code == 0
    for name in (PACKED_DIR, LAYOUT_DIR, EXTRACTED_DIR):
        _kill_inside_staging(root / name)
    assert len(_staging(root)) == 3
    result = runner.invoke(app, args)  # reuses the intact set, and clears what the killed runs left
    assert result.exit_code == 0, result.output
    assert _staging(root) == []


def test_the_default_sets_clear_what_a_killed_build_left(monkeypatch, tmp_path):
    cache = tmp_path / "cache"
    monkeypatch.setenv("ARCHBENCH_CACHE", str(cache))
    monkeypatch.setattr(synthetic, "DEFAULT_PARAMS", TINY)
    for name in ("synthetic", "digits"):
        _kill_inside_staging(cache / f"{name}-killed")
        resolve(name)
    assert _staging(cache) == []


def test_a_staging_folder_that_a_living_builder_holds_is_kept(tmp_path):
    with staged(tmp_path / "packed", "building") as staging:
        remove_abandoned(tmp_path)
        assert staging.is_dir()
    assert os.listdir(tmp_path) == ["packed"]
