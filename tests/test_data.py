"""Tiny-ImageNet layout reading, packing, the synthetic twin, the device loader and the data CLI.

Everything runs on a synthetic set of 3 classes x (4 train + 2 val) images written in the real layout.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_SET as TINY
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms.v2 import functional as TF
from typer.testing import CliRunner

from archbench.cli import app
from archbench.data import resolve, synthetic
from archbench.data.loader import (
    AUGMENTATIONS,
    DeviceLoader,
    epoch_generator,
    transform_batch,
    upscaled_size,
)
from archbench.data.synthetic import LAYOUT_DIR, class_name, make_synthetic, wnid
from archbench.data.tinyimagenet import PACKED_DIR, decode_image, load_packed, prepare
from archbench.errors import ArchbenchError

# A normalisation for the transform tests (ImageNet's; the tolerances below are in its units): the loader takes
# each data set's own from its manifest.
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
NORM = {"mean": MEAN, "std": STD}


def _leftovers(folder: Path) -> list[str]:
    """Temporary build folders that a failed or finished prepare must not leave behind."""
    return [p.name for p in folder.iterdir() if p.name.startswith(".")] if folder.exists() else []


# ----------------------------------------------------------------------------------------------------
# layout round trip


def test_round_trip_counts_labels_and_class_order(tiny_root):
    data = load_packed(tiny_root)
    folder = tiny_root / LAYOUT_DIR
    wnids_on_disk = (folder / "wnids.txt").read_text().split()
    assert data.classes == sorted(wnids_on_disk) == [wnid(c) for c in range(3)]
    assert data.manifest["class_order"] == "sorted wnids"
    assert data.train_images.shape == (12, 64, 64, 3) and data.train_images.dtype == np.uint8
    assert data.test_images.shape == (6, 64, 64, 3)
    assert data.manifest["splits"] == {"train": {"count": 12}, "test": {"count": 6}}
    assert np.bincount(data.train_labels).tolist() == [4, 4, 4]
    annotations = [line.split("\t") for line in (folder / "val" / "val_annotations.txt").read_text().splitlines()]
    assert data.test_labels.tolist() == [data.classes.index(fields[1]) for fields in annotations]
    assert data.names == {wnid(c): class_name(c) for c in range(3)}
    assert data.synthetic and data.manifest["synthetic_params"]["seed"] == 0
    assert isinstance(data.train_images, np.memmap)


def test_packed_pixels_equal_a_direct_decode(tiny_root):
    """Row i of the packed train array is train image i decoded by PIL, with its folder's label."""
    data = load_packed(tiny_root)
    c = 1
    first = sorted((tiny_root / LAYOUT_DIR / "train" / wnid(c) / "images").iterdir())[0]
    row = int(np.flatnonzero(data.train_labels == c)[0])
    expected = np.asarray(Image.open(first).convert("RGB"))
    np.testing.assert_array_equal(data.train_images[row], expected)


def test_wnids_file_is_unsorted_like_the_real_one(tmp_path):
    folder = synthetic.write_layout(tmp_path / "layout", synthetic.synthetic_params(10, 1, 1, 0))
    wnids = (folder / "wnids.txt").read_text().split()
    assert sorted(wnids) == [wnid(c) for c in range(10)] and wnids != sorted(wnids)
    words = (folder / "words.txt").read_text().splitlines()
    assert len(words) > 10  # like the real words.txt, it names more wnids than there are classes
    boxes = (folder / "train" / wnid(0) / f"{wnid(0)}_boxes.txt").read_text().split("\t")
    assert boxes[0] == f"{wnid(0)}_0.JPEG" and len(boxes) == 5


