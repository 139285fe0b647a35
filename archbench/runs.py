"""Run records on disk: one folder per run, `runs/<model>/<run_id>/`, and the one schema of their files.

The dataclasses below are the schema of config.json, metrics.csv, gradnorms.csv, clipping.csv and summary.json:
the training loop writes through `write_record`, the report and `archbench status` read the columns they define
and hold the files to each other (`check_record`). Files are replaced atomically; a process locks the run it
writes. The format, its versions and the resume rules are in docs/running.md (Run records).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime as dt
import fcntl
import hashlib
import io
import json
import os
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from archbench.config import run_identity
from archbench.errors import ArchbenchError

CHECKPOINT = "checkpoint.pt"
CONFIG, METRICS, GRADNORMS, SUMMARY = "config.json", "metrics.csv", "gradnorms.csv", "summary.json"
CLIPPING = "clipping.csv"
SCHEMA_VERSION = 3  # what each version changed: docs/running.md, Run records
# Columns and keys renamed since version 1 (old name -> new name); readers of older records map them.
RENAMED = {"val_loss": "holdout_loss", "val_acc": "holdout_acc", "best_val_acc": "best_holdout_acc"}
# Columns and keys added in each version: a record of an older version lacks these (and only these).
ADDED_IN = {2: ("clip_fraction", "test_top5", "schema_version"), 3: ("config_hash",)}
HOLDOUT, TEST = "holdout", "test"  # a summary's `selected_on`
STATUSES = ("completed", "diverged", "interrupted")
UNFINISHED = (None, "interrupted")


# ------------------------------------------------------------------------------------------ schema


@dataclass(frozen=True)
class EpochMetrics:
    """One row of metrics.csv: an epoch of training and the evaluation after it."""

    epoch: int
    train_loss: float  # mean over the epoch's augmented training batches
    train_acc: float
    test_loss: float  # on the test split
    test_acc: float
    lr: float  # the rate of the epoch's last optimiser step
    epoch_seconds: float  # training and evaluation
    train_images_per_s: float  # training images over training seconds, all ranks
    train_samples: int  # training images seen in the epoch, all ranks
    train_seconds: float  # training alone: no evaluation, no compilation (the first compiled step)
    images_seen: int  # training images since the run began, all ranks
    holdout_loss: float | None = None  # on the holdout carved from the training set, when the run has one
    holdout_acc: float | None = None
    clip_fraction: float | None = None  # optimiser steps whose gradient clipping bound / steps (0 unclipped)
    test_top5: float | None = None  # top-5 test accuracy, recorded for 100 classes or more (else None)
    schema_version: int = SCHEMA_VERSION


@dataclass(frozen=True)
class GradNormRow:
    """One row of gradnorms.csv: a weight layer's gradient norm at one early step, before clipping."""

    step: int
    layer: str  # module name, e.g. "layer1.0.conv2"
    layer_index: int  # position among the conv and linear weights in forward order (0: the first conv)
    kind: str  # "conv" or "linear"
    grad_norm: float  # ‖g‖
    weight_norm: float  # ‖w‖ before the step
    grad_to_weight: float  # ‖g‖ / ‖w‖, the relative update scale (LARS)
    grad_rms: float  # ‖g‖ / √n over the layer's n weights
    cosine_to_previous: float  # cosine between this step's gradient and the previous step's (NaN at step 0)
    schema_version: int = SCHEMA_VERSION


@dataclass(frozen=True)
class ClipRow:
    """One row of clipping.csv: one early optimiser step's global gradient norm and whether clipping bound."""

    step: int
    global_grad_norm: float  # ‖g‖ over every parameter, before clipping (what clip_grad_norm_ compares)
    clip_grad_norm: float | None  # the recipe's threshold (None: no clipping)
    clipped: int  # 1 when clipping scaled this step's gradient down, else 0
    schema_version: int = SCHEMA_VERSION


