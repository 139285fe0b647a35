"""`archbench status`: where a study stands, read from its run folders without disturbing them.

Every run folder `runs/<model>/<run_id>/` becomes one row (`run_status`); a run is *running* while
another process holds its lock (`is_locked`), *interrupted* when its lock is free but it has no final
record, and a damaged record becomes a row naming the damaged file while every other run is still
shown. What the table shows is described in docs/running.md ("Where a study stands").
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import math
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from rich import box
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from archbench import runs
from archbench.config import lr_origin, upgrade_config
from archbench.errors import ArchbenchError
from archbench.progress import pct

# The metrics.csv columns (runs.METRICS_COLUMNS) this table reads.
NEEDED = ("epoch", "test_acc", "epoch_seconds", "train_images_per_s")


@dataclass
class RunStatus:
    model: str
    run_id: str
    seed: int | None = None
    status: str = ""  # running, interrupted, completed, diverged, or "damaged: <file>"
    reason: str | None = None  # why a record is damaged, where more than its file can be said
    diverged_at_epoch: int | None = None  # the first epoch metrics.csv records a non-finite value
    tuning: bool = False
    lr: float | None = None  # the rate the run trains at
    arm: str | None = None  # default, tuned, --lr or trial (see `arm_of`)
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


def arm_of(lr_source: object, tuning: bool) -> str | None:
    """Which arm of a study a run belongs to, from its config's `recipe.lr_source` (see
    `archbench.config.resolve_lr`): a tuning trial, a tuned rate, a rate given with --lr, or the preset's."""
    return "trial" if tuning else lr_origin(lr_source)


def is_locked(run_dir: Path) -> bool:
    """Whether another process holds the run's lock (it is training right now): a shared, non-blocking flock
    on a descriptor of our own fails while the trainer holds its exclusive one (and is released with the
    descriptor); the lock file is opened read-only and never created."""
    try:
        fd = os.open(run_dir / ".lock", os.O_RDONLY)
    except OSError:  # no lock file: no process has ever trained here
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        pass
    finally:
        os.close(fd)
    return False


def _metrics(path: Path) -> list[runs.EpochMetrics]:
    """metrics.csv's rows (none yet: no file), in this version's names, with every column of its schema version
    and a value in each of the columns `NEEDED`."""
    rows = runs.read_metrics(path, needed=None)
    if any(getattr(row, c) is None for row in rows for c in NEEDED):
        raise runs.DamagedRecord(path.name, f"{path.name} has an empty value in a column of {', '.join(NEEDED)}")
    return rows


def run_status(run_dir: Path) -> RunStatus:
    """One run folder's row; a damaged record gives a row whose status names the damaged file and whose reason
    says why (as the report names it: `archbench.runs.check_record`)."""
    row = RunStatus(model=run_dir.parent.name, run_id=run_dir.name)
    try:
        config = upgrade_config(runs.read_record(run_dir / runs.CONFIG))
        row.model = str(config.get("model", row.model))
        row.seed = config.get("seed")
        row.tuning = config.get("tuning_trial") is True or config.get("tuning") is True
        try:
            row.epochs_total = int(config["recipe"]["epochs"])
            row.lr = float(config["recipe"]["lr"])
        except (KeyError, TypeError, ValueError):
            raise runs.DamagedRecord(runs.CONFIG, "config.json lacks a numeric recipe.epochs or recipe.lr") from None
        row.arm = arm_of(config["recipe"].get("lr_source"), row.tuning)
        summary_path = run_dir / runs.SUMMARY
        summary = runs.current_summary(runs.read_record(summary_path)) if summary_path.exists() else {}
        metrics = _metrics(run_dir / runs.METRICS)
        running = is_locked(run_dir)
        if not running:
            runs.check_record(config, summary, metrics)
    except runs.DamagedRecord as e:
        row.status, row.reason = f"damaged: {e.file}", str(e)
        return row

    recorded = summary.get("status")
    row.diverged_at_epoch = runs.non_finite_epoch(metrics, runs.holdout_record(config) is not None)
    if running:
        row.status = "running"
    elif row.diverged_at_epoch is not None:
        row.status = "diverged"
    elif recorded in runs.UNFINISHED:
        row.status = "interrupted"
    else:
        row.status = str(recorded)
    row.epochs_done = len(metrics)
    if metrics:
        accuracies = [m.test_acc for m in metrics]
        row.last_test_acc, row.best_test_acc = accuracies[-1], max(accuracies)
        row.images_per_s = metrics[-1].train_images_per_s
        row.seconds = math.fsum(m.epoch_seconds for m in metrics)
    if row.status == "running" and metrics and row.epochs_total is not None:
        row.seconds_left = row.seconds / len(metrics) * max(row.epochs_total - len(metrics), 0)
    return row