def test_grayscale_images_become_rgb(tiny_root):
    folder = tiny_root / LAYOUT_DIR
    packed_files = sorted(folder.glob("train/*/images/*.JPEG")) + sorted(folder.glob("val/images/*.JPEG"))
    gray = [p for p in packed_files if Image.open(p).mode == "L"]
    assert gray, "the synthetic set should contain grayscale JPEGs"
    assert load_packed(tiny_root).manifest["converted_to_rgb"] == len(gray)
    decoded = decode_image(gray[0])
    assert decoded.converted and decoded.pixels.shape == (64, 64, 3)
    np.testing.assert_array_equal(decoded.pixels[..., 0], decoded.pixels[..., 2])
    np.testing.assert_array_equal(decoded.pixels[..., 0], np.asarray(Image.open(gray[0])))


def test_cmyk_images_become_rgb(tmp_path):
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    rgb.convert("CMYK").save(tmp_path / "cmyk.JPEG", "JPEG", quality=95)
    decoded = decode_image(tmp_path / "cmyk.JPEG")
    assert decoded.converted and decoded.error is None and decoded.pixels.shape == (64, 64, 3)


# ----------------------------------------------------------------------------------------------------
# manifest, idempotence, damaged caches


def test_synthetic_is_deterministic(tiny_root, tmp_path):
    again = make_synthetic(tmp_path / "again", **TINY)
    other_seed = make_synthetic(tmp_path / "other", **{**TINY, "seed": 1})
    assert again["fingerprint"] == load_packed(tiny_root).fingerprint
    assert other_seed["fingerprint"] != again["fingerprint"]


def test_second_prepare_reuses_the_cache(layout, tmp_path):
    root = tmp_path / "root"
    first = prepare(root, source=layout)
    stamp = (root / PACKED_DIR / "train_images.npy").stat().st_mtime_ns
    second = prepare(root, source=layout)
    assert second == first
    assert (root / PACKED_DIR / "train_images.npy").stat().st_mtime_ns == stamp
    assert prepare(root) == first  # no source: whatever intact cache is there


def test_changed_source_rebuilds_the_cache(layout, tmp_path):
    root = tmp_path / "root"
    first = prepare(root, source=layout)
    victim = next((layout / "train").glob("*/images/*.JPEG"))
    Image.new("RGB", (64, 64), (255, 0, 0)).save(victim)
    second = prepare(root, source=layout)
    assert second["fingerprint"] != first["fingerprint"]
    assert second["source"]["checksum"] != first["source"]["checksum"]


@pytest.mark.parametrize("damage", ["truncate images", "flip bytes", "garble manifest", "delete labels"])
def test_damaged_cache_is_rebuilt(layout, tmp_path, damage):
    root = tmp_path / "root"
    original = prepare(root, source=layout)
    packed = root / PACKED_DIR
    if damage == "truncate images":
        path = packed / "train_images.npy"
        path.write_bytes(path.read_bytes()[:-1000])
    elif damage == "flip bytes":  # same size, so only the content checksum can notice
        path = packed / "test_images.npy"
        content = bytearray(path.read_bytes())
        content[-500:-400] = bytes(255 - b for b in content[-500:-400])
        path.write_bytes(bytes(content))
    elif damage == "garble manifest":
        (packed / "manifest.json").write_text('{"format_version": 1, "arr')
    else:
        (packed / "train_labels.npy").unlink()
    if damage != "flip bytes":
        with pytest.raises(ArchbenchError, match="damaged"):
            load_packed(root)
    rebuilt = prepare(root, source=layout)
    assert rebuilt["fingerprint"] == original["fingerprint"]
    assert load_packed(root).test_images.shape == (6, 64, 64, 3)
    assert _leftovers(root) == []


# ----------------------------------------------------------------------------------------------------
# bad input


def _first_train_image(layout: Path) -> Path:
    return sorted((layout / "train").glob("*/images/*.JPEG"))[0]


