"""ImageFolder trees: labels and pixels against torchvision's ImageFolder, the RGB conversions (grayscale,
palette, alpha, 16-bit), the default size, and each kind of bad tree refused with one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from torchvision import transforms as T
from torchvision.datasets import ImageFolder

from archbench.data.imagefolder import read, read_imagefolder
from archbench.errors import ArchbenchError


def _noise(rng, height: int, width: int, channels: int = 3) -> np.ndarray:
    shape = (height, width, channels) if channels > 1 else (height, width)
    return rng.integers(0, 256, shape, dtype=np.uint8)


def _save(path, image: Image.Image, **kwargs) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)


@pytest.fixture
def tree(tmp_path):
    """Two classes; RGB PNG and JPEG, grayscale and palette images of several sizes; train/ and val/."""
    rng = np.random.default_rng(0)
    root = tmp_path / "tree"
    sizes = {"a.png": (30, 40), "b.jpg": (48, 36), "c.png": (36, 36), "d.png": (50, 34)}
    for split in ("train", "val"):
        for name in ("cat", "dog"):
            for i, (file, (h, w)) in enumerate(sizes.items()):
                if split == "val" and i > 1:
                    continue
                path = root / split / name / file
                if i == 2:  # grayscale
                    _save(path, Image.fromarray(_noise(rng, h, w, 1), "L"))
                elif i == 3:  # palette, no transparency
                    _save(path, Image.fromarray(_noise(rng, h, w)).quantize(16))
                else:
                    _save(path, Image.fromarray(_noise(rng, h, w)), **({"quality": 90} if file.endswith("jpg") else {}))
    (root / "train" / "cat" / "notes.txt").write_text("not an image: ignored, as torchvision ignores it")
    return root


def _one_line(info: pytest.ExceptionInfo) -> str:
    message = str(info.value)
    assert "\n" not in message
    return message


def test_labels_and_pixels_match_torchvision_imagefolder(tree):
    arrays = read(tree, image_size=24)
    transform = T.Compose([T.Resize(24), T.CenterCrop(24)])
    for split, folder in (("train", "train"), ("test", "val")):
        reference = ImageFolder(tree / folder, transform=transform)
        assert arrays.classes == reference.classes == ["cat", "dog"]
        np.testing.assert_array_equal(getattr(arrays, f"{split}_labels"), reference.targets)
        expected = np.stack([np.asarray(image) for image, _ in reference])
        np.testing.assert_array_equal(getattr(arrays, f"{split}_images"), expected)
    assert arrays.train_images.shape == (8, 24, 24, 3) and arrays.test_images.shape == (4, 24, 24, 3)
    assert arrays.extra["test_folder"] == "val" and arrays.repairs["skipped_files"] == []


def test_default_size_is_the_median_shorter_side_of_the_training_images(tree):
    arrays = read(tree)
    shorter = [30, 36, 36, 34] * 2  # a.png 30x40, b.jpg 48x36, c.png 36x36, d.png 50x34, in both classes
    assert arrays.extra["image_size"] == int(np.median(shorter)) == 35
    assert arrays.train_images.shape[1:] == (35, 35, 3)
    assert "median" in arrays.extra["image_size_from"]


def test_test_folder_wins_over_val(tree, tmp_path):
    for name in ("cat", "dog"):
        _save(tree / "test" / name / "x.png", Image.new("RGB", (8, 8), (1, 2, 3)))
    arrays = read(tree, image_size=8)
    assert arrays.extra["test_folder"] == "test" and len(arrays.test_labels) == 2
    assert (arrays.test_images == np.array([1, 2, 3], np.uint8)).all()


# ------------------------------------------------------------------------------------------ conversions


def _single(tmp_path, image: Image.Image, size: int, **save) -> np.ndarray:
    """The one training image of a one-class tree, as read at ``size``."""
    root = tmp_path / "one"
    _save(root / "train" / "only" / "x.png", image, **save)
    _save(root / "test" / "only" / "y.png", Image.new("RGB", (size, size)))
    return read(root, image_size=size).train_images[0]


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257, 1000, 32768], [40000, 65278, 65535, 128]], dtype=np.uint16)
    values = np.tile(values, (2, 1))  # 4 x 4
    path = tmp_path / "sixteen.png"
    Image.fromarray(values).save(path)
    with Image.open(path) as opened:
        assert opened.mode in ("I;16", "I")  # what PIL makes of a 16-bit PNG: the case under test
        assert np.asarray(opened.convert("RGB"))[0, 1, 0] == 255  # PIL's own convert clips 257 to 255
    pixels = _single(tmp_path, Image.open(path), 4)
    expected = np.round(values / 257).astype(np.uint8)
    np.testing.assert_array_equal(pixels, np.repeat(expected[..., None], 3, axis=2))


def test_alpha_is_composited_over_black(tmp_path):
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (200, 100, 50, 255)  # opaque: unchanged
    rgba[0, 1] = (200, 100, 50, 0)  # transparent: black, whatever colour it hides
    rgba[1, 0] = (200, 100, 50, 128)  # half: the colour scaled by 128/255
    rgba[1, 1] = (255, 255, 255, 51)
    pixels = _single(tmp_path, Image.fromarray(rgba, "RGBA"), 2).astype(int)
    assert pixels[0, 0].tolist() == [200, 100, 50]
    assert pixels[0, 1].tolist() == [0, 0, 0]
    assert np.abs(pixels[1, 0] - np.array([200, 100, 50]) * 128 / 255).max() <= 1
    assert np.abs(pixels[1, 1] - 51).max() <= 1


def test_grayscale_with_alpha_and_palette_with_a_transparent_index(tmp_path):
    alpha = Image.new("L", (2, 2), 255)
    alpha.putpixel((0, 0), 0)
    pixels = _single(tmp_path / "la", Image.merge("LA", [Image.new("L", (2, 2), 90), alpha]), 2)
    assert pixels[0, 0].tolist() == [0, 0, 0]  # transparent gray: black
    assert pixels[1, 1].tolist() == [90, 90, 90]
    palette = Image.new("P", (2, 2), 1)
    palette.putpalette([10, 20, 30, 40, 50, 60] + [0] * 762)
    palette.putpixel((0, 0), 0)
    pixels = _single(tmp_path / "p", palette, 2, transparency=0)
    assert pixels[0, 0].tolist() == [0, 0, 0]  # the transparent index
    assert pixels[1, 1].tolist() == [40, 50, 60]  # palette colour 1


def test_grayscale_repeats_its_channel(tmp_path):
    gray = np.arange(16, dtype=np.uint8).reshape(4, 4) * 16
    pixels = _single(tmp_path, Image.fromarray(gray, "L"), 4)
    np.testing.assert_array_equal(pixels, np.repeat(gray[..., None], 3, axis=2))


# ------------------------------------------------------------------------------------------ bad trees


def test_mismatched_classes_are_named(tree):
    (tree / "val" / "dog").rename(tree / "val" / "wolf")
    with pytest.raises(ArchbenchError) as info:
        read(tree, image_size=8)
    message = _one_line(info)
    assert "only" in message and "dog" in message and "wolf" in message


def test_class_without_training_images_is_named(tree):
    for path in (tree / "train" / "dog").iterdir():
        path.unlink()
    with pytest.raises(ArchbenchError) as info:
        read(tree, image_size=8)
    assert str(tree / "train" / "dog") in _one_line(info)


def test_empty_test_split_is_named(tree):
    for path in (tree / "val").rglob("*.*"):
        path.unlink()
    with pytest.raises(ArchbenchError) as info:
        read(tree, image_size=8)
    assert str(tree / "val") in _one_line(info) and "test split is empty" in _one_line(info)


def test_missing_train_and_test_folders_are_named(tree):
    (tree / "val").rename(tree / "elsewhere")
    with pytest.raises(ArchbenchError, match="test split needs one"):
        read(tree)
    with pytest.raises(ArchbenchError, match=r"train is missing"):
        read(tree / "elsewhere")
    with pytest.raises(ArchbenchError, match="imagefolder needs --source"):
        read_imagefolder(None, tree, image_size=None, skip_bad=False, console=None)


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_unreadable_image_is_named(tree, damage):
    bad = tree / "train" / "dog" / "b.jpg"
    data = bad.read_bytes()
    bad.write_bytes(b"not an image at all" if damage == "garbage" else data[: len(data) // 2])
    for size in (8, None):  # with a size, and when the default size reads every header first
        with pytest.raises(ArchbenchError) as info:
            read(tree, image_size=size)
        assert str(bad) in _one_line(info) and "--skip-bad" in _one_line(info)


def test_skip_bad_keeps_labels_aligned_and_records_the_files(tmp_path):
    """Each class's images are one solid colour, so any shift between images and labels would show."""
    root = tmp_path / "tree"
    colours = {"a": (255, 0, 0), "b": (0, 255, 0), "c": (0, 0, 255)}
    for split in ("train", "test"):
        for name, colour in colours.items():
            for i in range(3):
                _save(root / split / name / f"{i}.png", Image.new("RGB", (6, 6), colour))
    (root / "train" / "a" / "1.png").write_bytes(b"broken")
    (root / "train" / "b" / "0.png").write_bytes(b"broken")
    (root / "test" / "c" / "2.png").write_bytes(b"broken")
    arrays = read(root, image_size=6, skip_bad=True)
    assert arrays.repairs["skipped_files"] == ["train/a/1.png", "train/b/0.png", "test/c/2.png"]
    assert arrays.train_labels.tolist() == [0, 0, 1, 1, 2, 2, 2]
    assert arrays.test_labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2]
    for split in ("train", "test"):
        images, labels = getattr(arrays, f"{split}_images"), getattr(arrays, f"{split}_labels")
        for image, label in zip(images, labels):
            assert (image == np.array(list(colours.values())[label], np.uint8)).all()


