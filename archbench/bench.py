"""`archbench bench`: images/s of each model, with and without the input pipeline, in one process.

For every model four numbers, each the median of `ROUNDS` interleaved measurements so that a slow
spell of the machine hits both sides of a ratio alike:
- train, model-only: forward + backward + SGD step on one fixed batch already on the device;
- train, end-to-end: the same step fed by the real DeviceLoader (upscale, random crop, flip, normalise);
- inference, model-only and end-to-end: forward passes in eval mode under inference_mode.
end-to-end / model-only is the input pipeline's efficiency: 1.0 means it costs nothing.
"""

from __future__ import annotations

import itertools
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from rich import box
from rich.console import Console
from rich.table import Table

from archbench import distributed
from archbench.provenance import provenance
from archbench.registry import build_model, get_entry
from archbench.train import autocast_factory, resolve_device, resolve_precision

ROUNDS = 3
WARMUP_STEPS = 3


@dataclass
class BenchRequest:
    models: list[str]
    device: str = "auto"
    image_size: int = 224
    batch_size: int = 64
    steps: int = 20
    precision: str = "auto"
    channels_last: bool | None = None
    compile: bool = False
    num_classes: int = 200
    data: str = "synthetic"
    out: Path | None = None
    registry: Path | None = None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _images_per_s(step, batches, steps: int, device: torch.device) -> float:
    for _ in range(WARMUP_STEPS):
        step(next(batches))
    _sync(device)
    images = 0
    start = time.perf_counter()
    for _ in range(steps):
        batch = next(batches)
        images += len(batch[1])
        step(batch)
    _sync(device)
    return images / (time.perf_counter() - start)


def bench_model(name: str, request: BenchRequest, data, device: torch.device) -> dict:
    from archbench.data.loader import DeviceLoader

    precision = resolve_precision(request.precision, device)
    autocast = autocast_factory(device, precision)
    channels_last = request.channels_last if request.channels_last is not None else device.type == "cuda"
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    torch.manual_seed(0)
    model = build_model(name, registry=request.registry, num_classes=request.num_classes)
    model = model.to(device, memory_format=memory_format)
    forward = torch.compile(model) if request.compile else model
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def train_step(batch):
        x, y = batch
        with autocast():
            loss = F.cross_entropy(forward(x), y % request.num_classes)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def infer_step(batch):
        with torch.inference_mode(), autocast():
            forward(batch[0])

    loader = DeviceLoader(  # the split is uploaded once; `train` switches augmentation on and off
        data.train_images, data.train_labels, batch_size=request.batch_size, image_size=request.image_size,
        train=True, device=device, seed=0, channels_last=channels_last,
    )

    def loader_batches():
        for epoch in itertools.count():
            loader.set_epoch(epoch)
            yield from loader

    fixed = next(loader_batches())
    results = {}
    for mode, step in (("train", train_step), ("inference", infer_step)):
        model.train(mode == "train")
        loader.train = mode == "train"
        streams = {"model_only": itertools.repeat(fixed), "end_to_end": loader_batches()}
        samples = {kind: [] for kind in streams}
        for _ in range(ROUNDS):
            for kind, batches in streams.items():
                samples[kind].append(_images_per_s(step, batches, request.steps, device))
        model_only, end_to_end = (statistics.median(samples[k]) for k in ("model_only", "end_to_end"))
        results[mode] = {"model_only": model_only, "end_to_end": end_to_end, "ratio": end_to_end / model_only}
    return {"model": name, "precision": precision, "channels_last": channels_last, **results}


def run_bench(request: BenchRequest, console: Console | None = None) -> list[dict]:
    from archbench.data import resolve

    console = console or Console()
    for name in request.models:
        get_entry(name, registry=request.registry)  # unknown names fail before anything runs
    device = resolve_device(request.device, distributed.Dist())
    torch.backends.cudnn.benchmark = True  # as in training
    data = resolve(request.data, console=console)
    rows = [bench_model(name, request, data, device) for name in request.models]

    info = provenance(device)
    table = Table(
        title=f"archbench bench: {info['device_name']}, torch {info['torch']}, "
        f"S={request.image_size}, batch {request.batch_size}, compile={'on' if request.compile else 'off'}",
        caption=f"images/s, median of {ROUNDS} interleaved rounds of {request.steps} steps; model: a fixed batch on the "
        "device; e2e: fed by the input pipeline; ratio = e2e / model (the pipeline's efficiency)",
        box=box.SIMPLE,
    )
    for column in ("model", "precision", "train\nmodel", "train\ne2e", "train\nratio", "infer\nmodel", "infer\ne2e",
                   "infer\nratio"):
        table.add_column(column, justify="left" if column in ("model", "precision") else "right")
    for r in rows:
        fmt = f"{r['precision']}{' +CL' if r['channels_last'] else ''}"
        table.add_row(
            r["model"], fmt,
            *(f"{r[m][k]:.{3 if k == 'ratio' else 0}f}" for m in ("train", "inference") for k in ("model_only", "end_to_end", "ratio")),
        )
    console.print(table)
    if request.out:
        request.out.parent.mkdir(parents=True, exist_ok=True)
        payload = {"request": {k: str(v) if isinstance(v, Path) else v for k, v in vars(request).items()},
                   "provenance": info, "rounds": ROUNDS, "results": rows}
        request.out.write_text(json.dumps(payload, indent=2) + "\n")
    return rows
