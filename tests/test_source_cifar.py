"""CIFAR-10/100 read from archives in the official format, refused when they are not, and the CIFAR
augmentation against torchvision.

The archives are built here as the official ones are: Python 2 pickles at protocol 2 (strings as
BINSTRING, numpy's array helper under ``numpy.core.multiarray``) in a gzipped tar with the official
member names. torchvision's own CIFAR readers are the oracle for what those files hold.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets.cifar as torchvision_cifar
from rich.console import Console
from torchvision.datasets import CIFAR10 as TorchvisionCIFAR10
from torchvision.datasets import CIFAR100 as TorchvisionCIFAR100
from torchvision.transforms.v2 import functional as TF

from archbench.data import cifar
from archbench.data.cifar import CIFAR10, CIFAR100, crop_room, fetch, load, pad_crop_flip, read
from archbench.errors import ArchbenchError

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
RECONSTRUCT = cifar._reconstruct()


class Python2Pickler(pickle._Pickler):
    """What Python 2's cPickle wrote at protocol 2: every string a byte string (SHORT_BINSTRING/BINSTRING),
    and numpy's array helper named as numpy 1.x named it."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_string(self, obj):
        data = obj if isinstance(obj, bytes) else obj.encode("latin1")
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[bytes] = save_py2_string
    dispatch[str] = save_py2_string

    def save_global(self, obj, name=None):
        if obj is RECONSTRUCT:
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
            self.memoize(obj)
            return
        super().save_global(obj, name)


def py2_pickle(value) -> bytes:
    out = io.BytesIO()
    Python2Pickler(out, protocol=2).dump(value)
    return out.getvalue()


def _batch(rng, count: int, label_keys: dict[str, list[int]], batch_label: str) -> dict:
    return {
        "batch_label": batch_label,
        **label_keys,
        "data": rng.integers(0, 256, (count, 3072), dtype=np.uint8),
        "filenames": [f"image_{i:05d}.png" for i in range(count)],
    }


def cifar10_members(per_batch: int = 4, test: int = 6, seed: int = 0) -> dict[str, bytes]:
    """The pickled files of a small CIFAR-10: five training batches covering all ten classes, one test batch."""
    rng = np.random.default_rng(seed)
    members = {}
    for b in range(1, 6):
        labels = [(i + (b - 1) * per_batch) % 10 for i in range(per_batch)]
        batch = _batch(rng, per_batch, {"labels": labels}, f"training batch {b} of 5")
        members[f"data_batch_{b}"] = py2_pickle(batch)
    members["test_batch"] = py2_pickle(
        _batch(rng, test, {"labels": [i % 3 for i in range(test)]}, "testing batch 1 of 1")
    )
    members["batches.meta"] = py2_pickle(
        {"num_cases_per_batch": per_batch, "label_names": CIFAR10_NAMES, "num_vis": 3072}
    )
    return members


def cifar100_members(train: int = 200, test: int = 30, seed: int = 0) -> dict[str, bytes]:
    """A small CIFAR-100: every fine class in train, only some in test; coarse class = fine class mod 20."""
    rng = np.random.default_rng(seed)
    fine_train, fine_test = [i % 100 for i in range(train)], [(7 * i) % 100 for i in range(test)]
    return {
        "train": py2_pickle(
            _batch(
                rng,
                train,
                {"fine_labels": fine_train, "coarse_labels": [f % 20 for f in fine_train]},
                "training batch 1 of 1",
            )
        ),
        "test": py2_pickle(
            _batch(
                rng,
                test,
                {"fine_labels": fine_test, "coarse_labels": [f % 20 for f in fine_test]},
                "testing batch 1 of 1",
            )
        ),
        "meta": py2_pickle(
            {
                "fine_label_names": [f"fine_{i:02d}" for i in range(100)],
                "coarse_label_names": [f"coarse_{i:02d}" for i in range(20)],
            }
        ),
    }