def test_truncated_jpeg_names_the_file_and_writes_nothing(layout, tmp_path):
    bad = _first_train_image(layout)
    bad.write_bytes(bad.read_bytes()[:300])
    root = tmp_path / "root"
    with pytest.raises(ArchbenchError, match=bad.name) as info:
        prepare(root, source=layout)
    assert "--skip-bad" in info.value.message and "\n" not in info.value.message
    assert not (root / PACKED_DIR).exists() and _leftovers(root) == []


def test_skip_bad_skips_and_counts(layout, tmp_path):
    bad = sorted((layout / "val" / "images").iterdir())[0]
    bad.write_bytes(b"not a jpeg at all" * 20)
    manifest = prepare(tmp_path / "root", source=layout, skip_bad=True)
    assert manifest["skipped"] == 1 and manifest["skipped_files"] == [f"val/images/{bad.name}"]
    data = load_packed(tmp_path / "root")
    assert data.test_images.shape[0] == data.test_labels.shape[0] == manifest["splits"]["test"]["count"] == 5
    # the skipped image's label is gone, the others keep theirs in order
    annotations = [line.split("\t") for line in (layout / "val" / "val_annotations.txt").read_text().splitlines()]
    expected = [data.classes.index(w) for name, w, *_ in annotations if name != bad.name]
    assert data.test_labels.tolist() == expected


def test_cache_with_skips_is_not_reused_without_skip_bad(layout, tmp_path):
    bad = _first_train_image(layout)
    bad.write_bytes(bad.read_bytes()[:300])
    prepare(tmp_path / "root", source=layout, skip_bad=True)
    with pytest.raises(ArchbenchError, match=bad.name):
        prepare(tmp_path / "root", source=layout)


def test_missing_wnids_file(layout, tmp_path):
    (layout / "wnids.txt").unlink()
    with pytest.raises(ArchbenchError, match="wnids.txt is missing"):
        prepare(tmp_path / "root", source=layout)


def test_annotation_with_unknown_wnid(layout, tmp_path):
    annotations = layout / "val" / "val_annotations.txt"
    lines = annotations.read_text().splitlines()
    lines[1] = lines[1].replace(lines[1].split("\t")[1], "n00000042")
    annotations.write_text("\n".join(lines) + "\n")
    expected = r"line 2 of .*val_annotations.txt .* n00000042, which is not in wnids.txt"
    with pytest.raises(ArchbenchError, match=expected):
        prepare(tmp_path / "root", source=layout)


def test_wrong_size_image_is_resized_and_counted(layout, tmp_path):
    odd = _first_train_image(layout)
    Image.open(odd).convert("RGB").resize((80, 70)).save(odd, "JPEG")
    manifest = prepare(tmp_path / "root", source=layout)
    assert manifest["resized"] == 1 and manifest["resized_files"] == [odd.relative_to(layout).as_posix()]
    assert load_packed(tmp_path / "root").train_images.shape == (12, 64, 64, 3)


def test_empty_class_folder(layout, tmp_path):
    images = layout / "train" / wnid(2) / "images"
    for path in images.iterdir():
        path.unlink()
    with pytest.raises(ArchbenchError, match=f"{wnid(2)}/images holds no images"):
        prepare(tmp_path / "root", source=layout)


def test_missing_source_and_missing_data(tmp_path):
    with pytest.raises(ArchbenchError, match="neither an http"):
        prepare(tmp_path / "root", source=tmp_path / "nowhere")
    with pytest.raises(
        ArchbenchError, match=r"archbench data prepare \[DATASET\] --root .*--data digits .*--data synthetic"
    ):
        resolve(tmp_path / "nothing-here")


# ----------------------------------------------------------------------------------------------------
# the default synthetic set


