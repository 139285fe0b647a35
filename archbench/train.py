"""The one training loop every model in the study goes through.

`run_models` checks everything it can before any run folder exists (`plan_runs`: names, options, the
data, every model's forward pass at the requested size, the output folder), then trains each model and
seed with `train_one`, which reads top to bottom: open the run folder, build the model and what trains
it (`build_training`), resume from a checkpoint if there is one (`resume`), then for each epoch train
(`train_epoch`, one `optimiser_step` per batch), evaluate on the test split and, when the run holds one
out, on the validation split (`evaluate`), write the run record (`write_run_record`) and an atomic
checkpoint (`save_checkpoint`). Precision, channels_last, torch.compile and DDP are switches of the same
loop, never copies of it.

The step has no host-device sync: the loss and accuracy sums, the count of steps whose gradient clipping
bound, the early per-layer gradient diagnostics and the early global gradient norms stay on the device and
are read every `LOG_EVERY` steps and at the end of the epoch.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from torch import nn

from archbench import distributed, flops, runs
from archbench.cluster import submit_runs
from archbench.config import STEP_FACTOR, STEP_MILESTONES, Recipe, RunConfig, RunRequest, parse_lr, resolve_config
from archbench.data import resolve
from archbench.data.loader import DeviceLoader, augmentation_named
from archbench.data.split import Holdout, holdout
from archbench.devices import (
    PRECISIONS,
    autocast_factory,
    compile_model,
    make_deterministic,
    make_sgd,
    memory_format,
    needs_deterministic_pooling,
    peak_memory,
    reset_peak_memory,
    resolve_channels_last,
    resolve_device,
    resolve_precision,
    rng_state,
    seed_everything,
    set_rng_state,
    sgd_implementation,
    synchronize,
)
from archbench.distributed import DistContext
from archbench.errors import ArchbenchError
from archbench.gradients import GradientRecorder
from archbench.launch import jobs_of, run_on_gpus
from archbench.progress import Bars, LogLines, Reporter, results_table
from archbench.provenance import provenance, utc_now
from archbench.registry import Entry, check_forward, get_entry
from archbench.runs import EpochMetrics, Summary
from archbench.tensorboard import TensorBoard
from archbench.tuning import read_tuning

LOG_EVERY = 25  # steps between progress reads (each is one host-device sync)
NEVER = torch.iinfo(torch.long).max  # "no non-finite loss yet"
TOP5_CLASSES = 100  # top-5 accuracy is recorded from this many classes on (the ImageNet-family habit)


@dataclass
class Training:
    """What one run trains with. The model, optimiser, scheduler, scaler and gradient recorder are
    checkpointed; `forward` is the model as the step calls it (wrapped by DDP and/or torch.compile)."""

    model: nn.Module
    forward: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    autocast: Callable
    train_loader: DeviceLoader
    test_loader: DeviceLoader
    val_loader: DeviceLoader | None
    gradients: GradientRecorder
    clipping: ClipRecorder
    recipe: Recipe
    compiled: bool


@dataclass
class RunState:
    """Where a run stands: the epochs recorded, optimiser steps taken, wall time of earlier sessions."""

    history: list[EpochMetrics]
    step: int = 0
    wall_before: float = 0.0
    compile_seconds: float | None = None

    @property
    def epoch(self) -> int:
        return len(self.history)

    @property
    def images_seen(self) -> int:
        return self.history[-1].images_seen if self.history else 0


@dataclass(frozen=True)
class EpochResult:
    """One epoch of training, summed over ranks; `diverged_at` is the first step with a non-finite loss."""

    loss: float
    accuracy: float
    samples: int  # images trained on
    timed_samples: int  # images trained on within `seconds`
    lr: float  # the rate the epoch's last step used
    seconds: float  # training time, without a first compiled step (see compile_seconds)
    step: int  # optimiser steps taken after this epoch
    compile_seconds: float | None = None
    diverged_at: int | None = None
    clip_fraction: float | None = None  # optimiser steps whose gradient clipping bound / steps


@dataclass(frozen=True)
class Plan:
    """One run `run_models` will train: checked, with its config resolved, before any folder exists."""

    entry: Entry
    config: RunConfig


# ------------------------------------------------------------------------------------------ recipe


def lr_lambda(recipe: Recipe, steps_per_epoch: int) -> Callable[[int], float]:
    """Linear warm-up over `recipe.warmup_epochs`, then `recipe.schedule`: cosine decay to zero, constant, or
    step (times `STEP_FACTOR` from each of `STEP_MILESTONES`, fractions of all training steps)."""
    warmup = int(recipe.warmup_epochs * steps_per_epoch)
    total = recipe.epochs * steps_per_epoch
    milestones = [int(fraction * total) for fraction in STEP_MILESTONES]

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if recipe.schedule == "constant":
            return 1.0
        if recipe.schedule == "step":
            return STEP_FACTOR ** sum(step >= milestone for milestone in milestones)
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return factor


# ------------------------------------------------------------------------------------------ steps


class ClipRecorder:
    """Gradient clipping, on the device: per step, the global gradient norm before clipping and whether
    clipping bound (kept for the first `steps` steps: clipping.csv), and the count of steps it bound in the
    current epoch (metrics.csv's clip_fraction). Bound means `clip_grad_norm_` scaled the gradient down:
    max_norm / (norm + 1e-6) < 1, its own rule."""

    def __init__(self, max_norm: float | None, steps: int, device: torch.device):
        self.max_norm = max_norm or None
        self.steps = steps
        self.norms = torch.zeros(steps, dtype=torch.float32, device=device)
        self.bound = torch.zeros(steps, dtype=torch.bool, device=device)
        self.count = torch.zeros((), dtype=torch.float64, device=device)  # steps clipped in this epoch

    def step(self, model: nn.Module, step: int) -> None:
        """Clip the gradients (when the recipe clips) and record the step: no host sync."""
        if self.max_norm is None:
            if step < self.steps:
                grads = [p.grad for p in model.parameters() if p.grad is not None]
                self.norms[step] = nn.utils.get_total_norm(grads, foreach=True)
            return
        norm = nn.utils.clip_grad_norm_(model.parameters(), self.max_norm, foreach=True)
        bound = self.max_norm / (norm + 1e-6) < 1.0
        self.count += bound
        if step < self.steps:
            self.norms[step] = norm
            self.bound[step] = bound

    def rows(self, steps_done: int) -> list[runs.ClipRow]:
        done = min(self.steps, steps_done)
        norms, bound = self.norms[:done].cpu().tolist(), self.bound[:done].cpu().tolist()
        return [runs.ClipRow(i, norms[i], self.max_norm, int(bound[i])) for i in range(done)]

    def state_dict(self) -> dict:
        return {"norms": self.norms.cpu(), "bound": self.bound.cpu()}

    def load_state_dict(self, state: dict) -> None:
        self.norms.copy_(state["norms"])
        self.bound.copy_(state["bound"])


def build_training(
    model: nn.Module, config: RunConfig, data, split: Holdout | None, device: torch.device, dist: DistContext
) -> Training:
    """Put the model on the device and make its loaders, optimiser, schedule, scaler and gradient recorder."""
    recipe = config.recipe
    if config.sync_bn:
        model = distributed.convert_sync_batchnorm(model, device)
    if needs_deterministic_pooling(device, config.deterministic):
        model = make_deterministic(model)
    model = model.to(device, memory_format=memory_format(config.channels_last))
    loader = functools.partial(
        DeviceLoader,
        batch_size=recipe.batch_size,
        image_size=config.image_size,
        device=device,
        seed=config.seed,
        channels_last=config.channels_last,
        dtype=PRECISIONS[config.precision] or torch.float32,
        rank=dist.rank,
        world_size=dist.world_size,
        **data.transform,
    )
    train_images, train_labels = data.train_images, data.train_labels
    if split is not None:
        train_images, train_labels = train_images[split.train], train_labels[split.train]
    train_loader = loader(train_images, train_labels, train=True)
    optimizer = make_sgd(
        model.parameters(),
        lr=recipe.lr,
        momentum=recipe.momentum,
        weight_decay=recipe.weight_decay,
        nesterov=recipe.nesterov,
        implementation=config.optimizer,
    )
    forward = model
    if dist.enabled:  # BN buffers are synchronised once per epoch (`broadcast_buffers`), not every step
        device_ids = [device.index] if device.type == "cuda" else None
        forward = nn.parallel.DistributedDataParallel(model, device_ids=device_ids, broadcast_buffers=False)
    if config.compile:
        forward = compile_model(forward, config.compile_backend)
    return Training(
        model=model,
        forward=forward,
        optimizer=optimizer,
        scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(recipe, len(train_loader))),
        scaler=torch.amp.GradScaler(device.type, enabled=config.precision == "fp16"),
        autocast=autocast_factory(device, config.precision),
        train_loader=train_loader,
        test_loader=loader(data.test_images, data.test_labels, train=False),
        val_loader=None
        if split is None
        else loader(data.train_images[split.val], data.train_labels[split.val], train=False),
        gradients=GradientRecorder(model, min(config.gradnorm_steps, recipe.epochs * len(train_loader)), device),
        clipping=ClipRecorder(
            recipe.clip_grad_norm, min(config.gradnorm_steps, recipe.epochs * len(train_loader)), device
        ),
        recipe=recipe,
        compiled=config.compile,
    )


def resume(run_path: Path, t: Training, device: torch.device, dist: DistContext) -> RunState:
    """Load the run's checkpoint into `t`, if it has one; every rank must find the same one."""
    ckpt = runs.load_checkpoint(run_path / runs.CHECKPOINT)
    found = dist.all_gather(ckpt["epoch"] if isinstance(ckpt, dict) and "epoch" in ckpt else 0)
    if len(set(found)) > 1:
        raise ArchbenchError(
            f"ranks found different checkpoints in {run_path} (epochs {found}): "
            "give every node the same --out folder on a shared filesystem."
        )
    if ckpt is None:
        return RunState(history=[])
    try:
        t.model.load_state_dict(ckpt["model"])
        t.optimizer.load_state_dict(ckpt["optimizer"])
        t.scheduler.load_state_dict(ckpt["scheduler"])
        t.scaler.load_state_dict(ckpt["scaler"])
        t.gradients.load_state_dict(ckpt["gradients"])
        if "clipping" in ckpt:  # a checkpoint from before clipping was recorded resumes without its early rows
            t.clipping.load_state_dict(ckpt["clipping"])
        history = [EpochMetrics(**row) for row in ckpt["history"]]
        set_rng_state(ckpt["rng"][dist.rank], device)
        state = RunState(
            history=history,
            step=ckpt["epoch"] * len(t.train_loader),
            wall_before=ckpt["wall_seconds"],
            compile_seconds=ckpt["compile_seconds"],
        )
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as e:
        problem = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ArchbenchError(
            f"the checkpoint of run {run_path.name} does not fit this model and recipe ({problem}); "
            "rerun with --fresh to start the run over."
        ) from None
    if len(history) != ckpt["epoch"]:
        raise ArchbenchError(
            f"the checkpoint of run {run_path.name} is inconsistent (epoch {ckpt['epoch']}, "
            f"{len(history)} recorded); rerun with --fresh to start the run over."
        )
    return state


def optimiser_step(
    t: Training, x: torch.Tensor, y: torch.Tensor, step: int
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Forward, backward, the early gradient diagnostics (before clipping), clipping (recorded by
    `ClipRecorder`), the SGD step and the schedule. Returns the logits, the detached loss and the learning
    rate this step used."""
    with t.autocast():
        logits = t.forward(x)
        loss = F.cross_entropy(logits, y, label_smoothing=t.recipe.label_smoothing)
    t.optimizer.zero_grad(set_to_none=True)
    t.scaler.scale(loss).backward()
    record = t.gradients.wants(step)
    if record or t.recipe.clip_grad_norm:
        t.scaler.unscale_(t.optimizer)  # the true gradient, also under fp16
    if record:
        t.gradients.record(step)
    t.clipping.step(t.model, step)
    t.scaler.step(t.optimizer)
    t.scaler.update()
    lr = t.optimizer.param_groups[0]["lr"]  # a Python float: no sync
    t.scheduler.step()
    return logits, loss.detach(), lr


def train_epoch(
    t: Training, epoch: int, step: int, dist: DistContext, reporter: Reporter, time_compilation: bool = False
) -> EpochResult:
    """One pass over this rank's shard of the training split. Stops at the first log point after a step
    whose loss is not finite, and says at which step that was. With `time_compilation` the first step (in
    which torch.compile compiles) is timed on its own and left out of the epoch's seconds and images."""
    t.train_loader.set_epoch(epoch)
    t.model.train()
    device = t.train_loader.device
    sums = torch.zeros(2, dtype=torch.float64, device=device)  # loss sum, correct
    t.clipping.count.zero_()
    first_bad = torch.full((), NEVER, dtype=torch.long, device=device)
    seen = seen_shown = shown = 0
    lr, compile_seconds, excluded = t.optimizer.param_groups[0]["lr"], None, 0
    started = tick = time.perf_counter()
    steps = len(t.train_loader)
    for i, (x, y) in enumerate(t.train_loader):
        logits, loss, lr = optimiser_step(t, x, y, step)
        if time_compilation and i == 0:
            synchronize(device)
            compile_seconds, excluded = time.perf_counter() - started, y.numel()
            started = tick = time.perf_counter()
            seen_shown = y.numel()
        first_bad = torch.where(torch.isfinite(loss), first_bad, first_bad.clamp(max=step))
        sums[0] += loss * y.numel()
        sums[1] += (logits.argmax(1) == y).sum()
        seen += y.numel()
        step += 1
        if (i + 1) % LOG_EVERY == 0 or i + 1 == steps:  # the deliberate sync point
            bad = int(dist.all_reduce_min(first_bad.clone()).item())
            if bad != NEVER:
                return EpochResult(
                    math.nan,
                    math.nan,
                    seen,
                    seen - excluded,
                    lr,
                    time.perf_counter() - started,
                    step,
                    compile_seconds,
                    diverged_at=bad,
                )
            loss_sum, correct = sums.tolist()
            now = time.perf_counter()
            reporter.step(
                i + 1 - shown,
                epoch + 1,
                loss_sum / seen,
                correct / seen,
                (seen - seen_shown) * dist.world_size / max(now - tick, 1e-9),
                lr=lr,
            )
            shown, seen_shown, tick = i + 1, seen, now
    seconds = time.perf_counter() - started
    loss_sum, correct, clipped, samples, timed = dist.all_reduce_sum(
        torch.cat([sums, t.clipping.count.reshape(1), sums.new_tensor([seen, seen - excluded])])
    ).tolist()
    return EpochResult(
        loss_sum / samples,
        correct / samples,
        int(samples),
        int(timed),
        lr,
        seconds,
        step,
        compile_seconds,
        clip_fraction=clipped / (steps * dist.world_size),
    )


def evaluate(model: nn.Module, loader: DeviceLoader, autocast, dist: DistContext) -> tuple[float, float, float | None]:
    """Loss, accuracy and, with `TOP5_CLASSES` classes or more, top-5 accuracy (else None) over a whole
    evaluation split (sharded across ranks, then summed)."""
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=loader.device)
    top5 = False
    with torch.inference_mode():
        for x, y in loader:
            with autocast():
                logits = model(x)
            sums[0] += F.cross_entropy(logits.float(), y, reduction="sum")
            sums[1] += (logits.argmax(1) == y).sum()
            sums[2] += y.numel()
            top5 = logits.shape[1] >= TOP5_CLASSES
            if top5:
                sums[3] += (logits.topk(5, dim=1).indices == y[:, None]).any(1).sum()
    loss_sum, correct, count, correct5 = dist.all_reduce_sum(sums).tolist()
    return loss_sum / count, correct / count, correct5 / count if top5 else None


def summarise(
    config: RunConfig,
    run_id: str,
    state: RunState,
    status: str,
    diverged_at: int | None,
    size: dict,
    device: torch.device,
    wall: float,
) -> Summary:
    """summary.json as the run stands: its outcome so far, size, speed and peak memory on `device`."""
    history = state.history
    memory = peak_memory(device)
    return Summary(
        run_id=run_id,
        model=config.model,
        seed=config.seed,
        status=status,
        diverged_at_step=diverged_at,
        **runs.outcome(history, config.thresholds, on_holdout=config.validation is not None),
        parameters=size["parameters"],
        gflops=size["gflops"],
        mean_train_images_per_s=float(np.mean([r.train_images_per_s for r in history])) if history else None,
        train_seconds=float(sum(row.train_seconds for row in history)),
        compile_seconds=state.compile_seconds,
        peak_memory_mb=memory[0],
        peak_memory_kind=memory[1],
        wall_seconds=wall,
        synthetic=config.data.synthetic,
        finished_at=utc_now(),
    )


def write_run_record(run_path: Path, state: RunState, t: Training, summary: Summary) -> None:
    runs.write_record(run_path, state.history, t.gradients.rows(state.step), summary, t.clipping.rows(state.step))


def save_checkpoint(run_path: Path, t: Training, state: RunState, wall: float, rng: list[dict]) -> None:
    runs.save_checkpoint(
        run_path / runs.CHECKPOINT,
        {
            "model": t.model.state_dict(),
            "optimizer": t.optimizer.state_dict(),
            "scheduler": t.scheduler.state_dict(),
            "scaler": t.scaler.state_dict(),
            "gradients": t.gradients.state_dict(),
            "clipping": t.clipping.state_dict(),
            "epoch": state.epoch,
            "history": [asdict(row) for row in state.history],
            "wall_seconds": wall,
            "compile_seconds": state.compile_seconds,
            "rng": rng,  # every rank's, so every rank resumes its own stream
        },
    )


def model_size(model: nn.Module, image_size: int, dist: DistContext) -> dict:
    """Parameters and fvcore GFLOPs (counted once, on rank 0, on the uncompiled model), with the ops fvcore
    left out of them (for the report's method notes; never printed during a run)."""
    gflops = None
    if dist.is_main:
        at_image_size, uncounted = flops.fvcore_count(model, image_size)
        gflops = {
            "image_size": image_size,
            "at_image_size": at_image_size,
            "at_224": flops.count_gflops(model, 224),
            "uncounted_ops": uncounted,
        }
    return {"parameters": flops.count_parameters(model), "gflops": dist.broadcast(gflops)}


def epoch_row(
    epoch: int,
    result: EpochResult,
    images_before: int,
    test: tuple[float, float, float | None],
    val: tuple[float, float, float | None] | None,
    epoch_seconds: float,
) -> EpochMetrics:
    return EpochMetrics(
        epoch=epoch + 1,
        train_loss=result.loss,
        train_acc=result.accuracy,
        test_loss=test[0],
        test_acc=test[1],
        test_top5=test[2],
        lr=result.lr,
        epoch_seconds=epoch_seconds,
        train_images_per_s=result.timed_samples / result.seconds,
        train_samples=result.samples,
        train_seconds=result.seconds,
        images_seen=images_before + result.samples,
        holdout_loss=None if val is None else val[0],
        holdout_acc=None if val is None else val[1],
        clip_fraction=result.clip_fraction,
    )


# ------------------------------------------------------------------------------------------ the loop


def train_one(
    plan: Plan,
    request: RunRequest,
    data,
    split: Holdout | None,
    device: torch.device,
    dist: DistContext,
    reporter: Reporter,
) -> dict:
    """Train one model with one seed; returns its summary (also written to summary.json)."""
    entry, config = plan.entry, plan.config
    label = f"{entry.name} s{config.seed}" + (f" lr {config.recipe.lr:g}" if config.tuning_trial else "")
    run, run_path, run_id, finished = open_run(plan, request, device, dist)
    if finished is not None:
        reporter.skip(label, finished)
        return finished

    seed_everything(config.seed, config.deterministic)
    model = entry.build(num_classes=data.num_classes)
    size = model_size(model, config.image_size, dist)
    if dist.rank:  # other ranks draw their own dropout masks; rank 0 matches a single process
        torch.manual_seed(config.seed + 7919 * dist.rank)
    t = build_training(model, config, data, split, device, dist)
    state = resume(run_path, t, device, dist)
    reset_peak_memory(device)

    reporter.start(label, config.recipe.epochs, len(t.train_loader), state.step, run_path=run_path)
    started = time.perf_counter()
    status, diverged_at = "completed", None
    for epoch in range(state.epoch, config.recipe.epochs):
        epoch_start = time.perf_counter()
        with recompile_limit_is_an_error(label):
            result = train_epoch(
                t, epoch, state.step, dist, reporter, time_compilation=t.compiled and epoch == state.epoch
            )
        state.step = result.step
        state.compile_seconds = state.compile_seconds or result.compile_seconds
        if result.diverged_at is not None:
            status, diverged_at = "diverged", result.diverged_at
            break
        dist.broadcast_buffers(t.model)  # every rank evaluates rank 0's BN statistics: the checkpointed model
        test = evaluate(t.model, t.test_loader, t.autocast, dist)
        val = None if t.val_loader is None else evaluate(t.model, t.val_loader, t.autocast, dist)
        state.history.append(epoch_row(epoch, result, state.images_seen, test, val, time.perf_counter() - epoch_start))
        reporter.epoch(label, asdict(state.history[-1]))
        wall = state.wall_before + time.perf_counter() - started
        interim = summarise(config, run_id, state, "interrupted", None, size, device, wall)
        record_epoch(run_path, t, state, interim, device, dist)

    wall = state.wall_before + time.perf_counter() - started
    summary = summarise(config, run_id, state, status, diverged_at, size, device, wall)
    if dist.is_main:
        write_run_record(run_path, state, t, summary)
        if not request.keep_checkpoint:  # the run is final: nothing left to resume
            (run_path / runs.CHECKPOINT).unlink(missing_ok=True)
        run.close()
    summary = asdict(summary)
    reporter.finish(label, summary)
    return summary


def open_run(plan: Plan, request: RunRequest, device: torch.device, dist: DistContext):
    """Rank 0 picks (or reopens) the run folder and the others follow it: the open run (rank 0's), its path
    and id, and its summary when it is already finished (then there is nothing to train)."""
    # No path of this machine: the entry is recorded by name and TOML hash, the data by name and fingerprint,
    # so a run folder copied elsewhere means the same there.
    record = {**plan.config.to_json(), "provenance": provenance(device)}
    run = runs.open_run(request.out, record, request.fresh) if dist.is_main else None
    run_path, run_id, finished = dist.broadcast((str(run.path), run.run_id, run.status) if run else None)
    run_path = Path(run_path)
    summary = None
    if finished:
        summary = dist.broadcast(runs.read_json(run_path / runs.SUMMARY) if dist.is_main else None)
    return run, run_path, run_id, summary


def record_epoch(
    run_path: Path, t: Training, state: RunState, interim: Summary, device: torch.device, dist: DistContext
) -> None:
    """After each epoch, on rank 0: the run record as it stands, then the checkpoint. A crash between them
    redoes one epoch, and the files are rewritten from the checkpoint's history, so the record always
    matches it. Every rank's RNG state goes into the checkpoint, so every rank resumes its own stream."""
    rng = dist.all_gather(rng_state(device))
    if dist.is_main:
        write_run_record(run_path, state, t, interim)
        save_checkpoint(run_path, t, state, interim.wall_seconds, rng)
    dist.barrier()


@contextlib.contextmanager
def recompile_limit_is_an_error(label: str):
    """torch.compile hitting its recompile limit stops the run with one line (never a silent eager fallback)."""
    try:
        yield
    except torch._dynamo.exc.FailOnRecompileLimitHit:
        raise ArchbenchError(
            f"torch.compile hit its recompile limit on {label} (the step saw too many shapes); "
            "rerun without --compile and report it."
        ) from None


def plan_runs(request: RunRequest, data, split: Holdout | None, device: torch.device, world_size: int) -> list[Plan]:
    """Every (model, seed) run of `request`, checked before anything is created: the options, the rates,
    the batch against the training split, and each model's forward pass at the requested size."""
    precision = resolve_precision(request.precision, device)
    channels_last = resolve_channels_last(request.channels_last, device)
    if request.compile and request.sync_bn and world_size > 1:
        raise ArchbenchError(
            "--sync-bn with --compile: SyncBatchNorm breaks torch.compile's graph; use one or the other."
        )
    tuned = read_tuning(request.tuning_file, data) if request.lr == "tuned" else None
    train_size = len(split.train) if split is not None else len(data.train_labels)
    plans = []
    for name in request.models:
        entry = get_entry(name, registry=request.registry)
        base = resolve_config(
            request,
            entry,
            request.seeds[0],
            data,
            device=device.type,
            precision=precision,
            channels_last=channels_last,
            optimizer=sgd_implementation(device, precision),
            world_size=world_size,
            validation=None if split is None else split.record(),
            tuned=None if tuned is None else tuned.rate_for(name),
        )
        if tuned is not None:
            tuned.check_recipe(base)  # a rate tuned at another image size or recipe does not carry over
        # the data's augmentation must fit a crop of this size (CIFAR's pad-crop: at most 40 on 32-pixel images)
        augmentation_named(data.manifest["augmentation"]).room(base.image_size, data.manifest["image_shape"][0])
        if base.global_batch_size > train_size:
            raise ArchbenchError(
                f"a global batch of {base.global_batch_size} is larger than the {train_size} training "
                "images: lower --batch-size."
            )
        check_forward(entry, base.image_size, data.num_classes)
        plans += [Plan(entry, replace(base, seed=seed)) for seed in request.seeds]
    return plans


def ensure_writable(folder: Path) -> None:
    """Create `folder` if needed and prove a file can be written there, or say in one line why not."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".archbench-write-test-{time.time_ns()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ArchbenchError(f"cannot write run records to {folder}: {e.strerror or e}") from None


def study_data(request: RunRequest, console: Console):
    """The verified data of a request and its validation split (None without one)."""
    data = resolve(request.data or request.preset_spec.data, console=console)
    split = (
        holdout(data.train_labels, request.holdout_per_class, request.split_seed) if request.holdout_per_class else None
    )
    return data, split


def run_models(request: RunRequest, console: Console | None = None) -> list[dict]:
    """`archbench run`: every model x seed of `request`; see `run_requests`."""
    return run_requests([request], console)


def run_requests(requests: list[RunRequest], console: Console | None = None) -> list[dict]:
    """Every model x seed of every request through `train_one`, one after another in this process (or as
    jobs: one per GPU with --gpus, one per cluster job with --launcher). `archbench tune` passes one
    request per learning rate; they share the device, the data and the validation split.

    Everything that can fail is checked before the first run folder is made (`plan_runs`). A model that
    diverges is recorded as such and the next one still runs.
    """
    console = console or Console()
    first = requests[0]
    for request in requests:
        request.recipe()  # an unknown preset or schedule fails here, before anything is built
        parse_lr(request.lr)
        for name in request.models:
            get_entry(name, registry=request.registry)
    if first.launcher or first.gpus:
        # Each job plans again where it runs; planning here too means a request that cannot work fails
        # now, in one line, instead of in every queued job.
        data, split = study_data(first, console)
        world_size = first.gpus_per_job if first.launcher else 1
        for request in requests:
            plan_runs(request, data, split, torch.device("cpu"), max(1, world_size))
        if first.launcher:
            return submit_runs(jobs_of(requests), first, console)
        return run_on_gpus(jobs_of(requests), first.gpus, first.out, console)

    dist = distributed.from_environment(first.device)
    device = resolve_device(first.device, dist.local_rank if dist.enabled else None)
    data, split = study_data(first, console)
    plans = [
        (request, plan) for request in requests for plan in plan_runs(request, data, split, device, dist.world_size)
    ]
    if dist.is_main:
        ensure_writable(first.out)
    reporter = Reporter() if not dist.is_main else LogLines(console) if first.quiet else Bars(console)
    if first.tensorboard and dist.is_main:
        reporter = TensorBoard(reporter)
    results = []
    try:
        for request, plan in plans:
            results.append(train_one(plan, request, data, split, device, dist, reporter))
    except KeyboardInterrupt:  # Ctrl-C: the note says what the run in progress has saved
        raise KeyboardInterrupt(reporter.interrupted_note()) from None
    finally:
        reporter.close()
        distributed.shutdown()
    if dist.is_main:
        console.print(results_table(results))
    return results