@dataclass(frozen=True)
class Summary:
    """summary.json: how the run ended and what it reached."""

    run_id: str
    model: str
    seed: int
    status: str  # one of STATUSES
    diverged_at_step: int | None
    epochs_completed: int
    final_train_acc: float | None
    final_test_acc: float | None
    best_test_acc: float | None  # the highest test accuracy of any epoch: selected on the test set
    best_epoch: int | None  # the epoch chosen on `selected_on`
    selected_on: str  # HOLDOUT or TEST (no holdout: the choice is test-set selection)
    best_holdout_acc: float | None  # holdout accuracy at best_epoch (None without a holdout)
    test_acc_at_best_epoch: float | None  # the test accuracy of the chosen epoch
    epochs_to_threshold: dict[str, int | None]  # threshold (as "%g") -> first epoch reaching it
    seconds_to_threshold: dict[str, float | None]  # training seconds (no evaluation, no compilation) to it
    images_to_threshold: dict[str, int | None]  # training images to it
    parameters: int
    gflops: dict  # image_size, at_image_size, at_224 (fvcore, eval mode), uncounted_ops (ops fvcore left out)
    mean_train_images_per_s: float | None
    train_seconds: float  # training alone, over every epoch
    compile_seconds: float | None  # the first compiled step, compilation included (None: not compiled)
    peak_memory_mb: float | None
    peak_memory_kind: str  # what peak_memory_mb measures: "cuda max_memory_allocated" or "cpu peak RSS"
    wall_seconds: float
    synthetic: bool
    finished_at: str
    config_hash: str | None = None  # config.json's, checked against it (None: recorded before version 3)
    schema_version: int = SCHEMA_VERSION


def epochs_to_threshold(test_acc: list[float], thresholds) -> dict[str, int | None]:
    """The first (1-based) epoch whose test accuracy reaches each threshold, or None."""
    return {
        f"{t:g}": next((epoch for epoch, acc in enumerate(test_acc, start=1) if acc >= t), None) for t in thresholds
    }


def selection(history: list[EpochMetrics], on_holdout: bool) -> dict:
    """How far a run got and the epoch it chose: the best on the holdout, else on test (the earliest of a tie)."""
    best = int(np.argmax([row.holdout_acc if on_holdout else row.test_acc for row in history])) if history else None
    last = history[-1] if history else None
    return {
        "epochs_completed": len(history),
        "final_train_acc": None if last is None else last.train_acc,
        "final_test_acc": None if last is None else last.test_acc,
        "best_test_acc": max(row.test_acc for row in history) if history else None,
        "best_epoch": None if best is None else best + 1,
        "selected_on": HOLDOUT if on_holdout else TEST,
        "best_holdout_acc": history[best].holdout_acc if on_holdout and best is not None else None,
        "test_acc_at_best_epoch": None if best is None else history[best].test_acc,
    }


def outcome(history: list[EpochMetrics], thresholds, on_holdout: bool) -> dict:
    """The summary fields the epoch history alone decides (for a run stopped early, read from metrics.csv);
    seconds and images to a threshold are AlgoPerf's time-to-result, on the study's test metric."""
    epochs = epochs_to_threshold([row.test_acc for row in history], thresholds)
    elapsed = np.cumsum([row.train_seconds for row in history])
    return {
        **selection(history, on_holdout),
        "epochs_to_threshold": epochs,
        "seconds_to_threshold": {k: None if e is None else float(elapsed[e - 1]) for k, e in epochs.items()},
        "images_to_threshold": {k: None if e is None else history[e - 1].images_seen for k, e in epochs.items()},
    }


OUTCOME_FIELDS = tuple(outcome([], (), on_holdout=False))


# ------------------------------------------------------------------------------------------ reading


def added_since(version: int) -> set[str]:
    """The columns and keys a record of schema `version` lacks: those added in a later version."""
    return {name for added, names in ADDED_IN.items() if added > version for name in names}


def current_summary(summary: dict) -> dict:
    """summary.json in this version's names (an older `selected_on` "val" is the holdout)."""
    summary = {RENAMED.get(k, k) if RENAMED.get(k) not in summary else k: v for k, v in summary.items()}
    if summary.get("selected_on") == "val":
        summary["selected_on"] = HOLDOUT
    return summary


def holdout_record(config: dict) -> dict | None:
    """config.json's record of the holdout split (key "holdout"; "validation" in older records), or None."""
    return config.get("holdout", config.get("validation"))


# The metrics.csv columns that are finite in every epoch of a run that did not diverge (the holdout's only
# where the run holds one out).
FINITE = ("train_loss", "train_acc", "test_loss", "test_acc")
FINITE_HOLDOUT = ("holdout_loss", "holdout_acc")


