"""The one training loop every model in the study goes through: `train_one`, read top to bottom as named
steps (docs/architecture.md follows a run through them). Precision, channels_last, torch.compile and DDP
are switches of the same loop, never copies of it. The step has no host-device sync: the loss and accuracy
sums, the clipping count and the early gradient diagnostics stay on the device and are read every
`LOG_EVERY` steps and at the end of the epoch.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from archbench import distributed, flops, runs
from archbench.config import STEP_FACTOR, STEP_MILESTONES, Recipe, RunConfig, RunRequest
from archbench.data.loader import DeviceLoader
from archbench.data.split import Holdout
from archbench.devices import (
    PRECISIONS,
    autocast_factory,
    compile_model,
    make_deterministic,
    make_optimizer,
    memory_format,
    needs_deterministic_pooling,
    peak_memory,
    reset_peak_memory,
    rng_state,
    seed_everything,
    set_rng_state,
    synchronize,
)
from archbench.distributed import DistContext
from archbench.errors import ArchbenchError
from archbench.gradients import GradientRecorder
from archbench.models.builders import one_line
from archbench.progress import Reporter
from archbench.provenance import provenance, utc_now
from archbench.registry import Entry
from archbench.runs import EpochMetrics, Summary

LOG_EVERY = 25  # steps between progress reads (each is one host-device sync)
NEVER = torch.iinfo(torch.long).max  # "no non-finite loss yet"
# The attributes of a `Training` a checkpoint holds, under their own names.
CHECKPOINTED = ("model", "optimizer", "scheduler", "scaler", "gradients", "clipping")
FRESH = "rerun with --fresh to start the run over."
TOP5_CLASSES = 100  # top-5 accuracy is recorded from this many classes on (the ImageNet-family habit)


@dataclass
class Training:
    """What one run trains with (a checkpoint holds the `CHECKPOINTED` ones); `forward` is the model as the
    step calls it (wrapped by DDP and/or torch.compile)."""

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
    """One run `archbench.study` will train: checked, with its config resolved, before any folder exists."""

    entry: Entry
    config: RunConfig


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
        return [runs.ClipRow(i, norm, self.max_norm, int(b)) for i, (norm, b) in enumerate(zip(norms, bound))]

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
    optimizer = make_optimizer(
        model.parameters(),
        optimizer=recipe.optimizer,
        lr=recipe.lr,
        momentum=recipe.momentum,
        weight_decay=recipe.weight_decay,
        nesterov=recipe.nesterov,
        kernel=config.optimizer_kernel,
    )
    recorded = min(config.gradnorm_steps, recipe.epochs * len(train_loader))  # steps the recorders keep
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
        gradients=GradientRecorder(model, recorded, device),
        clipping=ClipRecorder(recipe.clip_grad_norm, recorded, device),
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
    check_same_run(ckpt, run_path)
    try:
        for name in CHECKPOINTED:
            getattr(t, name).load_state_dict(ckpt[name])
        history = [EpochMetrics(**row) for row in ckpt["history"]]
        set_rng_state(ckpt["rng"][dist.rank], device)
        step = ckpt["epoch"] * len(t.train_loader)
        state = RunState(history, step, wall_before=ckpt["wall_seconds"], compile_seconds=ckpt["compile_seconds"])
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as e:
        raise ArchbenchError(
            f"the checkpoint of run {run_path.name} does not fit this model and recipe ({one_line(e)}); {FRESH}"
        ) from None
    if len(history) != ckpt["epoch"]:
        inconsistent = f"epoch {ckpt['epoch']}, {len(history)} recorded"
        raise ArchbenchError(f"the checkpoint of run {run_path.name} is inconsistent ({inconsistent}); {FRESH}")
    return state


def checkpoint_owner(run_path: Path) -> dict:
    """Which run a checkpoint belongs to: the config hash and the data fingerprint of the run's config.json."""
    config = runs.read_json(run_path / runs.CONFIG)
    return {"config_hash": config["config_hash"], "data_fingerprint": config["data"]["fingerprint"]}


def check_same_run(ckpt: dict, run_path: Path) -> None:
    """Refuse, in one line, the checkpoint of another run (copied in by hand) and one that does not say whose
    it is (older archbench, or edited): its history could be any run's."""
    ours = checkpoint_owner(run_path)
    if not isinstance(ckpt, dict) or not ours.keys() <= ckpt.keys():
        raise ArchbenchError(
            f"the checkpoint in run {run_path.name} carries no run identity (older archbench, or edited): {FRESH}"
        )
    theirs = {key: ckpt[key] for key in ours}
    if theirs != ours:
        data = ", other data" if theirs["data_fingerprint"] != ours["data_fingerprint"] else ""
        raise ArchbenchError(
            f"the checkpoint in run {run_path.name} belongs to another run (config hash {theirs['config_hash']}"
            f"{data}; this run's is {ours['config_hash']}): {FRESH}"
        )