def test_default_synthetic_is_built_once_and_shared(monkeypatch, tmp_path):
    monkeypatch.setenv("ARCHBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(synthetic, "DEFAULT_PARAMS", TINY)
    with ThreadPoolExecutor(2) as pool:  # two first uses at once: one set wins, neither breaks
        roots = list(pool.map(lambda _: synthetic.default_synthetic(), range(2)))
    assert roots[0] == roots[1] and roots[0].name.startswith("synthetic-c3-t4-v2-s0")
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [roots[0].name]
    stamp = (roots[0] / PACKED_DIR / "manifest.json").stat().st_mtime_ns
    data = resolve("synthetic")
    assert data.synthetic and data.num_classes == 3 and data.root == roots[0]
    assert (roots[0] / PACKED_DIR / "manifest.json").stat().st_mtime_ns == stamp


# ----------------------------------------------------------------------------------------------------
# the batched transform against torchvision


def _tensor_reference(image: torch.Tensor, size: int, top: int, left: int, flip: bool) -> torch.Tensor:
    """torchvision's tensor path on float pixels: resize (bilinear), crop, flip, normalise."""
    upscaled = upscaled_size(size)
    shrinks = upscaled < image.shape[0]  # below S = 56 the resize is a downscale, antialiased like PIL's
    x = TF.resize(
        image.permute(2, 0, 1).float() / 255,
        [upscaled, upscaled],
        interpolation=TF.InterpolationMode.BILINEAR,
        antialias=shrinks,
    )
    x = TF.crop(x, top, left, size, size)
    if flip:
        x = TF.hflip(x)
    return TF.normalize(x, MEAN, STD)


# Both sides evaluate the same bilinear weights in float32 from different formulas (grid coordinates against a
# scale factor), so they differ by float rounding only: a source coordinate off by ~1e-6 pixel, times the
# steepest step between neighbouring pixels (255 levels, 4.4 after normalising). Measured maxima: 3.2e-5 on
# uniform noise at S = 64..192, 2.25e-5 on the synthetic set (S = 64), 1e-6 at S = 224 and 56. A grey level
# is 1/255/0.225 = 0.017, and a half-pixel shift, a wrong offset or a missing flip are errors of 0.01 and more.
TENSOR_TOLERANCE = 4e-5


def _draws(size: int, count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random crop offsets (both ends of the range included) and flips for `count` images."""
    generator = torch.Generator().manual_seed(seed)
    room = upscaled_size(size) - size
    corners = torch.tensor([[0, 0], [room, room], [0, room], [room, 0]])
    offsets = torch.cat([corners, torch.randint(0, room + 1, (count - len(corners), 2), generator=generator)])
    return offsets, torch.rand(count, generator=generator) < 0.5


def _max_tensor_error(images: torch.Tensor, size: int, seed: int = 0) -> float:
    offsets, flips = _draws(size, len(images), seed)
    ours = transform_batch(images, size, offsets, flips, **NORM)
    assert ours.shape == (len(images), 3, size, size) and ours.dtype == torch.float32
    return max(
        (ours[i] - _tensor_reference(images[i], size, *offsets[i].tolist(), bool(flips[i]))).abs().max().item()
        for i in range(len(images))
    )


@pytest.mark.parametrize("size", [32, 64, 224])
def test_transform_matches_torchvision_at_given_offsets_and_flips(tiny_root, size):
    images = torch.from_numpy(np.array(load_packed(tiny_root).train_images[:6]))
    room = upscaled_size(size) - size
    offsets = torch.tensor([[0, 0], [room, room], [0, room], [room, 0], [room // 2, 1], [1, room // 3]])
    flips = torch.tensor([False, True, True, False, True, False])
    ours = transform_batch(images, size, offsets, flips, **NORM)
    assert ours.shape == (6, 3, size, size) and ours.dtype == torch.float32
    for i in range(6):
        reference = _tensor_reference(images[i], size, *offsets[i].tolist(), bool(flips[i]))
        assert (ours[i] - reference).abs().max().item() < TENSOR_TOLERANCE


def test_transform_is_within_float_rounding_of_torchvision_over_many_images_and_sizes(tmp_path):
    """200 synthetic and 100 uniform-noise images (the steepest an 8-bit image gets) at every kind of size:
    shrinking (S < 56), 56 (no resize), upscaling, with random offsets, both ends of the range, and flips."""
    make_synthetic(tmp_path, classes=10, train_per_class=20, val_per_class=1, seed=3)
    synthetic_images = torch.from_numpy(np.array(load_packed(tmp_path).train_images))
    noise = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (100, 64, 64, 3), dtype=np.uint8))
    for size in (16, 24, 32, 48, 56, 64, 100, 128, 160, 224):
        for images in (synthetic_images, noise):
            assert _max_tensor_error(images, size, seed=size) < TENSOR_TOLERANCE, size


def test_eval_transform_matches_resize_and_centre_crop(tiny_root):
    size = 64
    images = torch.from_numpy(np.array(load_packed(tiny_root).test_images))
    pipeline = T.Compose([T.Resize(upscaled_size(size), antialias=False), T.CenterCrop(size), T.Normalize(MEAN, STD)])
    reference = torch.stack([pipeline(image.permute(2, 0, 1).float() / 255) for image in images])
    ours = transform_batch(images, size, **NORM)
    assert (ours - reference).abs().max().item() < TENSOR_TOLERANCE
    # (73 - 64) / 2 = 4.5 rounds half to even, as torchvision's center_crop does
    assert AUGMENTATIONS["upscale-crop-flip"].centre(size, 64) == 4


# PIL resamples 8-bit images in fixed point and rounds its output to whole grey levels: docs/data.md promises at
# most one grey level of difference (measured: 1.0001 levels at most, the excess being float rounding; 0.3
# on average). Differences are compared in grey levels, i.e. times 255 * std of their channel.
PIL_MAX_LEVELS = 1.001
PIL_MEAN_LEVELS = 0.5


def _pil_levels(images: np.ndarray, size: int) -> torch.Tensor:
    pipeline = T.Compose([T.Resize(upscaled_size(size)), T.CenterCrop(size), T.ToTensor(), T.Normalize(MEAN, STD)])
    reference = torch.stack([pipeline(Image.fromarray(image)) for image in images])
    difference = (transform_batch(torch.from_numpy(images), size, **NORM) - reference).abs()
    return difference * 255 * torch.tensor(STD).view(1, 3, 1, 1)


@pytest.mark.parametrize("size", [32, 64])
def test_eval_transform_is_within_one_grey_level_of_the_pil_pipeline(tiny_root, size):
    levels = _pil_levels(np.array(load_packed(tiny_root).test_images), size)
    assert levels.max().item() <= PIL_MAX_LEVELS
    assert levels.mean().item() < PIL_MEAN_LEVELS


def test_eval_transform_is_within_one_grey_level_of_pil_over_many_images_and_sizes(tmp_path):
    make_synthetic(tmp_path, classes=10, train_per_class=10, val_per_class=1, seed=4)
    images = np.array(load_packed(tmp_path).train_images)
    for size in (16, 32, 48, 64, 128, 224):
        levels = _pil_levels(images, size)
        assert levels.max().item() <= PIL_MAX_LEVELS, size
        assert levels.mean().item() < PIL_MEAN_LEVELS, size


def test_channels_last_output_has_the_same_values(tiny_root):
    images = torch.from_numpy(np.array(load_packed(tiny_root).train_images[:4]))
    plain = transform_batch(images, 32)
    last = transform_batch(images, 32, channels_last=True)
    assert last.is_contiguous(memory_format=torch.channels_last)
    assert not plain.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(plain, last)


# ----------------------------------------------------------------------------------------------------
# shuffling, sharding and the last batch


def _indexed_images(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Images whose labels are their own indices, so batches reveal which samples they hold."""
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, 64, 64, 3), dtype=np.uint8), np.arange(n)


