"""A study, above the training loop: every (model, seed) run of its requests planned and checked before
any run folder exists (`plan_runs`), then trained in this process (`run_here`, on every rank under
torchrun), as one job per GPU with --gpus (`archbench.launch`) or as cluster jobs with --launcher
(`archbench.cluster`). A job's child process is ``python -m archbench.study JOB`` (`run_job`).
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from rich.console import Console

from archbench import cluster, distributed, launch, runs
from archbench.config import RunRequest, parse_lr, resolve_config
from archbench.data import resolve
from archbench.data.loader import augmentation_named
from archbench.data.split import Holdout, holdout
from archbench.devices import PRECISIONS, optimizer_kernel, resolve_channels_last, resolve_device, resolve_precision
from archbench.errors import DIVERGED_EXIT, ArchbenchError
from archbench.progress import Bars, LogLines, Reporter, results_table
from archbench.registry import check_forward, check_memory, get_entry
from archbench.tensorboard import TensorBoard
from archbench.train import Plan, damaged_run, finished_summary, train_one
from archbench.tuning import read_tuning


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
            optimizer_kernel=optimizer_kernel(device, precision),
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
        if not (request.launcher or request.gpus):  # else each job checks the device it trains on
            dtype = PRECISIONS[precision] or torch.float32
            check_memory(entry, base.image_size, data.num_classes, base.recipe.batch_size, device, dtype)
        plans += [Plan(entry, replace(base, seed=seed)) for seed in request.seeds]
    if not request.fresh:
        refuse_damaged_records(plans, request.out)
    return plans


def refuse_damaged_records(plans: list[Plan], out: Path) -> None:
    """Stop before the first run trains if a plan's run is recorded as finished but its record is damaged,
    rather than when the study reaches that run."""
    for plan in plans:
        recorded = runs.runs_with_hash(out / plan.config.model, runs.config_hash(plan.config.to_json()))
        if (found := runs.finished_run(recorded)) and (damage := finished_summary(found)[1]):
            raise damaged_run(found, damage)


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
    """`archbench run`: every model x seed of `request` (`run_requests`)."""
    return run_requests([request], console)


def run_requests(requests: list[RunRequest], console: Console | None = None) -> list[dict]:
    """Every model x seed of every request (`archbench tune`: one request per rate, sharing the device,
    data and split), checked before the first run folder is made (`plan_runs`), then trained here or as
    jobs. A model that diverges is recorded as such and the next one still runs."""
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
            return cluster.submit_runs(launch.jobs_of(requests), first, console)
        return launch.run_on_gpus(launch.jobs_of(requests), first.gpus, console)
    return run_here(requests, console)


def run_here(requests: list[RunRequest], console: Console, opened: Path | None = None) -> list[dict]:
    """Every run of `requests` in this process, one after another, and the closing table. A job's child
    passes `opened`: it names there each run folder it opens, and leaves the table to its parent."""
    first = requests[0]
    dist = distributed.from_environment(first.device)
    device = resolve_device(first.device, dist.local_rank if dist.enabled else None)
    data, split = study_data(first, console)
    plans = [
        (request, plan) for request in requests for plan in plan_runs(request, data, split, device, dist.world_size)
    ]
    if dist.is_main:
        ensure_writable(first.out)
    reporter = reporter_for(first, console, dist.is_main, opened)
    results = []
    try:
        for request, plan in plans:
            results.append(train_one(plan, request, data, split, device, dist, reporter))
    except KeyboardInterrupt:  # Ctrl-C: the note says what the run in progress has saved
        raise KeyboardInterrupt(reporter.interrupted_note()) from None
    finally:
        reporter.close()
        distributed.shutdown()
    if dist.is_main and opened is None:
        console.print(results_table(results))
    return results


def reporter_for(request: RunRequest, console: Console, is_main: bool, opened: Path | None) -> Reporter:
    """Nothing on ranks other than 0; else a job's log lines (`opened`), --quiet's lines or bars, behind
    TensorBoard with --tensorboard."""
    if not is_main:
        return Reporter()
    shown = (
        launch.JobLog(console, request.out, opened) if opened else LogLines(console) if request.quiet else Bars(console)
    )
    return TensorBoard(shown) if request.tensorboard else shown


def run_job(job_file: Path) -> list[dict]:
    """Train the request of a job file (`archbench.launch.write_job`) here."""
    job = runs.read_json(Path(job_file))
    return run_here([RunRequest(**job["request"])], Console(), opened=Path(job["opened"]))


def main(job_file: str) -> int:
    """`python -m archbench.study JOB`: `run_job` with `archbench run`'s exit codes."""
    try:
        results = run_job(Path(job_file))
    except ArchbenchError as e:
        print(f"error: {e.message}", file=sys.stderr, flush=True)
        return e.exit_code
    return DIVERGED_EXIT if any(r["status"] != "completed" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