def write_archive(path: Path, variant, members: dict[str, bytes]) -> Path:
    """A gzipped tar laid out as the official one: the top folder, its files, and a readme beside the batches."""
    with tarfile.open(path, "w:gz") as tar:
        folder = tarfile.TarInfo(variant.folder)
        folder.type, folder.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(folder)
        extras = {"readme.html": b"<html></html>"} if variant is CIFAR10 else {}
        for name, data in {**members, **extras}.items():
            info = tarfile.TarInfo(f"{variant.folder}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def cifar10_archive(tmp_path) -> Path:
    return write_archive(tmp_path / "cifar-10-python.tar.gz", CIFAR10, cifar10_members())


@pytest.fixture
def cifar100_archive(tmp_path) -> Path:
    return write_archive(tmp_path / "cifar-100-python.tar.gz", CIFAR100, cifar100_members())


def _torchvision(dataset_type, archive: Path, root: Path, monkeypatch, train: bool):
    """torchvision's reader over the extracted archive (its md5 check skipped: these are not the real files)."""
    if not (root / dataset_type.base_folder).exists():
        with tarfile.open(archive) as tar:
            tar.extractall(root, filter="data")
    monkeypatch.setattr(torchvision_cifar, "check_integrity", lambda *args, **kwargs: True)
    return dataset_type(root, train=train, download=False)


# ------------------------------------------------------------------------------------------ reading


def test_cifar10_matches_torchvision(cifar10_archive, tmp_path, monkeypatch):
    arrays = read(CIFAR10, cifar10_archive)
    for split, train in (("train", True), ("test", False)):
        reference = _torchvision(TorchvisionCIFAR10, cifar10_archive, tmp_path / "tv", monkeypatch, train)
        np.testing.assert_array_equal(getattr(arrays, f"{split}_images"), reference.data)
        np.testing.assert_array_equal(getattr(arrays, f"{split}_labels"), reference.targets)
        assert arrays.classes == reference.classes == CIFAR10_NAMES
    assert arrays.train_images.dtype == np.uint8 and arrays.train_labels.dtype == np.int64
    assert arrays.train_images.shape == (20, 32, 32, 3) and arrays.test_images.shape == (6, 32, 32, 3)
    assert arrays.extra == {}


def test_cifar100_trains_on_fine_labels_and_records_coarse(cifar100_archive, tmp_path, monkeypatch):
    arrays = read(CIFAR100, cifar100_archive)
    for split, train in (("train", True), ("test", False)):
        reference = _torchvision(TorchvisionCIFAR100, cifar100_archive, tmp_path / "tv", monkeypatch, train)
        np.testing.assert_array_equal(getattr(arrays, f"{split}_images"), reference.data)
        np.testing.assert_array_equal(getattr(arrays, f"{split}_labels"), reference.targets)  # the fine labels
        assert arrays.classes == reference.classes
    assert len(arrays.classes) == 100
    assert arrays.extra["coarse_classes"] == [f"coarse_{i:02d}" for i in range(20)]
    assert arrays.extra["coarse_of_class"] == [f % 20 for f in range(100)]
    assert len(set(arrays.test_labels.tolist())) < 100  # the test split does not show every class


def test_extracted_folder_reads_like_the_archive(cifar10_archive, tmp_path):
    with tarfile.open(cifar10_archive) as tar:
        tar.extractall(tmp_path / "x", filter="data")
    from_archive = read(CIFAR10, cifar10_archive)
    for folder in (tmp_path / "x", tmp_path / "x" / CIFAR10.folder):
        path, record = fetch(CIFAR10, folder, tmp_path / "root")
        from_folder = read(CIFAR10, path)
        np.testing.assert_array_equal(from_folder.train_images, from_archive.train_images)
        np.testing.assert_array_equal(from_folder.test_labels, from_archive.test_labels)
        assert record["kind"] == "folder" and record["verified"] is False


# ------------------------------------------------------------------------------------------ checksums


def _console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, width=400), out


def test_local_archive_with_another_md5_is_used_and_recorded_unverified(cifar10_archive, tmp_path):
    console, out = _console()
    arrays, record = load(CIFAR10, cifar10_archive, tmp_path / "root", console)
    assert len(arrays.train_labels) == 20
    assert record["verified"] is False and record["kind"] == "file" and record["location"] == str(cifar10_archive)
    lines = out.getvalue().strip().splitlines()
    assert lines == [
        f"unverified: {cifar10_archive} has {record['checksum']}, not the official cifar10 md5:{CIFAR10.md5}; "
        "using it, recorded as unverified"
    ]