def non_finite_epoch(history: list[EpochMetrics], holdout: bool) -> int | None:
    """The first epoch with a non-finite (or missing) loss or accuracy, where the run diverged; None if none."""
    columns = FINITE + FINITE_HOLDOUT if holdout else FINITE
    return next((int(row.epoch) for row in history if not all(_finite(getattr(row, c)) for c in columns)), None)


def _finite(value) -> bool:
    return value is not None and np.isfinite(float(value))


class DamagedRecord(ArchbenchError):
    """A run whose record files cannot be read or do not agree: `file` names the file at fault."""

    def __init__(self, file: str, reason: str):
        super().__init__(reason)
        self.file = file


def read_record(path: Path) -> dict:
    """One of a run's JSON files as a dict; `DamagedRecord` when it is missing or unreadable."""
    if not path.exists():
        raise DamagedRecord(path.name, f"{path.name} is missing")
    try:
        value = read_json(path)
    except (OSError, ValueError, UnicodeDecodeError):
        raise DamagedRecord(path.name, f"{path.name} is not valid JSON") from None
    if not isinstance(value, dict):
        raise DamagedRecord(path.name, f"{path.name} does not hold a JSON object")
    return value


def schema_version(value) -> int | None:
    """A recorded `schema_version` as an int (absent: 1), or None when it is no version (not a whole number >= 1)."""
    if value is None:
        return 1
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return value if type(value) is int and value >= 1 else None


def version_problem(recorded: list[tuple[str, Any]]) -> tuple[str, str] | None:
    """The file at fault and why, when the `(file, schema_version)` pairs of one run's files cannot be read
    together; None when they can."""
    versions: dict[int, str] = {}
    for name, value in recorded:
        version = schema_version(value)
        if version is None:
            return name, f"{name} has schema_version {value!r}, which is no schema version"
        if version > SCHEMA_VERSION:
            return name, (
                f"{name} is of schema version {version}, written by a newer archbench (this one reads up to "
                f"{SCHEMA_VERSION}); upgrade archbench"
            )
        versions.setdefault(version, name)
    if len(versions) > 1:
        said = ", ".join(f"{name} {version}" for version, name in versions.items())
        return list(versions.values())[-1], f"the run's files differ in schema version ({said})"
    return None


def check_record(config: dict, summary: dict | None, history: list[EpochMetrics]) -> None:
    """Raise `DamagedRecord` unless one run's config.json, summary.json (current names; None: not written yet)
    and metrics.csv `history` can be read together (docs/running.md, Run records)."""
    recorded = [(CONFIG, config.get("schema_version"))]
    recorded += [(SUMMARY, summary.get("schema_version"))] if summary else []
    recorded += [(METRICS, version) for version in dict.fromkeys(row.schema_version for row in history)]
    if problem := version_problem(recorded):
        raise DamagedRecord(*problem)
    if (computed := config_hash(config)) != config.get("config_hash"):
        raise DamagedRecord(
            CONFIG,
            f"config.json does not match its recorded hash {config.get('config_hash')} (it hashes to {computed}): "
            "edited after the run",
        )
    if reason := epochs_disagreement(summary or {}, history, config):
        raise DamagedRecord(SUMMARY if summary else METRICS, reason)
    if summary and (reason := disagreement(summary, history, computed, config.get("thresholds") or ())):
        raise DamagedRecord(SUMMARY, reason)


def epochs_disagreement(summary: dict, history: list[EpochMetrics], config: dict) -> str | None:
    """Why a run's epochs in metrics.csv do not fit config.json's `recipe.epochs`, in one line; None if they do."""
    planned, done = (config.get("recipe") or {}).get("epochs"), len(history)
    if isinstance(planned, int) and done > planned:
        return f"metrics.csv holds {done} epochs, more than config.json's recipe.epochs {planned}"
    if summary.get("status") == "completed" and not _same(done, planned):
        return f"summary.json says completed after {done} epochs, config.json's recipe.epochs is {planned}"
    return None


def disagreement(summary: dict, history: list[EpochMetrics], config_hash: str | None, thresholds=()) -> str | None:
    """Why summary.json (in current names) does not sum up metrics.csv's `history` at config.json's `thresholds`
    or belong to the config whose hash is `config_hash`, in one line; None when it does. A diverged history is
    compared on its epochs alone."""
    version, recorded_hash = schema_version(summary.get("schema_version")), summary.get("config_hash")
    if recorded_hash is None and version is not None and version >= 3:
        return f"summary.json (schema version {version}) records no config_hash"
    if recorded_hash is not None and recorded_hash != config_hash:
        return f"summary.json belongs to config hash {recorded_hash}, config.json is {config_hash}"
    on_holdout = summary.get("selected_on") == HOLDOUT
    if non_finite_epoch(history, on_holdout) is not None:
        expected = {"epochs_completed": len(history)}
    else:
        expected = outcome(history, thresholds, on_holdout)
    recorded = _spread(summary)
    for key, value in _spread(expected).items():
        if not _same(recorded.get(key), value):
            return f"summary.json has {key} {recorded.get(key)}, metrics.csv gives {value}"
    return None


