"""The one training loop every model in the study goes through.

Read `train_one` top to bottom: build the model, resume if a checkpoint exists, then for each epoch
train on device-resident augmented batches, evaluate on the val split (the study's test set), write
the run record and an atomic checkpoint. Precision, channels_last, torch.compile and DDP are switches
of the same loop, never copies of it. The step has no host-device sync: loss and accuracy sums and
the early per-layer gradient norms stay on the device and are read every `LOG_EVERY` steps and at
the end of the epoch.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from rich import box
from rich.console import Console
from rich.table import Table

from archbench import distributed, flops, runs
from archbench.errors import ArchbenchError
from archbench.progress import Bars, LogLines, Silent
from archbench.provenance import provenance, utc_now
from archbench.registry import Entry, build_model, get_entry

LOG_EVERY = 25  # steps between progress reads (each is one host-device sync)
METRICS_COLUMNS = ["epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "epoch_seconds",
                   "train_images_per_s", "train_samples"]


@dataclass(frozen=True)
class Recipe:
    """One optimisation recipe for every model; `lr` is for a global batch of `batch_size`."""

    epochs: int
    batch_size: int
    lr: float
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    schedule: str = "cosine"
    warmup_epochs: float = 2.0
    label_smoothing: float = 0.0
    clip_grad_norm: float | None = None  # clip the global gradient norm to this (None: never)


@dataclass(frozen=True)
class Preset:
    recipe: Recipe
    data: str
    image_size: int
    thresholds: tuple[float, ...]
    gradnorm_steps: int = 200


PRESETS = {
    # The study's setup: Tiny-ImageNet-200 upscaled to 256 with 224 crops. SGD with momentum 0.9 and
    # lr 0.1 for a batch of 256 (He et al. 2016, §3.4), weight decay 5e-4 (the independent
    # Tiny-ImageNet baseline in REFERENCES.md: 1e-4 is ImageNet's, a 100k-image set overfits more),
    # cosine decay after 2 linear warm-up epochs, 40 epochs: the reference reproduction saw ResNet
    # converge in about 30 and the VGGs in about 40. VGG without BN trains at a tenth of the rate
    # (its registry entry's lr_scale, after torchvision's reference recipe).
    "paper": Preset(
        recipe=Recipe(epochs=40, batch_size=256, lr=0.1, weight_decay=5e-4, warmup_epochs=2),
        data="data",
        image_size=224,
        thresholds=(0.3, 0.4, 0.5),
    ),
    # A few minutes on 2 CPU cores: the default synthetic set (10 classes) at 32x32. At this size the
    # VGG classifier's adaptive pool copies a 1x1 feature map 49 times, which multiplies the step of its
    # first linear layer: without clipping VGG16-BN diverges at any lr that trains in 3 epochs.
    "smoke": Preset(
        recipe=Recipe(epochs=3, batch_size=32, lr=0.1, weight_decay=5e-4, warmup_epochs=0.5, clip_grad_norm=2.0),
        data="synthetic",
        image_size=32,
        thresholds=(0.2, 0.3, 0.5),
        gradnorm_steps=60,
    ),
}

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class RunRequest:
    """What `archbench run` was asked for; `None` means: take it from the preset."""

    models: list[str]
    data: str | None = None
    preset: str = "paper"
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    clip_grad_norm: float | None = None
    image_size: int | None = None
    seeds: list[int] = field(default_factory=lambda: [0])
    thresholds: list[float] | None = None
    gradnorm_steps: int | None = None
    device: str = "auto"
    precision: str = "auto"
    compile: bool = False
    channels_last: bool | None = None
    deterministic: bool = False
    sync_bn: bool = False
    gpus: str | None = None
    out: Path = Path("runs")
    fresh: bool = False
    quiet: bool = False
    keep_checkpoint: bool = False
    registry: Path | None = None


# --------------------------------------------------------------------------------------- settings


def resolve_device(name: str, dist: distributed.Dist) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ArchbenchError(f"--device {name} was asked for but no CUDA device is available; use --device cpu.")
        if dist.enabled:
            return torch.device("cuda", dist.local_rank)
    elif name != "cpu":
        raise ArchbenchError(f"unknown device '{name}'; use auto, cpu, cuda or cuda:N.")
    return torch.device(name)


def resolve_precision(name: str, device: torch.device) -> str:
    if name == "auto":
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if name not in PRECISIONS:
        raise ArchbenchError(f"unknown precision '{name}'; use auto, fp32, bf16 or fp16.")
    return name


def resolve_config(request: RunRequest, entry: Entry, seed: int, data, device: torch.device,
                   dist: distributed.Dist) -> dict:
    """Everything that determines a run, as plain JSON: what config.json records."""
    preset = PRESETS[request.preset]
    recipe = replace(
        preset.recipe,
        epochs=preset.recipe.epochs if request.epochs is None else request.epochs,
        batch_size=preset.recipe.batch_size if request.batch_size is None else request.batch_size,
    )
    if request.clip_grad_norm is not None:  # 0 turns the preset's clipping off
        recipe = replace(recipe, clip_grad_norm=request.clip_grad_norm or None)
    global_batch = recipe.batch_size * dist.world_size
    if request.lr is not None:
        lr, lr_source = request.lr, "--lr"
    else:
        # Linear scaling (Goyal et al. 2017) from the preset's batch to the global batch.
        lr = preset.recipe.lr * global_batch / preset.recipe.batch_size
        lr_source = "preset" if global_batch == preset.recipe.batch_size else f"preset, scaled to batch {global_batch}"
        if entry.lr_scale is not None:
            lr, lr_source = lr * entry.lr_scale, f"{lr_source} x registry lr_scale {entry.lr_scale:g}"
    precision = resolve_precision(request.precision, device)
    channels_last = request.channels_last if request.channels_last is not None else device.type == "cuda"
    return {
        "model": entry.name,
        "entry": {
            "builder": entry.builder,
            "args": entry.args,
            "description": entry.description,
            "lr_scale": entry.lr_scale,
            "path": str(entry.path),
            "residual": entry.residual,
            "batch_norm": entry.batch_norm,
            "depth": entry.depth,
        },
        "preset": request.preset,
        "recipe": {**asdict(recipe), "global_batch_size": global_batch, "lr": lr, "lr_source": lr_source},
        "image_size": preset.image_size if request.image_size is None else request.image_size,
        "seed": seed,
        "thresholds": sorted(request.thresholds or preset.thresholds),
        "gradnorm_steps": preset.gradnorm_steps if request.gradnorm_steps is None else request.gradnorm_steps,
        "device": device.type,
        "precision": precision,
        "compile": request.compile,
        "channels_last": channels_last,
        "deterministic": request.deterministic,
        "sync_bn": request.sync_bn and dist.enabled,
        "world_size": dist.world_size,
        "data": {
            "spec": request.data or preset.data,
            "root": str(data.root),
            "fingerprint": data.fingerprint,
            "num_classes": data.num_classes,
            "train_size": len(data.train_labels),
            "val_size": len(data.val_labels),
            "synthetic": data.synthetic,
        },
    }


def autocast_factory(device: torch.device, precision: str):
    """A no-argument callable that opens the autocast context of `precision` (a no-op for fp32)."""
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext
    return functools.partial(torch.autocast, device.type, dtype=dtype)


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True


def rng_state() -> dict:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": random.getstate(),
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def lr_lambda(recipe: dict, steps_per_epoch: int):
    """Linear warm-up, then cosine decay to zero, per optimiser step."""
    warmup = int(recipe["warmup_epochs"] * steps_per_epoch)
    total = recipe["epochs"] * steps_per_epoch

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return factor


def epochs_to_threshold(test_acc: list[float], thresholds: list[float]) -> dict[str, int | None]:
    """The first (1-based) epoch whose test accuracy reaches each threshold, or None."""
    return {
        f"{t:g}": next((epoch for epoch, acc in enumerate(test_acc, start=1) if acc >= t), None)
        for t in thresholds
    }


def weight_layers(model: nn.Module) -> list[tuple[str, str, torch.Tensor]]:
    """(name, kind, weight) of every conv and linear layer, in registration (= forward) order."""
    kinds = {nn.Conv2d: "conv", nn.Linear: "linear"}
    return [(name, kinds[type(m)], m.weight) for name, m in model.named_modules() if type(m) in kinds]


# ------------------------------------------------------------------------------------------ loop


def evaluate(model: nn.Module, loader, autocast, dist: distributed.Dist) -> tuple[float, float]:
    """Test loss and accuracy over the whole val split (sharded across ranks, then summed)."""
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=loader.device)
    with torch.inference_mode():
        for x, y in loader:
            with autocast():
                logits = model(x)
            sums[0] += F.cross_entropy(logits.float(), y, reduction="sum")
            sums[1] += (logits.argmax(1) == y).sum()
            sums[2] += y.numel()
    loss_sum, correct, count = dist.all_reduce_sum(sums).tolist()
    return loss_sum / count, correct / count


def train_one(request: RunRequest, entry: Entry, seed: int, data, device: torch.device,
              dist: distributed.Dist, reporter) -> dict:
    """Train one model with one seed; returns its summary (also written to summary.json)."""
    from archbench.data.loader import DeviceLoader

    config = resolve_config(request, entry, seed, data, device, dist)
    recipe = config["recipe"]
    label = f"{entry.name} s{seed}"

    # Rank 0 picks (or reopens) the run folder; the others follow it.
    run = runs.open_run(request.out, {**config, "provenance": provenance(device)}, request.fresh) if dist.is_main else None
    run_path, run_id, finished = dist.broadcast((str(run.path), run.run_id, run.status) if run else None)
    run_path = Path(run_path)
    if finished:
        summary = dist.broadcast(runs.read_json(run_path / "summary.json") if dist.is_main else None)
        reporter.skip(label, summary)
        return summary

    seed_everything(seed, request.deterministic)
    model = build_model(entry.name, registry=request.registry, num_classes=data.num_classes)
    parameters = flops.count_parameters(model)
    gflops = dist.broadcast({
        "image_size": config["image_size"],
        "at_image_size": flops.count_gflops(model, config["image_size"]),
        "at_224": flops.count_gflops(model, 224),
    } if dist.is_main else None)
    if dist.rank:  # other ranks draw their own dropout masks; rank 0 matches a single process
        torch.manual_seed(seed + 7919 * dist.rank)
    if config["sync_bn"]:
        model = distributed.convert_sync_batchnorm(model, device)
    memory_format = torch.channels_last if config["channels_last"] else torch.contiguous_format
    model = model.to(device, memory_format=memory_format)
    layers = weight_layers(model)

    loader = functools.partial(
        DeviceLoader, batch_size=recipe["batch_size"], image_size=config["image_size"], device=device, seed=seed,
        channels_last=config["channels_last"], rank=dist.rank, world_size=dist.world_size,
    )
    train_loader = loader(data.train_images, data.train_labels, train=True)
    test_loader = loader(data.val_images, data.val_labels, train=False)
    steps_per_epoch = len(train_loader)

    optimizer = torch.optim.SGD(
        model.parameters(), lr=recipe["lr"], momentum=recipe["momentum"],
        weight_decay=recipe["weight_decay"], nesterov=recipe["nesterov"],
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(recipe, steps_per_epoch))
    autocast = autocast_factory(device, config["precision"])
    scaler = torch.amp.GradScaler(device.type, enabled=config["precision"] == "fp16")

    forward = model
    if dist.enabled:
        forward = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if config["compile"]:
        forward = torch.compile(forward)

    gradnorm_steps = min(config["gradnorm_steps"], recipe["epochs"] * steps_per_epoch)
    gradnorms = torch.zeros(gradnorm_steps, len(layers), device=device)
    history: list[dict] = []
    start_epoch, wall_before = 0, 0.0

    ckpt = runs.load_checkpoint(run_path / runs.CHECKPOINT)
    resume_epochs = dist.all_gather(ckpt["epoch"] if ckpt is not None else 0)
    if len(set(resume_epochs)) > 1:
        raise ArchbenchError(f"ranks found different checkpoints in {run_path} (epochs {resume_epochs}): "
                             "give every node the same --out folder on a shared filesystem.")
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        gradnorms.copy_(ckpt["gradnorms"])
        history, start_epoch, wall_before = ckpt["history"], ckpt["epoch"], ckpt["wall_seconds"]
        set_rng_state(ckpt["rng"][dist.rank])

    def write_record(status: str, diverged_at_step: int | None, steps_done: int, wall: float) -> dict:
        test_acc = [row["test_acc"] for row in history]
        best = int(np.argmax(test_acc)) if test_acc else None
        summary = {
            "run_id": run_id,
            "model": entry.name,
            "seed": seed,
            "status": status,
            "diverged_at_step": diverged_at_step,
            "epochs_completed": len(history),
            "final_train_acc": history[-1]["train_acc"] if history else None,
            "final_test_acc": history[-1]["test_acc"] if history else None,
            "best_test_acc": test_acc[best] if history else None,
            "best_epoch": best + 1 if history else None,
            "epochs_to_threshold": epochs_to_threshold(test_acc, config["thresholds"]),
            "parameters": parameters,
            "gflops": gflops,
            "mean_train_images_per_s": float(np.mean([r["train_images_per_s"] for r in history])) if history else None,
            "wall_seconds": wall,
            "synthetic": data.synthetic,
            "finished_at": utc_now(),
        }
        if dist.is_main:
            norms = gradnorms[: min(gradnorm_steps, steps_done)].cpu().tolist()
            runs.write_csv(run_path / "metrics.csv", METRICS_COLUMNS, history)
            runs.write_csv(
                run_path / "gradnorms.csv", ["step", "layer", "depth", "kind", "grad_norm"],
                [
                    {"step": step, "layer": name, "depth": depth, "kind": kind, "grad_norm": row[depth]}
                    for step, row in enumerate(norms)
                    for depth, (name, kind, _) in enumerate(layers)
                ],
            )
            runs.write_json(run_path / "summary.json", summary)
        return summary

    reporter.start(label, recipe["epochs"], steps_per_epoch, start_epoch * steps_per_epoch)
    started = time.perf_counter()
    weights = [w for _, _, w in layers]
    never = torch.iinfo(torch.long).max
    first_bad = torch.full((), never, dtype=torch.long, device=device)  # first step with a non-finite loss
    status, diverged_at = "completed", None
    step = start_epoch * steps_per_epoch

    for epoch in range(start_epoch, recipe["epochs"]):
        train_loader.set_epoch(epoch)
        model.train()
        sums = torch.zeros(2, dtype=torch.float64, device=device)  # loss sum, correct
        seen = seen_shown = shown = 0
        epoch_start = tick = time.perf_counter()
        for i, (x, y) in enumerate(train_loader):
            with autocast():
                logits = forward(x)
                loss = F.cross_entropy(logits, y, label_smoothing=recipe["label_smoothing"])
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if step < gradnorm_steps or recipe["clip_grad_norm"]:
                scaler.unscale_(optimizer)  # the true gradient, also under fp16
            if step < gradnorm_steps:
                gradnorms[step] = torch.stack(torch._foreach_norm([w.grad for w in weights]))
            if recipe["clip_grad_norm"]:
                nn.utils.clip_grad_norm_(model.parameters(), recipe["clip_grad_norm"], foreach=True)
            scaler.step(optimizer)
            scaler.update()
            lr = optimizer.param_groups[0]["lr"]  # the rate this step used (a Python float: no sync)
            scheduler.step()

            loss = loss.detach()
            first_bad = torch.where(torch.isfinite(loss), first_bad, first_bad.clamp(max=step))
            sums[0] += loss * y.numel()
            sums[1] += (logits.argmax(1) == y).sum()
            seen += y.numel()
            step += 1

            if (i + 1) % LOG_EVERY == 0 or i + 1 == steps_per_epoch:  # the deliberate sync point
                bad = int(dist.all_reduce_min(first_bad.clone()).item())
                if bad != never:
                    diverged_at = bad
                    break
                loss_sum, correct = sums.tolist()
                now = time.perf_counter()
                reporter.step(i + 1 - shown, epoch + 1, loss_sum / seen, correct / seen,
                              (seen - seen_shown) * dist.world_size / max(now - tick, 1e-9))
                shown, seen_shown, tick = i + 1, seen, now
        if diverged_at is not None:
            status = "diverged"
            break
        train_seconds = time.perf_counter() - epoch_start

        loss_sum, correct, samples = dist.all_reduce_sum(torch.cat([sums, sums.new_tensor([seen])])).tolist()
        dist.broadcast_buffers(model)  # every rank evaluates rank 0's BN statistics: the checkpointed model
        test_loss, test_acc = evaluate(model, test_loader, autocast, dist)
        history.append({
            "epoch": epoch + 1,
            "train_loss": loss_sum / samples,
            "train_acc": correct / samples,
            "test_loss": test_loss,
            "test_acc": test_acc,
            "lr": lr,
            "epoch_seconds": time.perf_counter() - epoch_start,
            "train_images_per_s": samples / train_seconds,
            "train_samples": int(samples),
        })
        reporter.epoch(label, history[-1])

        wall = wall_before + time.perf_counter() - started
        rng = dist.all_gather(rng_state())  # every rank's, so every rank resumes its own stream
        if dist.is_main:
            # Record first, checkpoint second: a crash between them redoes one epoch, and the files
            # are rewritten from the checkpoint's history, so the record always matches it.
            write_record("interrupted", None, step, wall)
            runs.save_checkpoint(run_path / runs.CHECKPOINT, {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "epoch": epoch + 1,
                "history": history,
                "gradnorms": gradnorms.cpu(),
                "wall_seconds": wall,
                "rng": rng,
                "loader": {"seed": seed, "next_epoch": epoch + 1},
            })
        dist.barrier()

    summary = write_record(status, diverged_at, step, wall_before + time.perf_counter() - started)
    if dist.is_main and not request.keep_checkpoint:  # the run is final: nothing left to resume
        (run_path / runs.CHECKPOINT).unlink(missing_ok=True)
    if run is not None:
        run.close()
    reporter.finish(label, summary)
    return summary


def run_models(request: RunRequest, console: Console | None = None) -> list[dict]:
    """`archbench run`: every model x seed through `train_one`, one after another.

    Names, preset and data are checked before anything trains. A model that diverges is recorded as
    such and the next one still runs.
    """
    console = console or Console()
    if request.preset not in PRESETS:
        raise ArchbenchError(f"unknown preset '{request.preset}'; use one of: {', '.join(PRESETS)}.")
    entries = [get_entry(name, registry=request.registry) for name in request.models]
    if request.gpus:
        from archbench.launch import run_on_gpus

        return run_on_gpus(request, console)

    from archbench.data import resolve

    dist = distributed.from_environment(request.device)
    device = resolve_device(request.device, dist)
    data = resolve(request.data or PRESETS[request.preset].data, console=console)
    reporter = Silent() if not dist.is_main else LogLines(console) if request.quiet else Bars(console)
    results = []
    try:
        for entry in entries:
            for seed in request.seeds:
                results.append(train_one(request, entry, seed, data, device, dist, reporter))
    finally:
        reporter.close()
        distributed.shutdown()
    if dist.is_main:
        console.print(results_table(results))
    return results


def results_table(results: list[dict]) -> Table:
    """The closing comparison: one row per run, final accuracies, epochs to each threshold."""
    thresholds = list(results[0]["epochs_to_threshold"]) if results else []
    table = Table(title="archbench run", box=box.SIMPLE,
                  caption="final accuracies; ≥t: first epoch with test accuracy ≥ t (— never)")
    table.add_column("model", no_wrap=True)
    table.add_column("status", no_wrap=True)
    for column in ("train", "test", *(f"≥{t}" for t in thresholds), "img/s", "time"):
        table.add_column(column, justify="right", no_wrap=True)
    pct = lambda v: "—" if v is None else f"{100 * v:.1f}%"  # noqa: E731
    for s in results:
        table.add_row(
            f"{s['model']} s{s['seed']}", s["status"], pct(s["final_train_acc"]), pct(s["final_test_acc"]),
            *(str(e) if (e := s["epochs_to_threshold"].get(t)) is not None else "—" for t in thresholds),
            "—" if s["mean_train_images_per_s"] is None else f"{s['mean_train_images_per_s']:.0f}",
            f"{s['wall_seconds']:.0f}s",
        )
    return table