def test_archive_with_the_official_md5_is_verified_silently(cifar10_archive, tmp_path):
    from archbench.data.files import file_digest

    official = dataclasses.replace(CIFAR10, md5=file_digest(cifar10_archive, "md5"))
    console, out = _console()
    _, record = load(official, cifar10_archive, tmp_path / "root", console)
    assert record == {
        "kind": "file",
        "location": str(cifar10_archive),
        "checksum": f"md5:{official.md5}",
        "verified": True,
    }
    assert out.getvalue() == ""


def test_folder_whose_files_have_the_published_md5s_is_verified(cifar10_archive, tmp_path):
    from archbench.data.files import file_digest

    with tarfile.open(cifar10_archive) as tar:
        tar.extractall(tmp_path / "x", filter="data")
    folder = tmp_path / "x" / CIFAR10.folder
    official = dataclasses.replace(CIFAR10, member_md5={m: file_digest(folder / m, "md5") for m in CIFAR10.member_md5})
    assert fetch(official, folder, tmp_path / "root")[1]["verified"] is True
    (folder / "test_batch").write_bytes((folder / "test_batch").read_bytes() + b"\0")
    console, out = _console()
    assert load(official, folder, tmp_path / "root", console)[1]["verified"] is False
    assert out.getvalue().strip() == (
        f"unverified: {folder} holds cifar10 files whose md5 is not the published one; using it, recorded as unverified"
    )


@pytest.mark.parametrize("official", [True, False])
def test_urls_download_into_the_root_with_the_md5_only_for_the_official_one(
    cifar10_archive, tmp_path, monkeypatch, official
):
    calls = []

    def fake_download(url, dest, md5=None, console=None):
        calls.append((url, dest, md5))
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(cifar10_archive.read_bytes())
        return dest

    monkeypatch.setattr(cifar, "download", fake_download)
    url = CIFAR10.url if official else "https://mirror.example/data/cifar-10-python.tar.gz?x=1"
    path, record = fetch(CIFAR10, url if not official else None, tmp_path / "root")
    assert calls == [(url, tmp_path / "root" / "cifar-10-python.tar.gz", CIFAR10.md5 if official else None)]
    assert (
        record["kind"] == "url" and record["location"] == url and path == tmp_path / "root" / "cifar-10-python.tar.gz"
    )


# ------------------------------------------------------------------------------------------ bad input


def _one_line(info: pytest.ExceptionInfo) -> str:
    message = str(info.value)
    assert "\n" not in message
    return message


def test_corrupt_archive_is_named(tmp_path):
    bad = tmp_path / "cifar-10-python.tar.gz"
    bad.write_bytes(os.urandom(2000))
    with pytest.raises(ArchbenchError) as info:
        read(CIFAR10, bad)
    assert str(bad) in _one_line(info) and "not a readable cifar10 archive" in _one_line(info)


