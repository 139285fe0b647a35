"""`archbench tune`: the same learning-rate budget for every model, spent on a validation split.

For each model, one short training per rate of a log-spaced grid (DeepOBS's protocol: tune per
contestant, then rerun the best setting over several seeds), on the training split minus a held-out
validation split, scored on that split and never on the test set. Each trial is a normal run record,
marked as a tuning trial (resumable; a finished one is skipped when the command is rerun; a diverged one
is a result, not a crash). The outcome is one tuning file (`archbench.tuning`) that `archbench run --lr
tuned` reads.
"""

from __future__ import annotations

import csv
import dataclasses
import math
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

import archbench
from archbench import runs
from archbench.config import TUNE_EPOCH_FRACTION, TUNE_GRID, TUNE_VAL_PER_CLASS, RunRequest, TuneRequest
from archbench.data import resolve
from archbench.data.split import holdout
from archbench.errors import ArchbenchError
from archbench.provenance import utc_now
from archbench.train import run_requests
from archbench.tuning import CHOSEN, Trial, write_tuning


def default_val_per_class(labels) -> int:
    """50 images per class (Tiny-ImageNet's 500 -> 10%), or a tenth of the smallest class when that is fewer."""
    smallest = int(np.bincount(np.asarray(labels)).min())
    return max(1, min(TUNE_VAL_PER_CLASS, smallest // 10))


def trial_requests(request: TuneRequest, grid: list[float], epochs: int, per_class: int) -> list[RunRequest]:
    """One `run` request per rate: the tune request's options, with the rate, epochs and split of a trial."""
    base = {f.name: getattr(request, f.name) for f in dataclasses.fields(RunRequest)}
    return [
        RunRequest(**{**base, "lr": repr(lr), "epochs": epochs, "val_per_class": per_class, "tuning_trial": True})
        for lr in grid
    ]


def tune(request: TuneRequest, console: Console | None = None) -> dict:
    """Run every trial, write the tuning file and return its content."""
    console = console or Console()
    grid = sorted(set(request.lrs or TUNE_GRID))
    bad = [lr for lr in grid if not (math.isfinite(lr) and lr > 0)]
    if bad:
        raise ArchbenchError(f"--lr {bad[0]:g}: every rate to try must be a positive finite number.")
    preset = request.preset_spec
    epochs = request.epochs or max(1, math.ceil(preset.recipe.epochs * TUNE_EPOCH_FRACTION))
    data = resolve(request.data or preset.data, console=console)
    per_class = request.val_per_class or default_val_per_class(data.train_labels)
    split = holdout(data.train_labels, per_class, request.split_seed)  # checks per_class before anything runs
    requests = trial_requests(request, grid, epochs, per_class)
    summaries = run_requests(requests, console)
    read = [read_trial(s, request.out) for s in summaries]
    path = request.tuning or request.out / "tuning.json"
    content = write_tuning(
        path,
        trials=[trial for trial, _ in read],
        data={"fingerprint": data.fingerprint, "synthetic": data.synthetic},
        validation=split.record(),
        epochs=epochs,
        preset=request.preset,
        global_batch=max(b for _, b in read),
        provenance={"archbench_version": archbench.__version__, "finished_at": utc_now()},
    )
    console.print(tuning_table(content))
    console.print(
        f"wrote {path}; use it with `archbench run ... --lr tuned`" + (f" --tuning {path}" if request.tuning else ""),
        highlight=False,
        soft_wrap=True,
    )
    return content


def read_trial(summary: dict, out: Path) -> tuple[Trial, int]:
    """A finished trial's scores, from its run record, and the global batch it trained with."""
    run_dir = out / summary["model"] / summary["run_id"]
    config = runs.read_json(run_dir / runs.CONFIG)
    epoch = summary["best_epoch"] if summary["status"] == "completed" else None
    row = None
    if epoch is not None:
        with open(run_dir / runs.METRICS, encoding="utf-8") as f:
            row = list(csv.DictReader(f))[epoch - 1]
    trial = Trial(
        model=summary["model"],
        lr=float(config["recipe"]["lr"]),
        seed=summary["seed"],
        run_id=summary["run_id"],
        status=summary["status"],
        val_acc=None if row is None else float(row["val_acc"]),
        val_loss=None if row is None else float(row["val_loss"]),
        test_acc=None if row is None else float(row["test_acc"]),
    )
    return trial, int(config["recipe"]["global_batch_size"])


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