def _spread(fields: dict) -> dict:
    """Summary fields with each per-threshold map spread out: epochs_to_threshold[0.5], ..."""
    spread = {}
    for key, value in fields.items():
        spread.update({f"{key}[{t}]": v for t, v in value.items()} if isinstance(value, dict) else {key: value})
    return spread


def _same(recorded, derived) -> bool:
    """One value as summary.json recorded it and as metrics.csv gives it (numbers to 1e-9, NaN equal to NaN)."""
    if recorded is None or derived is None or isinstance(derived, str):
        return recorded == derived
    try:
        return bool(np.isclose(float(recorded), float(derived), rtol=1e-9, atol=0.0, equal_nan=True))
    except (TypeError, ValueError):
        return False


def columns(row_type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(row_type))


METRICS_COLUMNS = columns(EpochMetrics)
GRADNORM_COLUMNS = columns(GradNormRow)
CLIPPING_COLUMNS = columns(ClipRow)
GRADNORM_TEXT_COLUMNS = ("layer", "kind")
TIMING_COLUMNS = ("epoch_seconds", "train_images_per_s", "train_seconds")  # differ between identical runs


def read_rows(path: Path, row_type, needed: tuple[str, ...] | None = None) -> tuple[list, list]:
    """One of a run's CSVs (none: no file) as `row_type` rows in this version's names, numbers as floats, and
    the columns its older schema version lacked, read as None; `DamagedRecord` when it cannot be read or lacks
    the columns `needed` (None: every column of its schema version)."""
    if not path.exists():
        return [], []
    names = columns(row_type)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames = [RENAMED.get(name, name) for name in reader.fieldnames or ()]
            rows = [row_type(**{c: _value(path, c, row.get(c)) for c in names}) for row in reader]
    except (csv.Error, UnicodeDecodeError):
        raise DamagedRecord(path.name, f"{path.name} is not a readable CSV") from None
    absent = [c for c in names if c not in header]
    if needed is None:  # every column but those added after the file's version
        version = schema_version(rows[0].schema_version) if rows else SCHEMA_VERSION
        lacks = [c for c in absent if c not in added_since(version or 1)]
    else:
        lacks = sorted(set(needed) - set(header))
    if lacks and (rows or needed is not None):
        raise DamagedRecord(path.name, f"{path.name} lacks the column(s) {', '.join(lacks)}")
    return rows, absent


def read_metrics(path: Path, needed: tuple[str, ...] | None = ("epoch",)) -> list[EpochMetrics]:
    """metrics.csv's rows (`read_rows`)."""
    return read_rows(path, EpochMetrics, needed)[0]


def _value(path: Path, column: str, text: str | None) -> float | str | None:
    """A CSV cell: text in a text column, else a number; None when empty."""
    if text is None or text == "" or column in GRADNORM_TEXT_COLUMNS:
        return text or None
    try:
        return float(text)
    except ValueError:
        raise DamagedRecord(path.name, f"{path.name} has a non-numeric value in column '{column}'") from None


def write_record(
    run_dir: Path,
    metrics: list[EpochMetrics],
    gradnorms: list[GradNormRow],
    summary: Summary,
    clipping: list[ClipRow] = (),
) -> None:
    """metrics.csv, gradnorms.csv, clipping.csv and summary.json of one run, each replaced atomically."""
    write_csv(run_dir / METRICS, METRICS_COLUMNS, [asdict(row) for row in metrics])
    write_csv(run_dir / GRADNORMS, GRADNORM_COLUMNS, [asdict(row) for row in gradnorms])
    write_csv(run_dir / CLIPPING, CLIPPING_COLUMNS, [asdict(row) for row in clipping])
    write_json(run_dir / SUMMARY, asdict(summary))


# ------------------------------------------------------------------------------------------ files


