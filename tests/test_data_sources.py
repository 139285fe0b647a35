"""Data sources by name: the embedded digits (read, split, packed, verified, built offline for --data digits),
the per-source normalisation and augmentation the loader takes from the manifest, and the registry the
command line names."""

from __future__ import annotations

import gzip
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console
from sklearn.datasets import load_digits
from torchvision.transforms.v2 import functional as TF
from typer.testing import CliRunner

from archbench import cli
from archbench.cli import app
from archbench.data import digits, packed, resolve, sources
from archbench.data.arrays import SourceArrays
from archbench.data.loader import AUGMENTATIONS, DeviceLoader, transform_batch, upscaled_size
from archbench.data.packed import PACKED_DIR, channel_statistics, check_cache, load_packed, pack_arrays
from archbench.errors import ArchbenchError

runner = CliRunner()
TOY_SOURCE = {"kind": "file", "location": "/in/toy.tar", "checksum": "md5:0", "verified": False}


@pytest.fixture(scope="module")
def digits_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("digits")
    sources.prepare("digits", root)
    return root


@pytest.fixture
def cache(monkeypatch, tmp_path) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("ARCHBENCH_CACHE", str(folder))
    return folder


def _snapshot(folder: Path) -> dict[str, bytes | None]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() if p.is_file() else None for p in folder.rglob("*")}


# ----------------------------------------------------------------------------------------------------
# the digits against scikit-learn's own reader


def test_digits_are_scikit_learns_pixels_and_labels_split_by_the_recorded_rule(digits_root):
    reference = load_digits()
    data = load_packed(digits_root)
    test = digits.test_mask(reference.target)
    expected = np.rint(reference.images * 255 / 16).astype(np.uint8)
    assert data.train_images.shape == (1442, 8, 8, 3) and data.test_images.shape == (355, 8, 8, 3)
    for split, rows in (("train", ~test), ("test", test)):
        images, labels = getattr(data, f"{split}_images"), getattr(data, f"{split}_labels")
        assert np.array_equal(labels, reference.target[rows])
        for channel in range(3):
            assert np.array_equal(images[..., channel], expected[rows])
    # the rule itself: every fifth image of each class, in file order, is a test image
    for c in range(10):
        rows = np.flatnonzero(reference.target == c)
        assert np.flatnonzero(test[rows]).tolist() == list(range(4, len(rows), 5))
    assert data.classes == [str(d) for d in range(10)] and data.dataset == "digits" and not data.synthetic


def test_digits_manifest_records_licence_attribution_split_and_verified_source(digits_root):
    manifest = load_packed(digits_root).manifest
    assert manifest["extra"]["licence"] == "CC BY 4.0"
    assert "Alpaydin" in manifest["extra"]["attribution"] and "UCI" in manifest["extra"]["attribution"]
    assert manifest["extra"]["split"] == digits.SPLIT_RULE
    assert manifest["source"]["verified"] is True
    assert manifest["source"]["checksum"] == f"sha256:{digits.CONTENT_SHA256}"
    assert manifest["augmentation"] == "upscale-crop" and manifest["image_shape"] == [8, 8, 3]


def test_manifest_mean_and_std_are_numpys_over_the_training_split(digits_root):
    data = load_packed(digits_root)
    pixels = np.asarray(data.train_images).reshape(-1, 3).astype(np.float64) / 255
    normalisation = data.manifest["normalisation"]
    assert np.allclose(normalisation["mean"], pixels.mean(axis=0), rtol=0, atol=1e-12)
    assert np.allclose(normalisation["std"], pixels.std(axis=0), rtol=0, atol=1e-12)
    # not the test split's: the two differ, so a statistic over the wrong split is caught
    test_pixels = np.asarray(data.test_images).reshape(-1, 3).astype(np.float64) / 255
    assert not np.allclose(normalisation["mean"], test_pixels.mean(axis=0), rtol=0, atol=1e-6)


def test_channel_statistics_per_channel_and_in_chunks(monkeypatch):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (37, 5, 7, 3), dtype=np.uint8)
    images[..., 2] //= 4  # channels differ, so mixing them up is caught
    monkeypatch.setattr(packed, "STATS_CHUNK", 8)  # several chunks, the last one short
    mean, std = channel_statistics(images)
    pixels = images.reshape(-1, 3).astype(np.float64) / 255
    assert np.allclose(mean, pixels.mean(0), atol=1e-12) and np.allclose(std, pixels.std(0), atol=1e-12)


