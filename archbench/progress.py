"""How a training run shows itself: Rich progress bars, plain log lines (`--quiet`), or nothing; and the
closing table of a command's runs.

The training loop calls the same methods whichever reporter is in use; reading a value for display is
a host-device sync, so the loop calls `step` only every few steps.
"""

from __future__ import annotations

from pathlib import Path

from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from archbench.runs import METRICS

MEASURING = "measuring first steps…"


def epoch_line(label: str, row: dict, epochs: int) -> str:
    val = "" if row.get("holdout_acc") is None else f" | holdout acc {100 * row['holdout_acc']:.2f}%"
    top5 = "" if row.get("test_top5") is None else f" top-5 {100 * row['test_top5']:.2f}%"
    return (
        f"{label} epoch {row['epoch']}/{epochs}: train loss {row['train_loss']:.4f} "
        f"acc {100 * row['train_acc']:.2f}% | test loss {row['test_loss']:.4f} acc {100 * row['test_acc']:.2f}%"
        f"{top5}{val} "
        f"| lr {row['lr']:.4g} | {row['train_images_per_s']:.0f} img/s | {row['epoch_seconds']:.1f}s"
    )


def finish_line(label: str, summary: dict) -> str:
    """A run's last line. A diverged run ends at a step whose training loss, or whose evaluation's loss or
    accuracy, was non-finite: the summary records the step alone, so the line names both."""
    status, run = summary["status"], f"(run {summary['run_id']})"
    if status == "diverged":
        step = summary["diverged_at_step"]
        return f"{label}: [red]diverged[/] at step {step} (a loss or accuracy went non-finite) {run}"
    if summary["best_epoch"] is None:
        return f"{label}: {status}, no epoch finished, {summary['wall_seconds']:.0f}s {run}"
    if summary.get("selected_on") == "holdout":
        best = (
            f"test acc {100 * summary['test_acc_at_best_epoch']:.2f}% at epoch {summary['best_epoch']}, "
            "chosen on the holdout"
        )
    else:
        best = f"final test acc {100 * summary['final_test_acc']:.2f}%"
    return f"{label}: {status}, {best}, {summary['wall_seconds']:.0f}s {run}"


def job_progress(console: Console) -> Progress:
    """One bar per job of a sweep or a cluster submission, with its state (queued, training, done, exit N)."""
    return bars(console, TextColumn("{task.fields[state]}"), TimeElapsedColumn())


def bars(console: Console, *columns) -> Progress:
    """Bars named by their task, with steps done of all, then `columns`."""
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), *columns, console=console
    )


def start_line(label: str, epochs: int, steps_per_epoch: int, done_steps: int) -> str:
    """A run's first line; a resumed run says where it picks up, in every mode."""
    resumed = (
        f" (resuming after step {done_steps}, epoch {done_steps // max(steps_per_epoch, 1)})" if done_steps else ""
    )
    return f"{label}: {epochs} epochs x {steps_per_epoch} steps{resumed}"


class Reporter:
    """The reporter interface; on its own it shows nothing (ranks other than 0 under torchrun). Every
    reporter knows the run in progress, for the line Ctrl-C prints (`interrupted_note`)."""

    current: tuple[str, Path | None, int] | None = None  # label, run folder and epochs of the run in progress

    def start(
        self, label: str, epochs: int, steps_per_epoch: int, done_steps: int, run_path: Path | None = None
    ) -> None:
        self.current = (label, run_path, epochs)

    def step(
        self, advance: int, epoch: int, loss: float, acc: float, images_per_s: float, lr: float | None = None
    ) -> None: ...

    def epoch(self, label: str, row: dict) -> None: ...

    def finish(self, label: str, summary: dict) -> None:
        self.current = None

    def skip(self, label: str, summary: dict) -> None: ...

    def close(self) -> None: ...

    def interrupted_note(self) -> str:
        """What a run stopped now has saved: the epochs its record holds (a checkpoint is written after each
        epoch's record), in which folder; or that no run was training."""
        if self.current is None:
            return "no run was training; every finished run is recorded"
        label, run_path, epochs = self.current
        if run_path is None:
            return f"{label} was training"
        try:
            with open(run_path / METRICS, encoding="utf-8") as f:
                done = max(sum(1 for _ in f) - 1, 0)
        except OSError:
            done = 0
        if not done:
            return f"{label} had finished no epoch (it starts over in {run_path})"
        return f"{label}: {done} of {epochs} epochs saved in {run_path}"