def _epoch(loader: DeviceLoader, epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    loader.set_epoch(epoch)
    return list(loader)


def test_same_seed_and_epoch_give_the_same_batches():
    images, labels = _indexed_images(23)

    def make():
        return DeviceLoader(images, labels, batch_size=8, image_size=32, train=True, device="cpu", seed=5)

    a, b = _epoch(make(), 3), _epoch(make(), 3)
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))
    other_epoch = _epoch(make(), 4)
    assert not torch.equal(torch.cat([y for _, y in a]), torch.cat([y for _, y in other_epoch]))
    other_seed = _epoch(DeviceLoader(images, labels, batch_size=8, image_size=32, train=True, device="cpu", seed=6), 3)
    assert not torch.equal(torch.cat([y for _, y in a]), torch.cat([y for _, y in other_seed]))


def test_training_batches_are_all_full_and_no_image_repeats_within_an_epoch():
    images, labels = _indexed_images(23)
    loader = DeviceLoader(images, labels, batch_size=8, image_size=32, train=True, device="cpu")
    batches = _epoch(loader, 0)
    assert len(loader) == len(batches) == 2 and [len(y) for _, y in batches] == [8, 8]  # one static shape
    seen = torch.cat([y for _, y in batches]).tolist()
    assert len(set(seen)) == len(seen) == 16
    # the 7 left over wait for another epoch's shuffle: over a few epochs every image is drawn
    drawn = set()
    for epoch in range(8):
        drawn |= set(torch.cat([y for _, y in _epoch(loader, epoch)]).tolist())
    assert drawn == set(range(23))