def optimiser_step(
    t: Training, x: torch.Tensor, y: torch.Tensor, step: int
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """One training step (the `step`-th of the run) in its three phases, which `archbench.bench` times one
    by one. Returns the logits, the detached loss and the learning rate this step used."""
    logits, loss = forward_loss(t, x, y)
    backward(t, loss, step)
    return logits, loss.detach(), update(t)


def forward_loss(t: Training, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The step's first phase: the logits and the training loss (with the recipe's label smoothing)."""
    with t.autocast():
        logits = t.forward(x)
        return logits, F.cross_entropy(logits, y, label_smoothing=t.recipe.label_smoothing)


def backward(t: Training, loss: torch.Tensor, step: int) -> None:
    """The step's second phase: the gradients (scaled under fp16), the early gradient diagnostics of step
    `step` (before clipping) and clipping (recorded by `ClipRecorder`)."""
    t.optimizer.zero_grad(set_to_none=True)
    t.scaler.scale(loss).backward()
    record = t.gradients.wants(step)
    if record or t.recipe.clip_grad_norm:
        t.scaler.unscale_(t.optimizer)  # the true gradient, also under fp16
    if record:
        t.gradients.record(step)
    t.clipping.step(t.model, step)


def update(t: Training) -> float:
    """The step's last phase: the optimiser step (which the fp16 scaler skips on non-finite gradients) and
    the schedule. Returns the learning rate the step used."""
    t.scaler.step(t.optimizer)
    t.scaler.update()
    lr = t.optimizer.param_groups[0]["lr"]  # a Python float: no sync
    t.scheduler.step()
    return lr


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
                seconds = time.perf_counter() - started
                return EpochResult(math.nan, math.nan, seen, seen - excluded, lr, seconds, step, compile_seconds, bad)
            loss_sum, correct = sums.tolist()
            now = time.perf_counter()
            rate = (seen - seen_shown) * dist.world_size / max(now - tick, 1e-9)
            reporter.step(i + 1 - shown, epoch + 1, loss_sum / seen, correct / seen, rate, lr=lr)
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
    evaluation split, summed over the ranks' shards."""
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


def finite(*evaluations: tuple[float, float, float | None] | None) -> bool:
    """Whether every number of these evaluations is finite (None: no such split or metric)."""
    return all(math.isfinite(v) for e in evaluations if e is not None for v in e if v is not None)


def summarise(
    config: RunConfig,
    run_id: str,
    config_hash: str,
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
        config_hash=config_hash,
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
            **{name: getattr(t, name).state_dict() for name in CHECKPOINTED},
            "epoch": state.epoch,
            "history": [asdict(row) for row in state.history],
            "wall_seconds": wall,
            "compile_seconds": state.compile_seconds,
            "rng": rng,  # every rank's, so every rank resumes its own stream
            **checkpoint_owner(run_path),  # config_hash and data_fingerprint: `resume` continues only its own run
        },
    )


def model_size(model: nn.Module, image_size: int, dist: DistContext) -> dict:
    """Parameters and fvcore GFLOPs (counted on rank 0, on the uncompiled model) with the ops fvcore left out."""
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
    config_hash = checkpoint_owner(run_path)["config_hash"]
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
        if not finite(test, val):  # diverged at the step whose update made the evaluation non-finite
            status, diverged_at = "diverged", state.step - 1
            break
        state.history.append(epoch_row(epoch, result, state.images_seen, test, val, time.perf_counter() - epoch_start))
        reporter.epoch(label, asdict(state.history[-1]))
        wall = state.wall_before + time.perf_counter() - started
        interim = summarise(config, run_id, config_hash, state, "interrupted", None, size, device, wall)
        record_epoch(run_path, t, state, interim, device, dist)

    wall = state.wall_before + time.perf_counter() - started
    summary = summarise(config, run_id, config_hash, state, status, diverged_at, size, device, wall)
    if dist.is_main:
        write_run_record(run_path, state, t, summary)
        if not request.keep_checkpoint:  # the run is final: nothing left to resume
            (run_path / runs.CHECKPOINT).unlink(missing_ok=True)
        run.close()
    summary = asdict(summary)
    reporter.finish(label, summary)
    return summary


def open_run(plan: Plan, request: RunRequest, device: torch.device, dist: DistContext):
    """Rank 0 picks (or reopens) the run folder and the others follow: the open run (rank 0's), its path, id
    and, when it is finished, its summary (`finished_summary`; a damaged record is refused in one line)."""
    # No path of this machine: the entry is recorded by name and TOML hash, the data by name and fingerprint,
    # so a run folder copied elsewhere means the same there.
    record = {**plan.config.to_json(), "provenance": provenance(device)}
    run = runs.open_run(request.out, record, request.fresh) if dist.is_main else None
    run_path, run_id, finished = dist.broadcast((str(run.path), run.run_id, run.status) if run else None)
    run_path = Path(run_path)
    summary = None
    if finished:
        summary, damage = dist.broadcast(finished_summary(run_path) if dist.is_main else None)
        if damage:
            raise damaged_run(run_path, damage)
    return run, run_path, run_id, summary


def damaged_run(run_path: Path, damage: str) -> ArchbenchError:
    return ArchbenchError(f"run {run_path.name} is damaged ({damage}): rerun with --fresh to train it anew.")


def finished_summary(run_path: Path) -> tuple[dict, str | None]:
    """A finished run's summary.json as `archbench status` and the report read it (diverged when metrics.csv
    has a non-finite value, whatever it says), and why the record is damaged (None when it is not)."""
    config = runs.read_json(run_path / runs.CONFIG)
    summary = runs.current_summary(runs.read_json(run_path / runs.SUMMARY))
    try:
        history = runs.read_metrics(run_path / runs.METRICS)
        runs.check_record(config, summary, history)
    except runs.DamagedRecord as e:
        return summary, e.message
    if runs.non_finite_epoch(history, runs.holdout_record(config) is not None) is not None:
        summary["status"] = "diverged"
    return summary, None


def record_epoch(
    run_path: Path, t: Training, state: RunState, interim: Summary, device: torch.device, dist: DistContext
) -> None:
    """After each epoch, on rank 0: the run record as it stands, then the checkpoint (with every rank's RNG
    state). A crash between them redoes one epoch and rewrites the record from the checkpoint's history."""
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