def study_status(runs_dir: Path) -> list[RunStatus]:
    """A row per `runs_dir/<model>/<run_id>/` folder (hidden ones, such as job logs, left out)."""
    folders = sorted(d for d in Path(runs_dir).glob("[!.]*/[!.]*") if d.is_dir())
    if not folders:
        raise ArchbenchError(f"no runs under {runs_dir}/; start some with `archbench run MODEL...`.")
    rows = [run_status(d) for d in folders]
    return sorted(rows, key=lambda r: (r.model, r.tuning, r.seed if r.seed is not None else -1, r.lr or 0.0, r.run_id))


def duration(seconds: float | None) -> str:
    """1h02m, 3m05s, 42s; a dash for unknown."""
    if seconds is None:
        return "—"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def short_id(run_id: str) -> str:
    """The distinguishing tail of a run id (`<time>-s<seed>-<config hash>-<random>`): hash and random part."""
    parts = run_id.split("-")
    return "-".join(parts[-2:]) if len(parts) >= 5 else run_id


def status_text(row: RunStatus) -> str:
    """The status as the table shows it: a run that went non-finite with the epoch where it did."""
    if row.status == "diverged" and row.diverged_at_epoch is not None:
        return f"diverged (epoch {row.diverged_at_epoch})"
    return row.status


def _name(row: RunStatus) -> str:
    return row.model if row.seed is None else f"{row.model} s{row.seed}"


STYLES = {"running": "cyan", "completed": "green", "diverged": "red", "interrupted": "yellow"}
CAPTIONS = {
    "arm": "arm: default (the preset's rate), tuned, --lr or (tuning) trial",
    "epochs": "epochs: done / the recipe's",
    "last": "last, best: test accuracy",
    "img/s": "img/s: the last epoch's training images/s",
    "time": "time: sum of epoch times",
    "left": "left: mean epoch time x epochs to go",
    "run": "run: the end of the run id",
}
# Columns left out, in this order, until the table fits the console (the rest are always shown).
OPTIONAL = ("best", "time", "img/s", "last")


def status_table(rows: list[RunStatus], title: str, width: int | None = None) -> Table:
    """The table `show_status` prints, at most `width` columns wide: the end of each run id always, "left"
    only while a run is training, and the columns of `OPTIONAL` dropped until it fits (never cut with "…")."""
    left = [r.seconds_left for r in rows if r.seconds_left is not None]
    running = any(r.status == "running" for r in rows)
    cells = {
        "model": [_name(r) for r in rows],
        "status": [Text(status_text(r), style="bold red" if r.damaged else STYLES.get(r.status, "")) for r in rows],
        "arm": [Text(r.arm or "—", style="magenta" if r.tuning else "") for r in rows],
        "lr": ["—" if r.lr is None else f"{r.lr:.3g}" for r in rows],
        "epochs": ["—" if r.damaged else f"{r.epochs_done}/{r.epochs_total}" for r in rows],
        "last": [pct(r.last_test_acc) for r in rows],
        "best": [pct(r.best_test_acc) for r in rows],
        "img/s": ["—" if r.images_per_s is None else f"{r.images_per_s:.0f}" for r in rows],
        "time": [duration(r.seconds if not r.damaged else None) for r in rows],
        "left": [duration(r.seconds_left) for r in rows],
        "run": [short_id(r.run_id) for r in rows],
    }
    total = {
        "model": "total",
        "status": f"{len(rows)} run{'s' * (len(rows) != 1)}",
        "epochs": f"{sum(r.epochs_done for r in rows)}/{sum(r.epochs_total or 0 for r in rows)}",
        "time": duration(math.fsum(r.seconds for r in rows)),
        "left": duration(math.fsum(left)) if left else "—",
    }
    columns = [c for c in cells if c != "left" or running]
    for drop in (None, *OPTIONAL):
        if drop is not None:
            columns.remove(drop)
        table = _table(title, columns, cells, total)
        if width is None or _width(table) <= width:
            break
    return table


