"""Input-pipeline throughput: archbench's DeviceLoader against torchvision's ImageFolder + PIL + DataLoader.

    pytest benchmarks/test_pipeline.py --benchmark-json benchmarks/pipeline.json

Both pipelines make training batches (random crop, flip, normalise) of the same output size S from the
same synthetic train folder (10 classes x 100 JPEGs in the Tiny-ImageNet layout): archbench from the
packed uint8 array already on the device, torchvision by decoding the JPEGs in 2 worker processes every
epoch, as a folder-based training script would. One round is one epoch; worker start-up is kept out by
persistent workers and a warm-up round. S is 64 on CPU (224 on a GPU, the study's size). The second test
stores images/s of both and their ratio in its ``extra_info`` and prints them.

On CPU the archbench pipeline runs with ONE intra-op thread, against torchvision's two worker processes:
this understates archbench, but on a busy machine two OpenMP threads that wait for each other at every
op made it up to 10x slower and the ratio meaningless (measured on a shared 2-core machine).
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader
from torchvision import datasets, transforms as T

from archbench.data.loader import IMAGENET_MEAN, IMAGENET_STD, DeviceLoader, upscaled_size
from archbench.data.synthetic import LAYOUT_DIR, make_synthetic
from archbench.data.tinyimagenet import load_packed

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
IMAGE_SIZE = 224 if DEVICE.type == "cuda" else 64
BATCH_SIZE = 64
ROUNDS = 5
images_per_s: dict[str, float] = {}


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    make_synthetic(root, classes=10, train_per_class=100, val_per_class=20, seed=0)
    return root


def _synchronise() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def _record(benchmark, impl: str, images: int) -> float:
    rate = images / benchmark.stats.stats.median
    images_per_s[impl] = rate
    benchmark.extra_info.update(
        {"impl": impl, "images_per_epoch": images, "image_size": IMAGE_SIZE, "batch": BATCH_SIZE, "device": str(DEVICE), "images_per_s": rate}
    )
    return rate


@pytest.fixture
def one_cpu_thread():
    if DEVICE.type != "cpu":
        yield None
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield 1
    torch.set_num_threads(threads)


def test_archbench_device_loader(benchmark, synthetic_root, one_cpu_thread):
    data = load_packed(synthetic_root)
    loader = DeviceLoader(data.train_images, data.train_labels, batch_size=BATCH_SIZE, image_size=IMAGE_SIZE, train=True, device=DEVICE)
    epochs = iter(range(10**6))

    def epoch() -> int:
        loader.set_epoch(next(epochs))  # the per-epoch shuffle and augmentation draw are part of the cost
        seen = sum(len(y) for _, y in loader)
        _synchronise()
        return seen

    seen = benchmark.pedantic(epoch, rounds=ROUNDS, warmup_rounds=1, iterations=1)
    _record(benchmark, "archbench", seen)
    benchmark.extra_info["cpu_threads"] = one_cpu_thread


def test_torchvision_imagefolder_pipeline(benchmark, synthetic_root, capsys):
    upscaled = upscaled_size(IMAGE_SIZE)
    transform = T.Compose(
        [T.Resize(upscaled), T.RandomCrop(IMAGE_SIZE), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    )
    dataset = datasets.ImageFolder(synthetic_root / LAYOUT_DIR / "train", transform=transform)
    loader = DataLoader(
        dataset, batch_size=BATCH_SIZE, shuffle=True, num_workers=2, persistent_workers=True, pin_memory=DEVICE.type == "cuda"
    )

    def epoch() -> int:
        seen = 0
        for x, y in loader:
            x, y = x.to(DEVICE, non_blocking=True), y.to(DEVICE, non_blocking=True)
            seen += len(y)
        _synchronise()
        return seen

    seen = benchmark.pedantic(epoch, rounds=ROUNDS, warmup_rounds=1, iterations=1)
    rate = _record(benchmark, "torchvision", seen)
    if "archbench" in images_per_s:
        ratio = images_per_s["archbench"] / rate
        benchmark.extra_info["archbench_images_per_s"] = images_per_s["archbench"]
        benchmark.extra_info["ratio_archbench_over_torchvision"] = ratio
        with capsys.disabled():
            print(
                f"\ninput pipeline at S={IMAGE_SIZE} on {DEVICE}: archbench {images_per_s['archbench']:,.0f} img/s, "
                f"torchvision ImageFolder+PIL+DataLoader(2 workers) {rate:,.0f} img/s, ratio {ratio:.1f}x"
            )
