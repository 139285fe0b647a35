"""`archbench status`: where a study stands, read from its run folders without disturbing them.

Every run folder `runs/<model>/<run_id>/` becomes one row: its status, epochs done of the recipe's,
last and best test accuracy, training images/s of the last epoch, time spent and, for a run in
progress, the time it still needs (its mean epoch time x the epochs left).

A run is *running* while another process holds its lock: `archbench run` keeps an exclusive flock on
the run folder's `.lock` for as long as it trains. Testing that takes a shared lock on a separate file
descriptor and releases it at once; nothing under a run folder is ever written or created here. A
run whose lock is free but which has no final record (no summary.json, or one that still says
"interrupted") is *interrupted*: rerunning its command resumes it from its last checkpoint. A
config.json with `"tuning_trial": true` (or an older record's `"tuning": true`) marks a tuning trial.

A damaged record (unreadable JSON, a metrics.csv without the columns this table needs) becomes a row
saying which file is damaged, and every other run is still shown.
"""

from __future__ import annotations

import csv
import fcntl
import math
import os
from dataclasses import dataclass
from pathlib import Path

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from archbench import runs
from archbench.errors import ArchbenchError
from archbench.progress import pct

# The metrics.csv columns (runs.METRICS_COLUMNS) this table reads.
NEEDED = ("epoch", "test_acc", "epoch_seconds", "train_images_per_s")


class Damaged(Exception):
    """A record file of a run cannot be read; the message names the file."""


@dataclass
class RunStatus:
    model: str
    run_id: str
    seed: int | None = None
    status: str = ""  # running, interrupted, completed, diverged, or "damaged: <file>"
    tuning: bool = False
    epochs_done: int = 0
    epochs_total: int | None = None
    last_test_acc: float | None = None
    best_test_acc: float | None = None
    images_per_s: float | None = None  # the last epoch's training images/s
    seconds: float = 0.0  # sum of epoch_seconds
    seconds_left: float | None = None  # running runs only

    @property
    def damaged(self) -> bool:
        return self.status.startswith("damaged")


# ------------------------------------------------------------------------------------------ reading


def is_locked(run_dir: Path) -> bool:
    """Whether another process holds the run's lock (it is training right now).

    A shared, non-blocking flock on a file descriptor of our own fails while the trainer holds its
    exclusive one; when it succeeds it is released at once. The lock file is opened read-only and
    never created.
    """
    try:
        fd = os.open(run_dir / ".lock", os.O_RDONLY)
    except OSError:  # no lock file: no process has ever trained here
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def _json(path: Path) -> dict:
    try:
        value = runs.read_json(path)
    except (OSError, ValueError, UnicodeDecodeError):
        raise Damaged(path.name) from None
    if not isinstance(value, dict):
        raise Damaged(path.name)
    return value


def _metrics(path: Path) -> list[dict]:
    """metrics.csv's rows as floats (none yet: no file); the columns `NEEDED` must be there."""
    if not path.exists():
        return []
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if not set(NEEDED) <= set(reader.fieldnames or ()):
                raise Damaged(path.name)
            return [{c: float(row[c]) for c in NEEDED} for row in reader]
    except (OSError, ValueError, TypeError, UnicodeDecodeError, csv.Error):
        raise Damaged(path.name) from None


def run_status(run_dir: Path) -> RunStatus:
    """One run folder's row; a damaged record gives a row whose status names the damaged file."""
    row = RunStatus(model=run_dir.parent.name, run_id=run_dir.name)
    try:
        config = _json(run_dir / runs.CONFIG)
        row.model = str(config.get("model", row.model))
        row.seed = config.get("seed")
        row.tuning = config.get("tuning_trial") is True or config.get("tuning") is True
        try:
            row.epochs_total = int(config["recipe"]["epochs"])
        except (KeyError, TypeError, ValueError):
            raise Damaged(runs.CONFIG) from None
        summary = _json(run_dir / runs.SUMMARY) if (run_dir / runs.SUMMARY).exists() else {}
        metrics = _metrics(run_dir / runs.METRICS)
    except Damaged as e:
        row.status = f"damaged: {e}"
        return row

    recorded = summary.get("status")
    if is_locked(run_dir):
        row.status = "running"
    elif recorded in runs.UNFINISHED:
        row.status = "interrupted"
    else:
        row.status = str(recorded)
    row.epochs_done = len(metrics)
    if metrics:
        accuracies = [m["test_acc"] for m in metrics]
        row.last_test_acc, row.best_test_acc = accuracies[-1], max(accuracies)
        row.images_per_s = metrics[-1]["train_images_per_s"]
        row.seconds = math.fsum(m["epoch_seconds"] for m in metrics)
    if row.status == "running" and metrics and row.epochs_total is not None:
        row.seconds_left = row.seconds / len(metrics) * max(row.epochs_total - len(metrics), 0)
    return row