def config_hash(config: dict) -> str:
    """A stable hash of the run's identity (`archbench.config.run_identity`)."""
    blob = json.dumps(run_identity(config), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _atomic_write(path: Path, write) -> None:
    """Write to a temporary name beside `path`, then rename: readers see the old file or the new one.
    A filesystem failure (no space left, not writable) is one line naming `path`, with nothing left behind."""
    tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
    created = False
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "xb") as f:  # a new file of our own, with open()'s mode under the umask (mkstemp's: 0600)
            created = True
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if created:
            tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise ArchbenchError(f"cannot write {path}: {e.strerror or e}") from None
        raise


def write_text(path: Path, text: str) -> None:
    _atomic_write(path, lambda f: f.write(text.encode()))


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def write_csv(path: Path, fieldnames: tuple[str, ...], rows: list[dict]) -> None:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=fieldnames, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, text.getvalue())


def save_checkpoint(path: Path, state: dict) -> None:
    import torch

    _atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: Path) -> dict | None:
    if not path.exists():
        return None
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for a damaged file
        raise ArchbenchError(
            f"cannot read the checkpoint {path} ({type(e).__name__}); "
            "delete it or rerun with --fresh to start the run over."
        ) from None


# ------------------------------------------------------------------------------------------ folders


@dataclass
class Run:
    """A run folder opened by `open_run`, locked by this process until `close()`; `status`: that of a run found
    already finished, which the command skips."""

    path: Path
    run_id: str
    status: str | None = None
    _lock_fd: int | None = None

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


def _try_lock(run_dir: Path) -> int | None:
    fd = os.open(run_dir / ".lock", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def recorded_status(run_dir: Path) -> str | None:
    try:
        return read_json(run_dir / SUMMARY).get("status")
    except (OSError, ValueError, AttributeError):
        return None


def matching_runs(model_dir: Path, matches) -> list[Path]:
    """The run folders under `model_dir` (none: no folder), newest first (run ids start with the time), whose
    config.json `matches`; an unreadable one matches nothing."""
    if not model_dir.is_dir():
        return []
    found = []
    for run_dir in sorted(model_dir.iterdir(), reverse=True):
        try:
            config = read_json(run_dir / CONFIG)
        except (OSError, ValueError):
            continue
        if isinstance(config, dict) and matches(config):
            found.append(run_dir)
    return found


def runs_with_hash(model_dir: Path, digest: str) -> list[Path]:
    """The run folders under `model_dir` recorded with the config hash `digest`, newest first."""
    return matching_runs(model_dir, lambda config: config.get("config_hash") == digest)


def finished_run(run_dirs: list[Path]) -> Path | None:
    """The first of `run_dirs` recorded as finished (completed or diverged), or None."""
    return next((run_dir for run_dir in run_dirs if recorded_status(run_dir) not in UNFINISHED), None)


def open_run(out: Path, config: dict, fresh: bool = False) -> Run:
    """The run this config belongs to: a finished one (to skip), an unfinished one (to resume), or (always with
    `fresh`) a new one, whose config.json is written before this returns."""
    model_dir = out / config["model"]
    model_dir.mkdir(parents=True, exist_ok=True)
    digest = config_hash(config)
    if not fresh:
        matching = runs_with_hash(model_dir, digest)
        if finished := finished_run(matching):
            return Run(finished, finished.name, status=recorded_status(finished))
        for run_dir in matching:
            fd = _try_lock(run_dir)
            if fd is None:  # another process is running it right now
                continue
            if recorded_status(run_dir) not in UNFINISHED:  # it finished while we looked
                os.close(fd)
                return Run(run_dir, run_dir.name, status=recorded_status(run_dir))
            for stale in run_dir.glob(".*.tmp"):  # what an interrupted `_atomic_write` left; ours now, locked
                stale.unlink(missing_ok=True)
            return Run(run_dir, run_dir.name, _lock_fd=fd)
    while True:
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
        run_id = f"{stamp}-s{config['seed']}-{digest[:6]}-{secrets.token_hex(2)}"
        with contextlib.suppress(FileExistsError):
            (model_dir / run_id).mkdir()
            break
    run_dir = model_dir / run_id
    fd = _try_lock(run_dir)
    write_json(run_dir / CONFIG, {**config, "run_id": run_id, "config_hash": digest, "schema_version": SCHEMA_VERSION})
    return Run(run_dir, run_id, _lock_fd=fd)
