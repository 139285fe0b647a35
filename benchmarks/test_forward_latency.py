"""Forward latency of every registry model, each beside torchvision's identical architecture.

Run it with the command whose JSON `archbench report` reads:

    pytest benchmarks/test_forward_latency.py --benchmark-json benchmarks/forward_latency.json

(not part of the default `pytest` run, whose testpaths is tests/; add e.g. `--benchmark-max-time 0.5`
for a quicker, noisier pass).

What is measured: one forward pass in eval mode under `torch.inference_mode()`, 200 classes, at batch 1
and batch 32, float32. Image size: 224x224 on CUDA; on CPU 64x64 (Tiny-ImageNet's native size), which
keeps the whole module at about three minutes on 2 cores. Each archbench model is paired with its
torchvision twin (`resnet18(zero_init_residual=True)`, `vgg11`, `vgg11_bn`, `vgg16`, `vgg16_bn`);
`resnet18_plain` has none and is measured alone. The twin's weights are loaded into archbench's model
(identity key mapping) and the outputs checked equal, so both compute the same function on the same
input, and the pair runs back to back in the same session (archbench first at batch 1, torchvision
first at batch 32): their median ratio is the number to read. On a shared machine, other processes'
load shows up as rounds many times slower than the rest (two intra-op threads wait on each other when
either is descheduled); set ARCHBENCH_BENCH_THREADS=1 there for steadier ratios, and rerun when a
pair's medians disagree with their minima.

Memory format, always the same for both implementations of a pair: channels_last on CUDA; on CPU
channels_last for the VGGs (clearly faster at batch 32 on 2 cores) and the default contiguous NCHW for
the ResNets (channels_last was slower for them there). `benchmark.extra_info` records model, impl,
batch, image_size, device, memory_format and threads (torch's intra-op threads).

`test_archbench_runs_as_fast_as_its_torchvision_twin` asserts what the pairs exist to show, measured in one
test per pair so that it holds in any test order: at the larger batch, rounds of the two implementations
alternate, and the ratio of their fastest rounds must lie within `RATIO_BOUNDS` (the same function on the
same input; measured within 10% of 1 on a shared 2-core CPU; the bounds are generous on purpose).
"""

from __future__ import annotations

import functools
import os
import time

import pytest
import torch
import torchvision.models as tvm

from archbench.registry import build_model, get_entry, list_models

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
IMAGE_SIZE = 224 if DEVICE.type == "cuda" else 64
NUM_CLASSES = 200
BATCHES = (1, 32)
WARMUP_CALLS = 2  # oneDNN / cuDNN pick and cache their kernels on the first calls of a shape
RATIO_ROUNDS = 7
RATIO_BOUNDS = (0.5, 2.0)  # archbench's time over torchvision's
if os.environ.get("ARCHBENCH_BENCH_THREADS"):
    torch.set_num_threads(int(os.environ["ARCHBENCH_BENCH_THREADS"]))

TORCHVISION_TWINS = {
    "resnet18": lambda: tvm.resnet18(num_classes=NUM_CLASSES, zero_init_residual=True),
    "vgg11": lambda: tvm.vgg11(num_classes=NUM_CLASSES),
    "vgg11_bn": lambda: tvm.vgg11_bn(num_classes=NUM_CLASSES),
    "vgg16": lambda: tvm.vgg16(num_classes=NUM_CLASSES),
    "vgg16_bn": lambda: tvm.vgg16_bn(num_classes=NUM_CLASSES),
}


def memory_format(name: str) -> torch.memory_format:
    if DEVICE.type == "cuda" or get_entry(name).builder == "vgg":
        return torch.channels_last
    return torch.contiguous_format


def _cases() -> list:
    cases = []
    for name in list_models():
        impls = ("archbench", "torchvision") if name in TORCHVISION_TWINS else ("archbench",)
        for i, batch in enumerate(BATCHES):
            for impl in impls if i % 2 == 0 else impls[::-1]:  # alternate which one goes first
                cases.append(pytest.param(name, batch, impl, id=f"{name}-b{batch}-{impl}"))
    return cases


@functools.lru_cache(maxsize=1)  # cases come model by model: keep one pair of models alive at a time
def models(name: str) -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    fmt = memory_format(name)
    pair = {"archbench": build_model(name, num_classes=NUM_CLASSES)}
    if name in TORCHVISION_TWINS:
        pair["torchvision"] = TORCHVISION_TWINS[name]()
        pair["archbench"].load_state_dict(pair["torchvision"].state_dict())
    return {impl: m.eval().to(DEVICE, memory_format=fmt) for impl, m in pair.items()}


def _sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


@pytest.mark.parametrize(("name", "batch", "impl"), _cases())
def test_forward_latency(benchmark, name: str, batch: int, impl: str) -> None:
    pair = models(name)
    model = pair[impl]
    fmt = memory_format(name)
    generator = torch.Generator().manual_seed(batch)
    x = torch.randn(batch, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator).to(DEVICE, memory_format=fmt)

    def forward() -> torch.Tensor:
        out = model(x)
        _sync()
        return out

    benchmark.group = f"{name}-b{batch}"
    benchmark.extra_info.update(
        model=name,
        impl=impl,
        batch=batch,
        image_size=IMAGE_SIZE,
        device=str(DEVICE),
        memory_format="channels_last" if fmt == torch.channels_last else "contiguous",
        threads=torch.get_num_threads(),
    )
    with torch.inference_mode():
        if impl == "archbench" and "torchvision" in pair and batch == BATCHES[0]:  # same function, same output
            torch.testing.assert_close(model(x), pair["torchvision"](x), rtol=1e-4, atol=1e-4)
        for _ in range(WARMUP_CALLS):
            forward()
        out = benchmark(forward)
    assert out.shape == (batch, NUM_CLASSES)


@pytest.mark.parametrize("name", list(TORCHVISION_TWINS))
def test_archbench_runs_as_fast_as_its_torchvision_twin(name: str) -> None:
    pair = models(name)
    batch = BATCHES[-1]
    generator = torch.Generator().manual_seed(batch)
    x = torch.randn(batch, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator).to(DEVICE, memory_format=memory_format(name))
    seconds: dict[str, list[float]] = {impl: [] for impl in pair}
    with torch.inference_mode():
        for model in pair.values():
            for _ in range(WARMUP_CALLS):
                model(x)
        for r in range(RATIO_ROUNDS):
            for impl in ("archbench", "torchvision") if r % 2 == 0 else ("torchvision", "archbench"):
                _sync()
                start = time.perf_counter()
                pair[impl](x)
                _sync()
                seconds[impl].append(time.perf_counter() - start)
    ratio = min(seconds["archbench"]) / min(seconds["torchvision"])
    assert RATIO_BOUNDS[0] < ratio < RATIO_BOUNDS[1], seconds