def _table(title: str, columns: list[str], cells: dict, total: dict) -> Table:
    captions = [text for c, text in CAPTIONS.items() if c in columns]
    if "best" not in columns:
        captions = [text.replace("last, best:", "last:") for text in captions]
    # No padding: the box's column divider is the one space between columns.
    table = Table(title=title, box=box.SIMPLE, padding=0, pad_edge=False, caption="; ".join(captions))
    for column in columns:
        left_aligned = column in ("model", "status", "arm", "run")
        table.add_column(
            column, justify="left" if left_aligned else "right", no_wrap=True, style="dim" if column == "run" else None
        )
    for row in zip(*(cells[c] for c in columns)):
        table.add_row(*row)
    table.add_section()
    table.add_row(*(total.get(c, "") for c in columns), style="bold")
    return table


def _width(table: Table) -> int:
    """The columns `table` needs on one line per row."""
    from rich.measure import Measurement

    wide = Console(width=10_000)
    return Measurement.get(wide, wide.options, table).maximum


def counts_line(rows: list[RunStatus]) -> str:
    """How many runs are in each status, e.g. "4 completed, 1 running, 2 tuning trials"."""
    counts = Counter("damaged" if r.damaged else r.status for r in rows)
    order = ("running", "interrupted", "completed", "diverged", "damaged")
    parts = [f"{counts[s]} {s}" for s in sorted(counts, key=lambda s: order.index(s) if s in order else len(order))]
    if trials := sum(r.tuning for r in rows):
        parts.append(f"{trials} tuning trial{'s' * (trials != 1)}")
    return ", ".join(parts)


def show_status(runs_dir: Path, console: Console | None = None) -> list[RunStatus]:
    """`archbench status`: print one table of every run under `runs_dir`; returns its rows."""
    console = console or Console()
    rows = study_status(runs_dir)
    console.print(status_view(rows, runs_dir, console.width))
    return rows


def status_view(rows: list[RunStatus], runs_dir: Path, width: int):
    """The table and the counts line, as one renderable (what `show_status` prints and `--watch` redraws)."""
    table = status_table(rows, title=f"archbench status: {runs_dir}", width=width)
    reasons = [f"{_name(r)} {short_id(r.run_id)}: {r.reason}" for r in rows if r.reason]
    return Group(table, Text(counts_line(rows)), *(Text(line, style="red") for line in reasons))


def status_json(runs_dir: Path) -> list[dict]:
    """`archbench status --json`: one object per run, the table's fields by name (seconds, fractions)."""
    return [asdict(row) for row in study_status(runs_dir)]


def watch_status(
    runs_dir: Path, every: float, console: Console | None = None, rounds: int | None = None
) -> list[RunStatus]:
    """`archbench status --watch`: redraw the table every `every` seconds until Ctrl-C (or `rounds` draws)."""
    from rich.live import Live

    console = console or Console()
    rows = study_status(runs_dir)
    live = Live(status_view(rows, runs_dir, console.width), console=console, auto_refresh=False)
    with live, contextlib.suppress(KeyboardInterrupt):
        for _ in itertools.count() if rounds is None else range(rounds - 1):
            time.sleep(every)
            rows = study_status(runs_dir)
            live.update(status_view(rows, runs_dir, console.width), refresh=True)
    return rows