def test_a_changed_normalisation_is_refused(digits_root, tmp_path):
    root = Path(shutil.copytree(digits_root, tmp_path / "copy"))
    path = root / PACKED_DIR / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["normalisation"]["std"][0] *= 2
    path.write_text(json.dumps(manifest, indent=1))
    with pytest.raises(ArchbenchError, match="records the fingerprint .*, but its fields give .*: it was edited"):
        load_packed(root)


# ----------------------------------------------------------------------------------------------------
# --data digits, offline


def test_data_digits_is_built_once_offline_into_the_cache_and_verified(cache, monkeypatch):
    first = resolve("digits")
    assert first.root.parent == cache and first.dataset == "digits"
    built = _snapshot(cache)

    def no_rebuild(*args, **kwargs):
        raise AssertionError("an intact cache must be reused")

    monkeypatch.setattr(sources, "prepare_arrays", no_rebuild)
    assert resolve("digits").fingerprint == first.fingerprint
    assert _snapshot(cache) == built


def test_a_damaged_digits_cache_is_rebuilt(cache):
    first = resolve("digits")
    labels = first.root / PACKED_DIR / "train_labels.npy"
    content = bytearray(labels.read_bytes())
    content[-1] ^= 1
    labels.write_bytes(bytes(content))
    assert check_cache(first.root / PACKED_DIR)[0] is None
    again = resolve("digits")
    assert again.fingerprint == first.fingerprint and [p.name for p in cache.iterdir()] == [first.root.name]


def test_prepare_digits_on_the_command_line(tmp_path):
    result = runner.invoke(app, ["data", "prepare", "digits", "--root", str(tmp_path / "d")])
    assert result.exit_code == 0, result.output
    assert "ready: 10 classes; train 1,442, test 355" in result.output
    assert load_packed(tmp_path / "d").dataset == "digits"


def test_cli_names_every_registered_source():
    assert list(cli.DATASETS) == list(sources.SOURCES)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["data", "prepare", "mnist"], "unknown data set 'mnist'; use one of: tiny-imagenet, cifar10"),
        (["data", "prepare", "digits", "--image-size", "16"], "--image-size applies to imagefolder only"),
    ],
)
def test_bad_prepare_arguments_are_one_line(tmp_path, args, expected):
    result = runner.invoke(app, [*args, "--root", str(tmp_path / "r")])
    assert result.exit_code == 2 and expected in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_a_preparable_name_that_is_not_built_in_says_how_to_prepare_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ArchbenchError, match=r"--data cifar10: .*`archbench data prepare cifar10` \(into data/cifar10"):
        resolve("cifar10")


def test_a_name_finds_the_set_prepared_at_its_default_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["data", "prepare", "digits"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "data" / "digits" / PACKED_DIR / "manifest.json").is_file()
    assert not (tmp_path / "data" / PACKED_DIR).exists()  # never in Tiny-ImageNet's place
    assert sources.default_root("tiny-imagenet") == Path("data")
    assert sources.default_root("cifar10") == Path("data/cifar10")
    assert resolve("digits").root == Path("data/digits")  # the set prepared there, not the built-in copy


# ----------------------------------------------------------------------------------------------------
# another copy of the digits, and bad input


def _copy_of_the_digits(tmp_path: Path, change=None) -> Path:
    lines = gzip.decompress(digits.bundled_file().read_bytes()).decode().splitlines()
    if change is not None:
        lines = change(lines)
    path = tmp_path / "digits.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_copy_that_is_not_the_bundled_content_is_used_and_recorded_as_unverified(tmp_path):
    def drop_last(lines):
        return lines[:-1]

    source = _copy_of_the_digits(tmp_path, drop_last)
    console = Console(record=True, width=400)
    manifest = sources.prepare("digits", tmp_path / "root", str(source), console=console)
    said = [line for line in console.export_text().splitlines() if line.startswith("unverified:")]
    assert len(said) == 1 and str(source) in said[0] and digits.CONTENT_SHA256 in said[0]
    assert manifest["source"]["verified"] is False and manifest["source"]["location"] == str(source.resolve())
    assert manifest["splits"]["train"]["count"] + manifest["splits"]["test"]["count"] == 1796