def test_evaluation_covers_every_image_once_in_near_equal_batches():
    images, labels = _indexed_images(23)
    loader = DeviceLoader(images, labels, batch_size=8, image_size=32, train=False, device="cpu")
    batches = list(loader)
    assert [len(y) for _, y in batches] == [8, 8, 7]
    assert torch.cat([y for _, y in batches]).tolist() == list(range(23))


def test_a_training_loader_as_evaluation_gives_full_batches_in_order_and_centre_crops():
    """The bench's inference stream: one batch shape, the images in order, the evaluation transform, and the
    training loader's own images on the device (no second copy)."""
    images, labels = _indexed_images(23)
    train = DeviceLoader(images, labels, batch_size=8, image_size=32, train=True, device="cpu")
    loader = train.as_evaluation()
    batches = list(loader)
    assert len(loader) == 2 and [len(y) for _, y in batches] == [8, 8]
    assert torch.cat([y for _, y in batches]).tolist() == list(range(16))
    every = DeviceLoader(images, labels, batch_size=8, image_size=32, train=False, device="cpu")
    assert torch.equal(batches[0][0], next(iter(every))[0][:8])
    assert loader.images.data_ptr() == train.images.data_ptr() and train.train


@pytest.mark.parametrize("n, world_size, batch_size", [(23, 3, 4), (24, 4, 6), (17, 2, 8)])
def test_rank_shards_are_disjoint_full_and_step_together(n, world_size, batch_size):
    images, labels = _indexed_images(n)
    loaders = [
        DeviceLoader(
            images,
            labels,
            batch_size=batch_size,
            image_size=32,
            train=True,
            device="cpu",
            rank=r,
            world_size=world_size,
        )
        for r in range(world_size)
    ]
    shards = [torch.cat([y for _, y in _epoch(loader, 1)]).tolist() for loader in loaders]
    everything = sum(shards, [])
    assert len(set(everything)) == len(everything) == (n // (batch_size * world_size)) * batch_size * world_size
    assert [len(s) for s in shards] == [len(everything) // world_size] * world_size
    assert len({len(loader) for loader in loaders}) == 1
    for loader in loaders:
        assert {len(y) for _, y in loader} == {batch_size}
    # the ranks split one shuffle: together they hold its first positions, rank r every world_size-th
    order = torch.randperm(n, generator=epoch_generator(0, 1))[: len(everything)].tolist()
    for rank, shard in enumerate(shards):
        assert shard == order[rank::world_size]


def test_a_batch_larger_than_the_split_is_one_line():
    images, labels = _indexed_images(10)
    with pytest.raises(ArchbenchError, match="needs at least 16 training images, but the split holds 10"):
        DeviceLoader(images, labels, batch_size=8, image_size=32, train=True, device="cpu", world_size=2)


def test_augmentation_of_a_sample_does_not_depend_on_world_size():
    images, labels = _indexed_images(12)
    single = DeviceLoader(images, labels, batch_size=12, image_size=32, train=True, device="cpu", seed=2)
    x_single, y_single = next(iter(single))
    by_label = {int(y): x for x, y in zip(x_single, y_single)}
    for rank in range(3):
        shard = DeviceLoader(
            images, labels, batch_size=4, image_size=32, train=True, device="cpu", seed=2, rank=rank, world_size=3
        )
        for x, y in shard:
            for xi, yi in zip(x, y):
                assert torch.equal(xi, by_label[int(yi)])


def test_eval_loader_keeps_order_and_centre_crops(tiny_root):
    data = load_packed(tiny_root)
    loader = DeviceLoader(data.test_images, data.test_labels, batch_size=4, image_size=32, train=False, device="cpu")
    batches = list(loader)
    assert torch.equal(torch.cat([y for _, y in batches]), torch.from_numpy(np.array(data.test_labels)))
    expected = transform_batch(torch.from_numpy(np.array(data.test_images)), 32)
    assert torch.equal(torch.cat([x for x, _ in batches]), expected)


def test_train_loader_crops_and_flips_vary_over_epochs(tiny_root):
    data = load_packed(tiny_root)
    loader = DeviceLoader(data.train_images, data.train_labels, batch_size=12, image_size=32, train=True, device="cpu")
    _, offsets0, flips0 = loader.epoch_plan()
    loader.set_epoch(1)
    _, offsets1, flips1 = loader.epoch_plan()
    room = upscaled_size(32) - 32
    assert offsets0.min() >= 0 and offsets0.max() <= room and not torch.equal(offsets0, offsets1)
    assert 0 < int(flips0.sum()) + int(flips1.sum()) < 24


def test_eval_shards_of_the_ranks_cover_every_image_once():
    images, labels = _indexed_images(23)
    for world_size in (2, 3):
        shards = [
            torch.cat(
                [
                    y
                    for _, y in DeviceLoader(
                        images,
                        labels,
                        batch_size=4,
                        image_size=32,
                        train=False,
                        device="cpu",
                        rank=r,
                        world_size=world_size,
                    )
                ]
            ).tolist()
            for r in range(world_size)
        ]
        assert sorted(sum(shards, [])) == list(range(23)), world_size


# The augmentation's distribution, read back from the loader's output images: 20,000 copies of one image whose
# red channel rises left to right and green top to bottom. A crop's mean red level fixes its left offset and
# its mean green its top (a flip leaves both means alone), which torchvision's resize + crop of the same image
# at each offset gives; the flip shows as red falling instead of rising across the crop.
DRAWS = 20_000
SIZE = 32  # U = 37: offsets 0..5 on each axis


def _ramp_image(side: int = 16) -> np.ndarray:
    ramp = np.linspace(0, 240, side).astype(np.uint8)
    image = np.full((side, side, 3), 128, dtype=np.uint8)
    image[..., 0] = ramp[None, :]
    image[..., 1] = ramp[:, None]
    return image


def _offset_of(means: torch.Tensor, by_offset: torch.Tensor) -> torch.Tensor:
    """The offset whose reference mean is nearest; every mean must be one of the references."""
    distance = (means[:, None] - by_offset[None, :]).abs()
    assert distance.min(1).values.max().item() < 1e-4, "an output is no torchvision crop of the image"
    return distance.argmin(1)


def test_flips_are_fair_and_crops_take_every_offset_evenly():
    image = _ramp_image()
    loader = DeviceLoader(
        np.repeat(image[None], DRAWS, axis=0),
        np.zeros(DRAWS, dtype=np.int64),
        batch_size=2000,
        image_size=SIZE,
        train=True,
        device="cpu",
        seed=11,
        **NORM,
    )
    out = torch.cat([x for x, _ in loader])
    assert len(out) == DRAWS
    room = upscaled_size(SIZE) - SIZE
    references = torch.stack([_tensor_reference(torch.from_numpy(image), SIZE, o, o, False) for o in range(room + 1)])
    left = _offset_of(out[:, 0].mean((1, 2)), references[:, 0].mean((1, 2)))
    top = _offset_of(out[:, 1].mean((1, 2)), references[:, 1].mean((1, 2)))
    for axis, offsets in (("left", left), ("top", top)):
        counts = torch.bincount(offsets, minlength=room + 1)
        assert len(counts) == room + 1 and counts.min() > 0, (axis, counts)  # 0 and room both reached
        share = counts.float() / DRAWS  # uniform: 1/6 each, +-0.0026 one standard deviation
        assert (share - 1 / (room + 1)).abs().max() < 0.02, (axis, share)
    rising = out[:, 0, :, SIZE // 2 :].mean((1, 2)) > out[:, 0, :, : SIZE // 2].mean((1, 2))
    flip_rate = 1 - rising.float().mean().item()
    assert 0.48 <= flip_rate <= 0.52, flip_rate  # 0.5 +- 0.0035 is one standard deviation
    assert abs(torch.corrcoef(torch.stack([left.float(), top.float()]))[0, 1].item()) < 0.05  # drawn apart


def test_the_epoch_plan_draws_every_offset_and_half_the_flips():
    """The same distribution from the plan itself, at the study's size (offsets 0..32) and on each rank."""
    room = upscaled_size(224) - 224
    for rank in range(2):
        loader = DeviceLoader(
            np.zeros((DRAWS, 2, 2, 3), dtype=np.uint8),
            np.arange(DRAWS),
            batch_size=1000,
            image_size=224,
            train=True,
            device="cpu",
            rank=rank,
            world_size=2,
        )
        _, offsets, flips = loader.epoch_plan()
        assert len(offsets) == DRAWS // 2
        for axis in range(2):
            assert torch.bincount(offsets[:, axis], minlength=room + 1).min() > 0 and offsets.max() == room
        assert 0.47 <= flips.float().mean().item() <= 0.53  # 10,000 draws: +-0.005 one standard deviation


# ----------------------------------------------------------------------------------------------------
# the CLI


def test_cli_synth_and_prepare_from_folder(tmp_path):
    runner = CliRunner()
    synth = runner.invoke(
        app,
        [
            "data",
            "synth",
            "--root",
            str(tmp_path / "syn"),
            "--classes",
            "3",
            "--train-per-class",
            "3",
            "--test-per-class",
            "2",
        ],
    )
    assert synth.exit_code == 0, synth.output
    assert "ready:" in synth.output and "3 classes" in synth.output and "test 6" in synth.output
    prepared = runner.invoke(
        app, ["data", "prepare", "--root", str(tmp_path / "copy"), "--source", str(tmp_path / "syn" / LAYOUT_DIR)]
    )
    assert prepared.exit_code == 0, prepared.output
    assert load_packed(tmp_path / "copy").fingerprint == load_packed(tmp_path / "syn").fingerprint


def test_cli_bad_input_is_one_line_and_exit_2(layout, tmp_path):
    bad = _first_train_image(layout)
    bad.write_bytes(bad.read_bytes()[:200])
    result = CliRunner().invoke(app, ["data", "prepare", "--root", str(tmp_path / "root"), "--source", str(layout)])
    assert result.exit_code == 2
    assert "Traceback" not in result.output and bad.name in result.stderr
    assert result.stderr.startswith("error:") and len(result.stderr.strip().splitlines()) == 1