class LogLines(Reporter):
    """`--quiet`: one line per epoch and per finished run, for logs and batch jobs."""

    def __init__(self, console: Console):
        self.console, self.epochs = console, 0

    def say(self, line: str) -> None:
        self.console.print(line, highlight=False, soft_wrap=True)

    def start(self, label, epochs, steps_per_epoch, done_steps, run_path=None):
        super().start(label, epochs, steps_per_epoch, done_steps, run_path)
        self.epochs = epochs
        self.say(start_line(label, epochs, steps_per_epoch, done_steps))

    def epoch(self, label, row):
        self.say(epoch_line(label, row, self.epochs))

    def finish(self, label, summary):
        super().finish(label, summary)
        self.say(finish_line(label, summary))

    def skip(self, label, summary):
        self.say(f"{label}: already recorded as {summary['run_id']} ({summary['status']}); --fresh runs it again")


class Bars(LogLines):
    """One bar per model over all its steps, with loss, accuracy, images/s and ETA (lines print above it)."""

    def __init__(self, console: Console):
        super().__init__(console)
        self.progress = bars(
            console,
            TextColumn("ep {task.fields[epoch]}"),
            TextColumn("{task.fields[measured]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        )
        self.progress.start()
        self.task = None

    def start(self, label, epochs, steps_per_epoch, done_steps, run_path=None):
        Reporter.start(self, label, epochs, steps_per_epoch, done_steps, run_path)
        self.epochs = epochs
        if done_steps:
            self.say(start_line(label, epochs, steps_per_epoch, done_steps))
        self.task = self.progress.add_task(
            label,
            total=epochs * steps_per_epoch,
            completed=done_steps,
            epoch=done_steps // max(steps_per_epoch, 1) + 1,
            measured=MEASURING,  # no loss or speed is shown before one is measured
        )

    def step(self, advance, epoch, loss, acc, images_per_s, lr=None):
        measured = f"loss {loss:.3f} acc {100 * acc:5.1f}% {images_per_s:.0f} img/s"
        self.progress.update(self.task, advance=advance, epoch=epoch, measured=measured)

    def close(self):
        self.progress.stop()


def pct(value: float | None) -> str:
    """An accuracy as a percentage for the terminal tables, or — when there is none."""
    return "—" if value is None else f"{100 * value:.1f}%"


def results_table(results: list[dict]) -> Table:
    """The closing comparison: one row per run, final accuracies, epochs to each threshold."""
    thresholds = list(results[0]["epochs_to_threshold"]) if results else []
    table = Table(
        title="archbench run",
        box=box.SIMPLE,
        caption="final accuracies; ≥t: first epoch with test accuracy ≥ t (— never)",
        pad_edge=False,
        collapse_padding=True,  # one space between columns: a row fits 80 columns without cutting a cell
    )
    table.add_column("model", no_wrap=True)
    table.add_column("status", no_wrap=True)
    for column in ("train", "test", *(f"≥{t}" for t in thresholds), "img/s", "time"):
        table.add_column(column, justify="right", no_wrap=True)

    for s in results:
        table.add_row(
            f"{s['model']} s{s['seed']}",
            s["status"],
            pct(s["final_train_acc"]),
            pct(s["final_test_acc"]),
            *(str(e) if (e := s["epochs_to_threshold"].get(t)) is not None else "—" for t in thresholds),
            "—" if s["mean_train_images_per_s"] is None else f"{s['mean_train_images_per_s']:.0f}",
            f"{s['wall_seconds']:.0f}s",
        )
    return table