def test_skip_bad_that_empties_a_training_class_is_refused(tmp_path):
    root = tmp_path / "tree"
    for split in ("train", "test"):
        for name in ("a", "b"):
            _save(root / split / name / "0.png", Image.new("RGB", (4, 4)))
    (root / "train" / "b" / "0.png").write_bytes(b"broken")
    with pytest.raises(ArchbenchError) as info:
        read(root, image_size=4, skip_bad=True)
    assert str(root / "train" / "b") in _one_line(info)


# ------------------------------------------------------------------------------------------ end to end


def test_prepare_and_run_end_to_end(tree, tiny_registry, tmp_path):
    from typer.testing import CliRunner

    from archbench.cli import app

    args = ["data", "prepare", "imagefolder", "--source", str(tree), "--root", str(tmp_path / "data")]
    result = CliRunner().invoke(app, [*args, "--image-size", "20"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "data" / "packed" / "manifest.json").read_text())
    assert manifest["dataset"] == "imagefolder" and manifest["image_shape"] == [20, 20, 3]
    assert manifest["classes"] == ["cat", "dog"] and manifest["source"]["verified"] is False
    assert manifest["source"]["checksum"].startswith("listing-sha256:")
    assert manifest["extra"]["image_size"] == 20 and manifest["extra"]["test_folder"] == "val"
    args = ["run", "tiny_resnet", "--registry", str(tiny_registry), "--data", str(tmp_path / "data"), "--epochs", "1"]
    args += ["--preset", "smoke", "--batch-size", "4", "--image-size", "32", "--gradnorm-steps", "2", "--device", "cpu"]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "runs"), "--quiet"])
    assert result.exit_code == 0, result.output
    (config,) = [json.loads(p.read_text()) for p in (tmp_path / "runs").rglob("config.json")]
    assert config["data"]["fingerprint"] == manifest["fingerprint"] and config["image_size"] == 32


