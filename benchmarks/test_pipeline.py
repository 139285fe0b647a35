"""Input-pipeline throughput: archbench's DeviceLoader against torchvision's ImageFolder + PIL + DataLoader.

    pytest benchmarks/test_pipeline.py --benchmark-json benchmarks/pipeline.json

Both pipelines make training batches (random crop, flip, normalise) of the same output size S from the
same synthetic train folder (10 classes x 100 JPEGs in the Tiny-ImageNet layout): archbench from the
packed uint8 array already on the device, torchvision by decoding the JPEGs in 2 worker processes every
epoch, as a folder-based training script would. One round is one epoch; worker start-up is kept out by
persistent workers and a warm-up round. S is 64 on CPU (224 on a GPU, the study's size).

The first two tests are pytest-benchmark measurements of each pipeline (images/s in ``extra_info``). The
third is the claim they exist to show, measured in one test so that it holds whatever order the tests run
in: epochs of the two pipelines alternate, and the ratio of their median images/s must exceed
`MIN_RATIO` (measured: about 9x on a shared 2-core CPU; the bound is generous on purpose).

The last measures what one batch costs the loader against what it costs the model: the gather of the
batch's uint8 images plus `transform_batch` (written in the training dtype and memory format in one pass),
against ResNet-18's training forward on that batch (the cheapest forward of the registry, so the hardest
case). pytest-benchmark times the transform; rounds of the two alternate for their ratio, which must stay
under `MAX_TRANSFORM_OVER_FORWARD` (`benchmarks/gpu.sh` records the same ratio on a GPU).

On CPU the archbench pipeline runs with ONE intra-op thread, against torchvision's two worker processes:
this understates archbench, but on a busy machine two OpenMP threads that wait for each other at every
op made it up to 10x slower and the ratio meaningless (measured on a shared 2-core machine).
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable

import pytest
import torch
from torch.utils.data import DataLoader
from torchvision import datasets
from torchvision import transforms as T

from archbench.data.loader import DeviceLoader, transform_batch, upscaled_size
from archbench.data.synthetic import LAYOUT_DIR, make_synthetic
from archbench.data.tinyimagenet import load_packed
from archbench.registry import build_model

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
IMAGE_SIZE = 224 if DEVICE.type == "cuda" else 64
BATCH_SIZE = 64
ROUNDS = 5
MIN_RATIO = 1.5  # archbench images/s over torchvision's, medians of epochs measured in the same test
# Seconds of a batch's transform over those of ResNet-18's training forward on it, medians of alternating
# rounds (measured: about 0.03 at S=64, batch 64, one thread on a shared 2-core CPU; generous on purpose).
MAX_TRANSFORM_OVER_FORWARD = 0.3


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    make_synthetic(root, classes=10, train_per_class=100, val_per_class=20, seed=0)
    return root


def _synchronise() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


@contextlib.contextmanager
def _threads_for_archbench():
    """One intra-op thread on the CPU (see the module's docstring); nothing changes on a GPU."""
    if DEVICE.type != "cpu":
        yield None
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield 1
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def archbench_epoch(synthetic_root) -> Callable[[], int]:
    """One epoch of archbench's pipeline; returns the images it made."""
    data = load_packed(synthetic_root)
    loader = DeviceLoader(
        data.train_images,
        data.train_labels,
        batch_size=BATCH_SIZE,
        image_size=IMAGE_SIZE,
        train=True,
        device=DEVICE,
        **data.transform,
    )
    epochs = iter(range(10**6))

    def epoch() -> int:
        with _threads_for_archbench():
            loader.set_epoch(next(epochs))  # the per-epoch shuffle and augmentation draw are part of the cost
            seen = sum(len(y) for _, y in loader)
            _synchronise()
        return seen

    return epoch


@pytest.fixture(scope="module")
def torchvision_epoch(synthetic_root) -> Callable[[], int]:
    """One epoch of ImageFolder + PIL + DataLoader (2 persistent workers), batches moved to the device."""
    normalisation = load_packed(synthetic_root).transform
    transform = T.Compose(
        [
            T.Resize(upscaled_size(IMAGE_SIZE)),
            T.RandomCrop(IMAGE_SIZE),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(normalisation["mean"], normalisation["std"]),
        ]
    )
    dataset = datasets.ImageFolder(synthetic_root / LAYOUT_DIR / "train", transform=transform)
    loader = DataLoader(
        dataset,
        batch_size=BATCH_SIZE,
        shuffle=True,
        num_workers=2,
        persistent_workers=True,
        pin_memory=DEVICE.type == "cuda",
    )

    def epoch() -> int:
        seen = 0
        for x, y in loader:
            x, y = x.to(DEVICE, non_blocking=True), y.to(DEVICE, non_blocking=True)
            seen += len(y)
        _synchronise()
        return seen

    return epoch


def _record(benchmark, impl: str, images: int) -> float:
    rate = images / benchmark.stats.stats.median
    benchmark.extra_info.update(
        {
            "impl": impl,
            "images_per_epoch": images,
            "image_size": IMAGE_SIZE,
            "batch": BATCH_SIZE,
            "device": str(DEVICE),
            "images_per_s": rate,
        }
    )
    return rate


def test_archbench_device_loader(benchmark, archbench_epoch):
    seen = benchmark.pedantic(archbench_epoch, rounds=ROUNDS, warmup_rounds=1, iterations=1)
    assert _record(benchmark, "archbench", seen) > 0
    benchmark.extra_info["cpu_threads"] = 1 if DEVICE.type == "cpu" else None


def test_torchvision_imagefolder_pipeline(benchmark, torchvision_epoch):
    seen = benchmark.pedantic(torchvision_epoch, rounds=ROUNDS, warmup_rounds=1, iterations=1)
    assert _record(benchmark, "torchvision", seen) > 0


def _images_per_s(epoch: Callable[[], int]) -> float:
    start = time.perf_counter()
    images = epoch()
    return images / (time.perf_counter() - start)


def test_archbench_pipeline_outpaces_imagefolder(archbench_epoch, torchvision_epoch, capsys):
    """The ratio the benchmark exists to show, measured here alone: epochs alternate, a warm-up epoch each
    first (worker start-up, kernel caches), then the medians of `ROUNDS` epochs per pipeline."""
    archbench_epoch(), torchvision_epoch()
    rates: dict[str, list[float]] = {"archbench": [], "torchvision": []}
    for _ in range(ROUNDS):
        rates["archbench"].append(_images_per_s(archbench_epoch))
        rates["torchvision"].append(_images_per_s(torchvision_epoch))
    ours, theirs = (statistics.median(rates[k]) for k in ("archbench", "torchvision"))
    with capsys.disabled():
        print(
            f"\ninput pipeline at S={IMAGE_SIZE} on {DEVICE}: archbench {ours:,.0f} img/s, torchvision "
            f"ImageFolder+PIL+DataLoader(2 workers) {theirs:,.0f} img/s, ratio {ours / theirs:.1f}x"
        )
    assert ours / theirs > MIN_RATIO, rates


def loader_format(cuda: bool) -> torch.memory_format:
    return torch.channels_last if cuda else torch.contiguous_format


def _seconds(fn: Callable[[], object]) -> float:
    _synchronise()
    start = time.perf_counter()
    fn()
    _synchronise()
    return time.perf_counter() - start


def test_batch_transform_against_the_forward(benchmark, synthetic_root, capsys):
    """One training batch: the loader's gather + transform against the model's forward on it, in the training
    dtype and memory format of the device (fp32, contiguous on the CPU; bf16, channels_last on CUDA)."""
    cuda = DEVICE.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    data = load_packed(synthetic_root)
    loader = DeviceLoader(
        data.train_images,
        data.train_labels,
        batch_size=BATCH_SIZE,
        image_size=IMAGE_SIZE,
        train=True,
        device=DEVICE,
        channels_last=cuda,
        dtype=dtype,
        **data.transform,
    )
    indices, offsets, flips = (t[:BATCH_SIZE] for t in loader.epoch_plan())  # the first batch's draw

    def transform() -> torch.Tensor:
        return transform_batch(
            loader.images[indices], IMAGE_SIZE, offsets, flips, loader.channels_last, dtype, **data.transform
        )

    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=200).to(DEVICE, memory_format=loader_format(cuda))
    x = transform()

    def forward() -> None:
        with torch.autocast(DEVICE.type, dtype=dtype, enabled=cuda):
            model(x)

    with _threads_for_archbench():
        benchmark.pedantic(transform, rounds=ROUNDS, warmup_rounds=1, iterations=1)
        forward()  # kernels picked and caches warm, as the transform's were by its warm-up round
        seconds: dict[str, list[float]] = {"transform": [], "forward": []}
        for _ in range(ROUNDS):
            seconds["transform"].append(_seconds(transform))
            seconds["forward"].append(_seconds(forward))
    ratio = statistics.median(seconds["transform"]) / statistics.median(seconds["forward"])
    benchmark.extra_info.update(
        {"impl": "transform", "image_size": IMAGE_SIZE, "batch": BATCH_SIZE, "device": str(DEVICE)},
        transform_over_forward=ratio,
    )
    with capsys.disabled():
        print(
            f"\nbatch transform / ResNet-18 training forward at S={IMAGE_SIZE}, batch {BATCH_SIZE} on {DEVICE}: "
            f"{ratio:.3f}"
        )
    assert ratio < MAX_TRANSFORM_OVER_FORWARD, seconds
