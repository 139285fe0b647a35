"""`archbench tune`: the same learning-rate budget for every model, spent on a validation split.

One short training per (model, rate) of a log-spaced grid, each a run record marked as a tuning trial, scored on
a split carved from the training set; the outcome is one tuning file (`archbench.tuning`). With `--launcher`
the trials are cluster jobs, collected by rerunning the command. docs/tuning.md has the protocol.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

import archbench
from archbench import distributed, runs
from archbench.cluster import check_request
from archbench.config import (
    TUNE_EPOCH_FRACTION,
    TUNE_GRID,
    TUNE_VAL_PER_CLASS,
    RunRequest,
    TuneRequest,
    resolve_config,
    run_identity,
)
from archbench.data import resolve
from archbench.data.split import holdout
from archbench.errors import ArchbenchError
from archbench.provenance import utc_now
from archbench.registry import Entry, get_entry
from archbench.status import is_locked
from archbench.study import run_requests
from archbench.train import finished_summary
from archbench.tuning import CHOSEN, Trial, existing_tuning, grid_edge, write_tuning


def default_val_per_class(labels) -> int:
    """50 images per class (Tiny-ImageNet's 500 -> 10%), or a tenth of the smallest class when that is fewer."""
    smallest = int(np.bincount(np.asarray(labels)).min())
    return max(1, min(TUNE_VAL_PER_CLASS, smallest // 10))


def trial_requests(request: TuneRequest, grid: list[float], epochs: int, per_class: int) -> list[RunRequest]:
    """One `run` request per rate: the tune request's options, with the rate, epochs and split of a trial."""
    base = {f.name: getattr(request, f.name) for f in dataclasses.fields(RunRequest)}
    return [
        RunRequest(**{**base, "lr": repr(lr), "epochs": epochs, "holdout_per_class": per_class, "tuning_trial": True})
        for lr in grid
    ]


def tune(request: TuneRequest, console: Console | None = None) -> dict | None:
    """Run every trial, write the tuning file and return its content; None where this process writes none (a
    rank other than 0, or cluster trials not yet finished)."""
    console = console or Console()
    grid = sorted(set(request.lrs or TUNE_GRID))
    bad = [lr for lr in grid if not (math.isfinite(lr) and lr > 0)]
    if bad:
        raise ArchbenchError(f"--lr {bad[0]:g}: every rate to try must be a positive finite number.")
    preset = request.preset_spec
    epochs = request.epochs or max(1, math.ceil(preset.recipe.epochs * TUNE_EPOCH_FRACTION))
    data = resolve(request.data or preset.data, console=console)
    per_class = request.holdout_per_class or default_val_per_class(data.train_labels)
    validation = holdout(data.train_labels, per_class, request.split_seed).record()  # checks per_class first
    path = request.tuning_file
    data_record = {"fingerprint": data.fingerprint, "synthetic": data.synthetic}
    requests = trial_requests(request, grid, epochs, per_class)
    keep = existing_tuning(path, data=data_record, validation=validation, recipe=planned_recipe(requests[0]))
    if request.launcher:
        summaries = launch_trials(requests, request, data, validation, path, console)
        if summaries is None:
            return None
    else:
        summaries = run_requests(requests, console)
        if not is_main_rank():  # rank 0 wrote every record before run_requests returned on it
            return None
    read = [read_trial(s, request.out) for s in summaries]
    content = write_tuning(
        path,
        trials=[trial for trial, _ in read],
        configs=[config for _, config in read],
        data=data_record,
        validation=validation,
        provenance={"archbench_version": archbench.__version__, "finished_at": utc_now()},
        keep=keep,
    )
    console.print(tuning_table(content))
    for model in request.models:
        if edge := grid_edge(content["models"][model]):
            side, beyond = edge
            console.print(
                f"[yellow]warning:[/] {model}: the chosen rate {content['models'][model]['lr']:g} is the {side} of "
                f"the grid, so a {'higher' if side == 'top' else 'lower'} rate may score better; extend the grid "
                f"with {' '.join(f'--lr {lr:g}' for lr in beyond)} beside this command's rates (finished trials "
                "are not run again)",
                highlight=False,
                soft_wrap=True,
            )
    kept = sorted(set(content["models"]) - set(request.models))
    console.print(
        f"wrote {path}"
        + (f" (kept {', '.join(kept)} from the file)" if kept else "")
        + "; use it with `archbench run ... --lr tuned`"
        + (f" --tuning {path}" if request.tuning else ""),
        highlight=False,
        soft_wrap=True,
    )
    return content


def is_main_rank() -> bool:
    """Whether this process is rank 0 of a torchrun job, or runs alone (as `archbench.distributed` reads it)."""
    return distributed.torchrun_world_size() <= 1 or int(os.environ.get("RANK", "0")) == 0


def planned_recipe(trial: RunRequest) -> dict:
    """The recipe fields a trial of `trial` will record (`archbench.tuning.recipe_record`), known before it runs."""
    recipe = dataclasses.asdict(trial.recipe())
    image_size = trial.preset_spec.image_size if trial.image_size is None else trial.image_size
    return {"preset": trial.preset, "image_size": image_size, **recipe}


# ------------------------------------------------------------------------------------------ cluster jobs


def trial_identity(config: dict) -> dict:
    """What makes a recorded run this trial: its identity without the machine, so a trial finished on one node is
    found from another."""
    return run_identity(config, machine=False)


def expected_identity(trial: RunRequest, entry: Entry, seed: int, data, validation: dict) -> dict:
    """`trial_identity` of the run this trial of `entry` and `seed` will record (the machine named here is any)."""
    config = resolve_config(
        trial,
        entry,
        seed,
        data,
        device="cpu",
        precision="fp32",
        channels_last=False,
        optimizer_kernel="foreach",
        validation=validation,
    )
    return json.loads(json.dumps(trial_identity(config.to_json())))  # as a config.json read back holds it


def trial_state(folder: Path, wanted: dict) -> tuple[dict | None, bool]:
    """The summary of the newest finished run under the model's `folder` whose identity is `wanted` (None:
    none finished), and whether a run of it is training right now."""
    matching = runs.matching_runs(folder, lambda config: trial_identity(config) == wanted)
    if finished := runs.finished_run(matching):
        return runs.read_json(finished / runs.SUMMARY), False
    return None, any(is_locked(run_dir) for run_dir in matching)


def launch_trials(
    requests: list[RunRequest], request: TuneRequest, data, validation: dict, path: Path, console: Console
) -> list[dict] | None:
    """With --launcher: submit every trial neither finished under --out nor training now; the summaries of all
    trials once every one is finished, else None (after saying how to collect them)."""
    check_request(request)
    trials = [(trial, model, seed) for trial in requests for model in trial.models for seed in trial.seeds]
    entries = {model: get_entry(model, registry=request.registry) for model in request.models}
    wanted = [expected_identity(t, entries[m], s, data, validation) for t, m, s in trials]

    def trial_states() -> list[tuple[dict | None, bool]]:
        return [trial_state(trial.out / model, identity) for (trial, model, _), identity in zip(trials, wanted)]

    states = trial_states()
    todo = [t for t, (summary, running) in zip(trials, states) if summary is None and not running]
    if todo:
        run_requests([dataclasses.replace(trial, models=[model], seeds=[seed]) for trial, model, seed in todo], console)
        states = trial_states()  # with --wait, the submitted ones have ended
    unfinished = sum(summary is None for summary, _ in states)
    if unfinished:
        console.print(
            f"{unfinished} of {len(trials)} tuning trials are not finished ({len(todo)} submitted now): once "
            f"their jobs have ended, rerun this same `archbench tune` command to write {path} (finished trials "
            "are not run again).",
            highlight=False,
            soft_wrap=True,
        )
        return None
    return [summary for summary, _ in states]


def read_trial(summary: dict, out: Path) -> tuple[Trial, dict]:
    """A finished trial's scores and its config.json, the record held together as `archbench run` holds it
    (`archbench.train.finished_summary`)."""
    run_dir = out / summary["model"] / summary["run_id"]
    config = runs.read_json(run_dir / runs.CONFIG)
    summary, damage = finished_summary(run_dir)
    if damage:
        raise ArchbenchError(
            f"tuning trial {run_dir.name} of {summary['model']} is damaged ({damage}): rerun it with --fresh."
        )
    epoch = summary["best_epoch"] if summary["status"] == "completed" else None
    row = None if epoch is None else runs.read_metrics(run_dir / runs.METRICS)[epoch - 1]
    trial = Trial(
        model=summary["model"],
        lr=float(config["recipe"]["lr"]),
        seed=summary["seed"],
        run_id=summary["run_id"],
        status=summary["status"],
        val_acc=None if row is None else row.holdout_acc,
        val_loss=None if row is None else row.holdout_loss,
        test_acc=None if row is None else row.test_acc,
    )
    return trial, config


def tuning_table(content: dict) -> Table:
    """Validation accuracy of every rate per model, the chosen rate marked."""
    grid = sorted({g["lr"] for m in content["models"].values() for g in m["grid"]})
    table = Table(
        title=f"archbench tune: validation accuracy after {content['epochs']} epoch(s)",
        caption="* chosen (highest validation accuracy; ties broken by validation loss); — diverged",
    )
    table.add_column("model")
    for lr in grid:
        table.add_column(f"lr {lr:g}", justify="right")
    table.add_column("chosen", justify="right")
    for model, choice in sorted(content["models"].items()):
        cells = {g["lr"]: g for g in choice["grid"]}
        row = []
        for lr in grid:
            g = cells.get(lr)
            text = "" if g is None else "—" if g["val_acc"] is None else f"{100 * g['val_acc']:.1f}%"
            row.append(text + ("*" if choice["lr"] == lr else ""))
        chosen = f"{choice['lr']:g}" if choice["status"] == CHOSEN else choice["status"]
        table.add_row(model, *row, chosen)
    return table