def test_another_size_is_not_served_from_the_cache(tree, tmp_path):
    from archbench.data.sources import prepare

    assert prepare("imagefolder", tmp_path / "data", str(tree), image_size=12)["image_shape"] == [12, 12, 3]
    assert prepare("imagefolder", tmp_path / "data", str(tree), image_size=16)["image_shape"] == [16, 16, 3]
    assert prepare("imagefolder", tmp_path / "data", str(tree))["image_shape"] == [35, 35, 3]


def test_bad_tree_leaves_nothing_and_keeps_a_good_cache(tree, tmp_path):
    from archbench.data.sources import prepare

    bad = tree / "val" / "cat" / "a.png"
    bad.write_bytes(b"broken")
    with pytest.raises(ArchbenchError, match="a.png is not a readable image"):
        prepare("imagefolder", tmp_path / "data", str(tree), image_size=8)
    assert not (tmp_path / "data").exists()
    manifest = prepare("imagefolder", tmp_path / "data", str(tree), image_size=8, skip_bad=True)
    assert manifest["skipped"] == 1 and manifest["skipped_files"] == ["val/cat/a.png"]
    assert manifest["splits"]["test"]["count"] == 3
    before = sorted((p.name, p.read_bytes()) for p in (tmp_path / "data").rglob("*") if p.is_file())
    (tree / "val" / "dog").rename(tree / "val" / "wolf")
    with pytest.raises(ArchbenchError, match="wolf"):
        prepare("imagefolder", tmp_path / "data", str(tree), image_size=8, skip_bad=True)
    assert sorted((p.name, p.read_bytes()) for p in (tmp_path / "data").rglob("*") if p.is_file()) == before


def test_skipped_images_are_counted_in_the_ready_line_and_the_cache_is_not_reused_without_skip_bad(tree, tmp_path):
    from typer.testing import CliRunner

    from archbench.cli import app

    (tree / "train" / "dog" / "b.png").write_bytes(b"broken")
    args = ["data", "prepare", "imagefolder", "--source", str(tree), "--root", str(tmp_path / "data")]
    result = CliRunner().invoke(app, [*args, "--image-size", "8", "--skip-bad"], env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-1].endswith("; 1 skipped")
    result = CliRunner().invoke(app, [*args, "--image-size", "8"], env={"COLUMNS": "400"})
    assert result.exit_code != 0 and "b.png is not a readable image" in result.output