def test_an_identical_copy_is_verified(tmp_path):
    source = _copy_of_the_digits(tmp_path)
    manifest = sources.prepare("digits", tmp_path / "root", str(source))
    assert manifest["source"]["verified"] is True


def _three_fours(lines: list[str]) -> list[str]:
    fours = [i for i, line in enumerate(lines) if line.endswith(",4")]
    return [line for i, line in enumerate(lines) if i not in fours[3:]]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda lines: [*lines[:9], "1,2,3", *lines[10:]], "row 10 of {path} is not 64 pixel values 0-16"),
        (lambda lines: [lines[0].replace("0,", "17,", 1), *lines[1:]], "row 1 of {path} is not 64 pixel values"),
        (lambda lines: [line for line in lines if not line.endswith(",7")], "{path} has 0 images of the digit 7"),
        (_three_fours, "{path} has 3 images of the digit 4, fewer than 5: too few"),
    ],
    ids=["short row", "value out of range", "missing class", "few of one class"],
)
def test_a_bad_digits_file_is_one_line_naming_it_and_writes_nothing(tmp_path, change, expected):
    source = _copy_of_the_digits(tmp_path, change)
    with pytest.raises(ArchbenchError) as info:
        sources.prepare("digits", tmp_path / "root", str(source))
    assert expected.format(path=source) in info.value.message and "\n" not in info.value.message
    assert not (tmp_path / "root").exists()


def test_a_truncated_gzip_is_one_line_naming_it(tmp_path):
    source = tmp_path / "digits.csv.gz"
    source.write_bytes(digits.bundled_file().read_bytes()[:5000])
    with pytest.raises(ArchbenchError, match=f"{source} is not a readable gzip file"):
        sources.prepare("digits", tmp_path / "root", str(source))
    assert not (tmp_path / "root").exists()