def test_truncated_archive_is_named(cifar10_archive):
    data = cifar10_archive.read_bytes()
    cifar10_archive.write_bytes(data[: len(data) // 2])
    with pytest.raises(ArchbenchError) as info:
        read(CIFAR10, cifar10_archive)
    assert str(cifar10_archive) in _one_line(info)


def test_missing_member_is_named(tmp_path):
    members = cifar10_members()
    del members["data_batch_3"]
    archive = write_archive(tmp_path / "c.tar.gz", CIFAR10, members)
    with pytest.raises(ArchbenchError) as info:
        read(CIFAR10, archive)
    assert "cifar-10-batches-py/data_batch_3" in _one_line(info) and str(archive) in _one_line(info)


def test_cifar100_archive_is_not_cifar10(cifar100_archive):
    with pytest.raises(ArchbenchError, match="lacks cifar-10-batches-py/"):
        read(CIFAR10, cifar100_archive)


class Mkdir:
    """A pickle that, when unpickled normally, calls os.mkdir(path): what a malicious batch would do."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (os.mkdir, (self.path,))


@pytest.mark.parametrize("where", ["dict value", "inside an object array", "meta"])
def test_pickle_that_runs_code_is_refused_before_it_runs(tmp_path, where):
    marker = tmp_path / "code-ran"
    members = cifar10_members()
    if where == "dict value":
        members["data_batch_2"] = py2_pickle({"data": Mkdir(marker), "labels": []})
    elif where == "inside an object array":
        members["data_batch_2"] = py2_pickle({"data": np.array([Mkdir(marker)], dtype=object)})
    else:
        members["batches.meta"] = py2_pickle({"label_names": Mkdir(marker)})
    member = "batches.meta" if where == "meta" else "data_batch_2"
    pickle.loads(members[member], encoding="latin1")  # the control: an ordinary unpickler runs it
    assert marker.is_dir()
    marker.rmdir()
    archive = write_archive(tmp_path / "c.tar.gz", CIFAR10, members)
    with pytest.raises(ArchbenchError) as info:
        read(CIFAR10, archive)
    assert not marker.exists()
    assert f"cifar-10-batches-py/{member}" in _one_line(info) and "posix.mkdir" in _one_line(info)


@pytest.mark.parametrize(
    "member, value, expected",
    [
        ("data_batch_1", ["not", "a", "dict"], "holds a list, not a dict"),
        ("data_batch_1", {"data": np.zeros((4, 3072), np.uint8), "labels": [0] * 4, "extra": 1}, "unknown key 'extra'"),
        ("data_batch_1", {"data": np.zeros((4, 3072), np.uint8)}, "lacks 'labels'"),
        ("data_batch_1", {"data": np.zeros((4, 3071), np.uint8), "labels": [0] * 4}, "not uint8 N x 3072"),
        ("data_batch_1", {"data": np.zeros((4, 3072), np.float32), "labels": [0] * 4}, "not uint8 N x 3072"),
        ("data_batch_1", {"data": np.zeros((4, 3072), np.uint8), "labels": [0] * 3}, "4 images but 3 labels"),
        ("data_batch_1", {"data": np.zeros((4, 3072), np.uint8), "labels": [0, 1, 2, 10]}, "labels[3] is 10"),
        ("data_batch_1", {"data": np.zeros((4, 3072), np.uint8), "labels": ["a"] * 4}, "not a list of integer labels"),
        ("test_batch", b"\x80\x02garbage", "is not a CIFAR batch"),
        ("batches.meta", {"label_names": CIFAR10_NAMES[:9]}, "names 9 classes"),
        ("batches.meta", {"label_names": ["cat"] * 10}, "more than once"),
        ("batches.meta", {"num_vis": 3072}, "lacks 'label_names'"),
    ],
)
def test_pickle_that_is_not_cifar_is_named(tmp_path, member, value, expected):
    members = cifar10_members()
    members[member] = value if isinstance(value, bytes) else py2_pickle(value)
    archive = write_archive(tmp_path / "c.tar.gz", CIFAR10, members)
    with pytest.raises(ArchbenchError) as info:
        read(CIFAR10, archive)
    assert f"cifar-10-batches-py/{member}" in _one_line(info) and expected in _one_line(info)


def test_cifar100_fine_class_with_two_coarse_classes_is_refused(tmp_path):
    members = cifar100_members()
    rng = np.random.default_rng(1)
    fine = [i % 100 for i in range(200)]
    coarse = [f % 20 for f in fine]
    coarse[150] = (coarse[150] + 1) % 20  # fine class 50 seen with two coarse classes
    members["train"] = py2_pickle(
        _batch(rng, 200, {"fine_labels": fine, "coarse_labels": coarse}, "training batch 1 of 1")
    )
    archive = write_archive(tmp_path / "c.tar.gz", CIFAR100, members)
    with pytest.raises(ArchbenchError, match="fine class 50 with coarse classes"):
        read(CIFAR100, archive)


def test_missing_source_is_named(tmp_path):
    with pytest.raises(ArchbenchError, match="neither an http"):
        fetch(CIFAR10, tmp_path / "nothing.tar.gz", tmp_path / "root")


def test_folder_missing_a_batch_is_named(cifar10_archive, tmp_path):
    with tarfile.open(cifar10_archive) as tar:
        tar.extractall(tmp_path / "x", filter="data")
    (tmp_path / "x" / CIFAR10.folder / "data_batch_4").unlink()
    with pytest.raises(ArchbenchError, match="data_batch_4 is missing"):
        read(CIFAR10, tmp_path / "x" / CIFAR10.folder)


# ------------------------------------------------------------------------------------------ augmentation


def test_pad_crop_flip_equals_torchvision_on_the_same_draws():
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (16, 32, 32, 3), dtype=torch.uint8, generator=generator)
    room = crop_room(32, 32)
    assert room == 8  # the 32 x 32 crop of the 40 x 40 padded image
    offsets = torch.randint(0, room + 1, (16, 2), generator=generator)
    offsets[0] = torch.tensor([0, 0])
    offsets[1] = torch.tensor([room, room])  # both extremes: the crop reaches each padded border
    flips = torch.rand(16, generator=generator) < 0.5
    flips[:2] = torch.tensor([True, False])
    ours = pad_crop_flip(images, 32, offsets, flips)
    for i in range(16):
        chw = images[i].permute(2, 0, 1)
        reference = TF.crop(TF.pad(chw, [4], fill=0), int(offsets[i, 0]), int(offsets[i, 1]), 32, 32)
        if flips[i]:
            reference = TF.horizontal_flip(reference)
        assert torch.equal(ours[i].permute(2, 0, 1), reference), i
    assert ours.dtype == torch.uint8


def test_evaluation_is_the_image_itself():
    images = torch.randint(0, 256, (4, 32, 32, 3), dtype=torch.uint8)
    assert torch.equal(pad_crop_flip(images, 32), images)


# ------------------------------------------------------------------------------------------ the cifar preset


def test_step_schedule_matches_torch_multisteplr():
    from archbench.config import STEP_MILESTONES, Recipe
    from archbench.train import lr_lambda

    recipe = Recipe(epochs=8, batch_size=1, lr=0.1, schedule="step", warmup_epochs=0)
    steps_per_epoch = 13
    total = recipe.epochs * steps_per_epoch
    ours_param, torch_param = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    ours = torch.optim.SGD([ours_param], lr=recipe.lr)
    reference = torch.optim.SGD([torch_param], lr=recipe.lr)
    ours_schedule = torch.optim.lr_scheduler.LambdaLR(ours, lr_lambda(recipe, steps_per_epoch))
    milestones = [int(fraction * total) for fraction in STEP_MILESTONES]
    assert milestones == [52, 78]
    reference_schedule = torch.optim.lr_scheduler.MultiStepLR(reference, milestones=milestones, gamma=0.1)
    for _ in range(total):
        assert ours.param_groups[0]["lr"] == pytest.approx(reference.param_groups[0]["lr"], rel=1e-12)
        ours.step(), reference.step()
        ours_schedule.step(), reference_schedule.step()
    assert ours.param_groups[0]["lr"] == pytest.approx(0.001)


def test_cifar_preset_is_he_et_al_recipe():
    """He et al. 2016 §4.2: SGD 0.1, momentum 0.9, wd 1e-4, batch 128, /10 at 32k and 48k, 64k iterations."""
    from archbench.config import PRESETS, STEP_FACTOR, STEP_MILESTONES
    from archbench.data.sources import SOURCES

    preset = PRESETS["cifar"]
    recipe = preset.recipe
    assert (recipe.lr, recipe.momentum, recipe.weight_decay, recipe.batch_size) == (0.1, 0.9, 1e-4, 128)
    assert (recipe.schedule, recipe.warmup_epochs, recipe.nesterov, recipe.label_smoothing) == ("step", 0, False, 0)
    assert recipe.clip_grad_norm is None and STEP_FACTOR == 0.1
    iterations = recipe.epochs * (50_000 // recipe.batch_size)
    assert abs(iterations - 64_000) / 64_000 < 0.001
    assert [abs(f * iterations - m) / m < 0.002 for f, m in zip(STEP_MILESTONES, (32_000, 48_000))] == [True, True]
    assert (preset.data, preset.image_size) == ("cifar10", 32)
    assert SOURCES["cifar10"].augmentation == SOURCES["cifar100"].augmentation == "pad-crop-flip"


def test_device_loader_trains_with_torchvision_pad_crop_flip_and_evaluates_on_the_image():
    """The loader's epoch: each image through torchvision's pad + crop + flip + scale + normalise, with the
    offsets and flips the loader drew; evaluation is the normalised image itself."""
    from torchvision.transforms.v2 import functional as V2

    from archbench.data.loader import DeviceLoader

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(64) % 10
    mean, std = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
    settings = dict(
        batch_size=16, image_size=32, device="cpu", seed=3, mean=mean, std=std, augmentation="pad-crop-flip"
    )
    loader = DeviceLoader(images, labels, train=True, **settings)
    order, offsets, flips = loader.epoch_plan()
    assert offsets.min() == 0 and offsets.max() == 8 and flips.any() and not flips.all()
    batches = torch.cat([x for x, _ in loader])
    for position, index in enumerate(order.tolist()):
        image = torch.from_numpy(images[index]).permute(2, 0, 1)
        top, left = offsets[position].tolist()
        expected = V2.crop(V2.pad(image, [4], fill=0), top, left, 32, 32)
        if flips[position]:
            expected = V2.horizontal_flip(expected)
        expected = V2.normalize(V2.to_dtype(expected, torch.float32, scale=True), list(mean), list(std))
        torch.testing.assert_close(batches[position], expected, rtol=0, atol=1e-5)
    evaluation = torch.cat([x for x, _ in DeviceLoader(images, labels, train=False, **settings)])
    expected = V2.normalize(
        V2.to_dtype(torch.from_numpy(images).permute(0, 3, 1, 2), torch.float32, scale=True), list(mean), list(std)
    )
    torch.testing.assert_close(evaluation, expected, rtol=0, atol=1e-5)


def test_crop_larger_than_the_padded_image_is_refused():
    with pytest.raises(ArchbenchError, match="--image-size 40 or less"):
        crop_room(32, 48)


# ------------------------------------------------------------------------------------------ end to end


def _run_one_epoch(registry: Path, data: Path, out: Path, *extra: str) -> dict:
    from typer.testing import CliRunner

    from archbench.cli import app

    args = ["run", "tiny_resnet", "--registry", str(registry), "--data", str(data), "--epochs", "1"]
    args += ["--batch-size", "16", "--image-size", "32", "--gradnorm-steps", "2", "--device", "cpu"]
    args += ["--out", str(out), "--quiet", *extra]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    (config,) = [json.loads(p.read_text()) for p in out.rglob("config.json")]
    return config


def _prepared(variant, tmp_path) -> dict:
    from archbench.data.sources import prepare

    members = cifar10_members(per_batch=8, test=16) if variant is CIFAR10 else cifar100_members(train=100, test=16)
    archive = write_archive(tmp_path / Path(variant.url).name, variant, members)
    manifest = prepare(variant.name, tmp_path / "data", str(archive))
    assert manifest["dataset"] == variant.name and manifest["augmentation"] == "pad-crop-flip"
    assert manifest["image_shape"] == [32, 32, 3] and manifest["source"]["verified"] is False
    assert manifest["source"]["checksum"] == f"md5:{hashlib.md5(archive.read_bytes()).hexdigest()}"
    return manifest


def test_cifar100_packs_with_classes_the_test_split_does_not_show(tmp_path):
    manifest = _prepared(CIFAR100, tmp_path)
    assert manifest["extra"]["coarse_of_class"] == [f % 20 for f in range(100)]
    assert manifest["class_counts"]["test"].count(0) == 84  # 16 test images, 16 of the 100 classes


def test_cli_prepare_says_unverified_once_and_packs(tmp_path):
    from typer.testing import CliRunner

    from archbench.cli import app

    archive = write_archive(tmp_path / "cifar-10-python.tar.gz", CIFAR10, cifar10_members())
    args = ["data", "prepare", "cifar10", "--source", str(archive), "--root", str(tmp_path / "data")]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    assert [line for line in result.output.splitlines() if "unverified" in line] == [
        f"unverified: {archive} has md5:{md5}, not the official cifar10 md5:{CIFAR10.md5}; using it, recorded as "
        "unverified"
    ]
    manifest = json.loads((tmp_path / "data" / "packed" / "manifest.json").read_text())
    assert manifest["dataset"] == "cifar10" and manifest["source"]["verified"] is False
    assert manifest["splits"] == {"train": {"count": 20}, "test": {"count": 6}}


def test_cli_prepare_refuses_a_bad_archive_in_one_line(tmp_path):
    from typer.testing import CliRunner

    from archbench.cli import app

    archive = tmp_path / "cifar-10-python.tar.gz"
    archive.write_bytes(b"\x1f\x8b" + os.urandom(500))
    args = ["data", "prepare", "cifar10", "--source", str(archive), "--root", str(tmp_path / "data")]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "400"})
    assert result.exit_code != 0 and str(archive) in result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("variant", [CIFAR10, pytest.param(CIFAR100, marks=pytest.mark.slow)])
def test_prepare_and_run_end_to_end(variant, tiny_registry, tmp_path):
    manifest = _prepared(variant, tmp_path)
    config = _run_one_epoch(tiny_registry, tmp_path / "data", tmp_path / "runs", "--preset", "cifar")
    assert config["data"]["fingerprint"] == manifest["fingerprint"]
    assert config["recipe"]["schedule"] == "step" and config["image_size"] == 32


def test_bad_archive_leaves_nothing_and_keeps_a_good_cache(tmp_path):
    from archbench.data.sources import prepare

    members = cifar10_members()
    members["data_batch_5"] = py2_pickle({"data": Mkdir(tmp_path / "code-ran")})
    bad = write_archive(tmp_path / "bad.tar.gz", CIFAR10, members)
    with pytest.raises(ArchbenchError, match="data_batch_5"):
        prepare("cifar10", tmp_path / "data", str(bad))
    assert not (tmp_path / "data").exists() and not (tmp_path / "code-ran").exists()
    good = write_archive(tmp_path / "good.tar.gz", CIFAR10, cifar10_members())
    manifest = prepare("cifar10", tmp_path / "data", str(good))
    before = sorted((p.name, p.read_bytes()) for p in (tmp_path / "data").rglob("*") if p.is_file())
    with pytest.raises(ArchbenchError, match="data_batch_5"):
        prepare("cifar10", tmp_path / "data", str(bad))
    assert sorted((p.name, p.read_bytes()) for p in (tmp_path / "data").rglob("*") if p.is_file()) == before
    assert manifest["source"]["location"] == str(good)


@pytest.mark.parametrize(
    "command",
    [
        ["run"],  # the default preset's 224 crop
        ["run", "--preset", "cifar", "--image-size", "48"],
        ["tune", "--lr", "0.1"],
    ],
)
def test_a_crop_too_large_for_cifar_is_refused_before_any_run_folder(command, tiny_registry, tmp_path):
    from typer.testing import CliRunner

    from archbench.cli import app

    _prepared(CIFAR10, tmp_path)
    out = tmp_path / "runs"
    args = [*command, "tiny_resnet", "--registry", str(tiny_registry), "--data", str(tmp_path / "data")]
    args += ["--epochs", "1", "--device", "cpu", "--out", str(out), "--quiet"]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "400"})
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1 and "--image-size 40 or less" in result.output
    assert not out.exists() or not [p for p in out.rglob("*") if p.is_file()]
    assert not list(tmp_path.rglob("config.json")) and not list(tmp_path.rglob("tuning*.json"))


def test_an_empty_test_batch_is_named_by_its_member(tmp_path):
    members = cifar10_members(test=0)
    archive = write_archive(tmp_path / "cifar-10-python.tar.gz", CIFAR10, members)
    with pytest.raises(ArchbenchError) as info:
        read(CIFAR10, archive)
    assert str(info.value) == f"{archive}:cifar-10-batches-py/test_batch holds no images: the test split is empty"


def test_prepare_without_a_source_reuses_the_cache_before_any_read_or_download(cifar10_archive, tmp_path, monkeypatch):
    from archbench.data.sources import prepare

    made = prepare("cifar10", tmp_path / "data", str(cifar10_archive))

    def no_read(*args, **kwargs):
        raise AssertionError("an intact cache of the data set needs no download or read")

    monkeypatch.setattr(cifar, "download", no_read)
    monkeypatch.setattr(cifar, "read", no_read)
    assert prepare("cifar10", tmp_path / "data") == made