def run_folders(runs_dir: Path) -> list[Path]:
    """Every `runs_dir/<model>/<run_id>/` folder (hidden ones, such as job logs, left out)."""
    if not runs_dir.is_dir():
        return []
    return sorted(
        run_dir
        for model_dir in runs_dir.iterdir()
        if model_dir.is_dir() and not model_dir.name.startswith(".")
        for run_dir in model_dir.iterdir()
        if run_dir.is_dir() and not run_dir.name.startswith(".")
    )


def study_status(runs_dir: Path) -> list[RunStatus]:
    folders = run_folders(Path(runs_dir))
    if not folders:
        raise ArchbenchError(f"no runs under {runs_dir}/; start some with `archbench run MODEL...`.")
    rows = [run_status(d) for d in folders]
    return sorted(rows, key=lambda r: (r.model, r.seed if r.seed is not None else -1, r.run_id))


# ------------------------------------------------------------------------------------------ showing


def duration(seconds: float | None) -> str:
    """1h02m, 3m05s, 42s; a dash for unknown."""
    if seconds is None:
        return "—"
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def short_id(run_id: str) -> str:
    """The distinguishing tail of a run id (`<time>-s<seed>-<config hash>-<random>`): hash and random part."""
    parts = run_id.split("-")
    return "-".join(parts[-2:]) if len(parts) >= 5 else run_id


WIDE = 100  # console columns from which the table shows run ids
STYLES = {"running": "cyan", "completed": "green", "diverged": "red", "interrupted": "yellow"}


def status_table(rows: list[RunStatus], title: str, run_ids: bool = True) -> Table:
    """The table `show_status` prints; `run_ids` adds the end of each run id (which tells apart runs of
    one model and seed)."""
    table = Table(
        title=title,
        box=box.SIMPLE,
        collapse_padding=True,
        caption=(
            "epochs: done / the recipe's; last, best: test accuracy; img/s: the last epoch's training images/s; "
            "time: sum of epoch times; left: mean epoch time x epochs to go"
            + ("; run: the end of the run id" if run_ids else "")
        ),
    )
    table.add_column("model", no_wrap=True)
    table.add_column("status", no_wrap=True)
    for column in ("epochs", "last", "best", "img/s", "time", "left"):
        table.add_column(column, justify="right", no_wrap=True)
    if run_ids:
        table.add_column("run", style="dim", no_wrap=True)

    for r in rows:
        status = Text(r.status, style="bold red" if r.damaged else STYLES.get(r.status, ""))
        if r.tuning:
            status.append(" trial", style="magenta")
        table.add_row(
            r.model if r.seed is None else f"{r.model} s{r.seed}",
            status,
            "—" if r.damaged else f"{r.epochs_done}/{r.epochs_total}",
            pct(r.last_test_acc),
            pct(r.best_test_acc),
            "—" if r.images_per_s is None else f"{r.images_per_s:.0f}",
            duration(r.seconds if not r.damaged else None),
            duration(r.seconds_left),
            *([short_id(r.run_id)] if run_ids else []),
        )
    left = [r.seconds_left for r in rows if r.seconds_left is not None]
    table.add_section()
    table.add_row(
        "total",
        f"{len(rows)} run{'s' * (len(rows) != 1)}",
        f"{sum(r.epochs_done for r in rows)}/{sum(r.epochs_total or 0 for r in rows)}",
        "",
        "",
        "",
        duration(math.fsum(r.seconds for r in rows)),
        duration(math.fsum(left)) if left else "—",
        *([""] if run_ids else []),
        style="bold",
    )
    return table


def counts_line(rows: list[RunStatus]) -> str:
    """How many runs are in each status, e.g. "4 completed, 1 running, 2 tuning trials"."""
    counts: dict[str, int] = {}
    for r in rows:
        key = "damaged" if r.damaged else r.status
        counts[key] = counts.get(key, 0) + 1
    order = ("running", "interrupted", "completed", "diverged", "damaged")
    parts = [f"{counts[s]} {s}" for s in sorted(counts, key=lambda s: order.index(s) if s in order else len(order))]
    if trials := sum(r.tuning for r in rows):
        parts.append(f"{trials} tuning trial{'s' * (trials != 1)}")
    return ", ".join(parts)


def show_status(runs_dir: Path, console: Console | None = None) -> list[RunStatus]:
    """`archbench status`: print one table of every run under `runs_dir`; returns its rows."""
    console = console or Console()
    rows = study_status(runs_dir)
    wide = console.width >= WIDE
    console.print(status_table(rows, title=f"archbench status: {runs_dir}", run_ids=wide))
    console.print(counts_line(rows), highlight=False, soft_wrap=True)
    return rows