def test_packing_arrays_of_the_wrong_kind_is_refused_and_writes_nothing(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    labels = np.array([0, 0, 1, 1])
    toy = {"dataset": "toy", "source": TOY_SOURCE, "augmentation": "upscale-crop"}
    wrong = SourceArrays(["a", "b"], images.astype(np.float32), labels, images, labels)
    with pytest.raises(ArchbenchError, match="the toy train images are float32"):
        pack_arrays(wrong, tmp_path / "p", **toy)
    one_class = SourceArrays(["a", "b"], images, np.zeros(4, np.int64), images, labels)
    with pytest.raises(ArchbenchError, match="the toy data cannot be packed: .*has no image of class b"):
        pack_arrays(one_class, tmp_path / "p", **toy)
    flat = SourceArrays(["a", "b"], np.full_like(images, 7), labels, images, labels)
    with pytest.raises(ArchbenchError, match="the toy training images are all alike in channel 0"):
        pack_arrays(flat, tmp_path / "p", **toy)
    assert not (tmp_path / "p").exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("split", ["train", "test"])
def test_an_empty_split_is_one_line_naming_the_input_with_no_numpy_warning(tmp_path, split):
    images = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    labels = np.array([0, 0, 1, 1])
    splits = {"train": (images, labels), "test": (images, labels), split: (images[:0], labels[:0])}
    empty = SourceArrays(["a", "b"], *splits["train"], *splits["test"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "invalid value encountered in divide" on the way
        with pytest.raises(ArchbenchError) as info:
            pack_arrays(empty, tmp_path / "p", dataset="toy", source=TOY_SOURCE, augmentation="upscale-crop")
    assert str(info.value) == f"the toy {split} split read from /in/toy.tar is empty: it holds no images"
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------------------------------
# the loader: the manifest's normalisation and the source's augmentation


def _torchvision_crop(image: np.ndarray, size: int, top: int, left: int, flip: bool, mean, std) -> torch.Tensor:
    x = TF.resize(
        torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255,
        [upscaled_size(size)] * 2,
        interpolation=TF.InterpolationMode.BILINEAR,
        antialias=False,
    )
    x = TF.crop(x, top, left, size, size)
    return TF.normalize(TF.hflip(x) if flip else x, list(mean), list(std))


def test_digits_train_batches_are_upscaled_random_crops_never_flipped(digits_root):
    """The loader's digits batches against torchvision (resize 8 -> 37, crop 32, normalise with the manifest's
    statistics) at the plan's own offsets, unflipped: a flip anywhere would miss its reference."""
    data = load_packed(digits_root)
    loader = DeviceLoader(
        data.train_images[:64],
        data.train_labels[:64],
        batch_size=64,
        image_size=32,
        train=True,
        device="cpu",
        **data.transform,
    )
    assert not AUGMENTATIONS[data.manifest["augmentation"]].flip
    indices, offsets, flips = loader.epoch_plan()
    assert flips is None and offsets.max() > 0  # random crops, really drawn
    ((x, _),) = list(loader)
    mean, std = data.transform["mean"], data.transform["std"]
    for row in range(64):
        image = np.asarray(data.train_images[int(indices[row])])
        top, left = offsets[row].tolist()
        assert (x[row] - _torchvision_crop(image, 32, top, left, False, mean, std)).abs().max() < 1e-4
        assert (x[row] - _torchvision_crop(image, 32, top, left, True, mean, std)).abs().max() > 1e-2 or (
            image == image[:, ::-1]
        ).all()


def test_the_loader_normalises_with_the_manifests_statistics(digits_root):
    data = load_packed(digits_root)
    images = torch.from_numpy(np.array(data.test_images[:32]))
    ours = DeviceLoader(
        np.asarray(data.test_images[:32]),
        np.asarray(data.test_labels[:32]),
        batch_size=32,
        image_size=32,
        train=False,
        device="cpu",
        **data.transform,
    )
    ((x, _),) = list(ours)
    pixels = transform_batch(images, 32, augmentation="upscale-crop")  # in [0, 1]
    mean = torch.tensor(data.transform["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(data.transform["std"]).view(1, 3, 1, 1)
    assert torch.allclose(x, (pixels - mean) / std, atol=1e-5)


def test_tiny_imagenet_keeps_its_flip(tiny_data):
    data = resolve(str(tiny_data))
    assert data.manifest["augmentation"] == "upscale-crop-flip" and AUGMENTATIONS["upscale-crop-flip"].flip
    loader = DeviceLoader(
        data.train_images, data.train_labels, batch_size=8, image_size=32, train=True, device="cpu", **data.transform
    )
    assert loader.epoch_plan()[2] is not None


def test_an_unknown_augmentation_is_one_line():
    with pytest.raises(ArchbenchError, match="unknown augmentation 'sideways'"):
        DeviceLoader(
            np.zeros((4, 8, 8, 3), np.uint8),
            np.zeros(4),
            batch_size=2,
            image_size=16,
            train=True,
            device="cpu",
            augmentation="sideways",
        )


# ----------------------------------------------------------------------------------------------------
# --data digits end to end


def test_a_run_on_digits_end_to_end(tiny_registry, cache, tmp_path):
    result = runner.invoke(
        app,
        [
            "run",
            "tiny_resnet",
            "--preset",
            "smoke",
            "--data",
            "digits",
            "--epochs",
            "1",
            "--batch-size",
            "64",
            "--image-size",
            "16",
            "--device",
            "cpu",
            "--quiet",
            "--registry",
            str(tiny_registry),
            "--out",
            str(tmp_path / "runs"),
        ],
    )
    assert result.exit_code == 0, result.output
    (config,) = (tmp_path / "runs").glob("tiny_resnet/*/config.json")
    recorded = json.loads(config.read_text())["data"]
    data = resolve("digits")
    assert recorded["name"] == "digits" and recorded["fingerprint"] == data.fingerprint
    assert recorded["train_size"] == 1442 and recorded["test_size"] == 355 and recorded["num_classes"] == 10


def test_a_file_placed_by_hand_where_a_download_goes_is_never_deleted(tmp_path, monkeypatch):
    from archbench.data import download as downloads

    def no_network(*args, **kwargs):
        raise AssertionError("nothing is fetched over a file already there")

    monkeypatch.setattr(downloads, "_fetch_into", no_network)
    dest = tmp_path / "cifar-10-python.tar.gz"
    dest.write_bytes(b"my own copy")
    with pytest.raises(ArchbenchError) as info:
        downloads.download("https://example.org/cifar-10-python.tar.gz", dest, md5="0" * 32)
    assert "\n" not in str(info.value) and f"pass --source {dest}" in str(info.value)
    assert dest.read_bytes() == b"my own copy"
