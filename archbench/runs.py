"""Run records on disk: one folder per run, `runs/<model>/<run_id>/`, and the one schema of their files.

A run folder holds config.json (the resolved `RunConfig` plus provenance), metrics.csv (one
`EpochMetrics` row per epoch), gradnorms.csv (one `GradNormRow` per early step and weight layer),
clipping.csv (one `ClipRow` per early step: the global gradient norm before clipping and whether
clipping bound) and summary.json (a `Summary`), all tracked by git, and checkpoint.pt (never tracked).
The dataclasses below are the schema: the training loop writes through `write_record`, the report reads
the columns they define, and the tests build their fixtures with the same writer, so a column exists in
one place. Every file carries `SCHEMA_VERSION` (a `schema_version` key in the JSON files, a
`schema_version` column, the same in every row, in the CSVs: pandas and spreadsheets read it as one more
column); the report reads older versions, filling what they lack (`ADDED_IN`) as missing. Readers (the
report, `archbench status`) hold the files to each other (`check_record`): a schema version this archbench
cannot read, a config.json that no longer hashes to its `config_hash` (edited after the run), or a summary.json
that does not sum up its metrics.csv or belongs to another config marks the run damaged, and a non-finite loss
or accuracy in metrics.csv is divergence, whatever the summary says (`non_finite_epoch`).

Names: the "holdout" is the split carved from the training set (`--holdout-per-class`) on which tuning
and model selection are done; the "test" split is the study's test set, never used for a choice except
where a run has no holdout (then `selected_on` says "test").

Every file is written to a temporary name and moved into place with `os.replace`, so a crash leaves
either the old file or the new one, never half of one.

Resuming: rerunning the same command finds the unfinished run whose config hash matches and continues
it from its checkpoint. Each process holds an exclusive lock on the run it writes, so two processes
started at once never write to the same folder: the second one starts a run of its own.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import fcntl
import hashlib
import io
import json
import os
import secrets
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from archbench.config import run_identity
from archbench.errors import ArchbenchError

CHECKPOINT = "checkpoint.pt"
CONFIG, METRICS, GRADNORMS, SUMMARY = "config.json", "metrics.csv", "gradnorms.csv", "summary.json"
CLIPPING = "clipping.csv"
# Version of the run-record schema below. 1: no version recorded, `val_*` names for the holdout, no
# clipping record. 2: `holdout_*` names, `clip_fraction` and `test_top5` per epoch, clipping.csv.
# 3: summary.json records the `config_hash` of the run it sums up.
SCHEMA_VERSION = 3
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


def choose_epoch(history: list[EpochMetrics], on_holdout: bool) -> int | None:
    """Index of the best epoch: by holdout accuracy when the run holds a split out, else by test accuracy
    (which is test-set selection, and recorded as such). Ties go to the earliest epoch."""
    if not history:
        return None
    scores = [row.holdout_acc if on_holdout else row.test_acc for row in history]
    return int(np.argmax(scores))


def time_to_threshold(history: list[EpochMetrics], thresholds) -> tuple[dict, dict]:
    """Training seconds and images until the test accuracy first reaches each threshold (AlgoPerf's
    time-to-result, on the study's test metric), or None."""
    seconds, images = {}, {}
    elapsed = np.cumsum([row.train_seconds for row in history]) if history else []
    for key, epoch in epochs_to_threshold([row.test_acc for row in history], thresholds).items():
        seconds[key] = None if epoch is None else float(elapsed[epoch - 1])
        images[key] = None if epoch is None else history[epoch - 1].images_seen
    return seconds, images


def selection(history: list[EpochMetrics], on_holdout: bool) -> dict:
    """The summary fields that say how far a run got and which epoch it chose, from its epoch history."""
    best = choose_epoch(history, on_holdout)
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
    """The summary fields that the epoch history alone decides: what the loop writes into summary.json,
    and what the report reads from metrics.csv for a run stopped before it wrote one."""
    seconds_to, images_to = time_to_threshold(history, thresholds)
    return {
        **selection(history, on_holdout),
        "epochs_to_threshold": epochs_to_threshold([row.test_acc for row in history], thresholds),
        "seconds_to_threshold": seconds_to,
        "images_to_threshold": images_to,
    }


OUTCOME_FIELDS = tuple(outcome([], (), on_holdout=False))


# ------------------------------------------------------------------------------------------ reading


def added_since(version: int) -> set[str]:
    """The columns and keys a record of schema `version` lacks: those added in a later version."""
    return {name for added, names in ADDED_IN.items() if added > version for name in names}


def current_summary(summary: dict) -> dict:
    """summary.json in this version's names: keys renamed since an older version mapped, and an older
    `selected_on` "val" (the holdout) read as "holdout"."""
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
    """The first epoch with a non-finite (or missing) loss or accuracy: the run diverged there, whatever its
    summary says; None when every value is finite."""
    columns = FINITE + FINITE_HOLDOUT if holdout else FINITE
    for row in history:
        if not all(_finite(getattr(row, c)) for c in columns):
            return int(row.epoch)
    return None


def _finite(value) -> bool:
    return value is not None and np.isfinite(float(value))


class DamagedRecord(ArchbenchError):
    """A run whose record files cannot be read or do not agree: `file` names the file at fault and the message
    says why in one line, the same in `archbench status` and the report (which leave the run out)."""

    def __init__(self, file: str, reason: str):
        super().__init__(reason)
        self.file = file


def read_record(path: Path) -> dict:
    """One of a run's JSON files (config.json, summary.json) as a dict; `DamagedRecord` when it is missing or
    unreadable."""
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
    """A recorded `schema_version` as an int (absent: 1, the version that recorded none), or None when it is no
    version (not a whole number, or below 1)."""
    if value is None:
        return 1
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return value if type(value) is int and value >= 1 else None


def version_problem(recorded: list[tuple[str, Any]]) -> tuple[str, str] | None:
    """The file at fault and why, when the `(file, schema_version)` pairs of one run's files cannot be read
    together: a value that is no version, one newer than this archbench's, or files of different versions."""
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
    and metrics.csv `history` can be read together: one known schema version, a config.json that still hashes
    to the `config_hash` it records, and a summary that sums up both (`disagreement`)."""
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
    if summary and (reason := disagreement(summary, history, computed)):
        raise DamagedRecord(SUMMARY, reason)


def epochs_disagreement(summary: dict, history: list[EpochMetrics], config: dict) -> str | None:
    """Why a run's epochs in metrics.csv do not fit config.json's `recipe.epochs` (a completed run has them all,
    no run more), in one line; None when they do."""
    planned, done = (config.get("recipe") or {}).get("epochs"), len(history)
    if isinstance(planned, int) and done > planned:
        return f"metrics.csv holds {done} epochs, more than config.json's recipe.epochs {planned}"
    if summary.get("status") == "completed" and not _same(done, planned):
        return f"summary.json says completed after {done} epochs, config.json's recipe.epochs is {planned}"
    return None


def disagreement(summary: dict, history: list[EpochMetrics], config_hash: str | None) -> str | None:
    """Why summary.json (in current names) does not sum up metrics.csv's `history` or belong to the config
    whose hash is `config_hash`, in one line; None when it does. Compared: the config hash (which a summary of
    version 3 on must record); the epochs, the final and best accuracies and the chosen epoch, on the split the
    summary says it selected on. A history with a non-finite value (a diverged run) is compared on its epochs
    alone."""
    version, recorded_hash = schema_version(summary.get("schema_version")), summary.get("config_hash")
    if recorded_hash is None and version is not None and version >= 3:
        return f"summary.json (schema version {version}) records no config_hash"
    if recorded_hash is not None and recorded_hash != config_hash:
        return f"summary.json belongs to config hash {recorded_hash}, config.json is {config_hash}"
    on_holdout = summary.get("selected_on") == HOLDOUT
    if non_finite_epoch(history, on_holdout) is not None:
        expected = {"epochs_completed": len(history)}
    else:
        expected = selection(history, on_holdout)
    for key, value in expected.items():
        if not _same(summary.get(key), value):
            return f"summary.json has {key} {summary.get(key)}, metrics.csv gives {value}"
    return None


def _same(recorded, derived) -> bool:
    """One value as summary.json recorded it and as metrics.csv gives it (numbers to 1e-9, NaN equal to NaN;
    a value that is no number where a number is due differs)."""
    if recorded is None or derived is None or isinstance(derived, str):
        return recorded == derived
    try:
        a, b = float(recorded), float(derived)
    except (TypeError, ValueError):
        return False
    return (np.isnan(a) and np.isnan(b)) or bool(np.isclose(a, b, rtol=1e-9, atol=0.0))


def columns(row_type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(row_type))


METRICS_COLUMNS = columns(EpochMetrics)
GRADNORM_COLUMNS = columns(GradNormRow)
CLIPPING_COLUMNS = columns(ClipRow)
GRADNORM_TEXT_COLUMNS = ("layer", "kind")
TIMING_COLUMNS = ("epoch_seconds", "train_images_per_s", "train_seconds")  # differ between identical runs


def read_metrics(path: Path, needed: tuple[str, ...] | None = ("epoch",)) -> list[EpochMetrics]:
    """metrics.csv's rows (none: no file), numbers as floats, in this version's names: an older version's renamed
    columns mapped, the columns it lacks None. A file without the columns `needed` (None: every column of its
    schema version, `lacking`) raises `DamagedRecord`."""
    if not path.exists():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        reader.fieldnames = [RENAMED.get(name, name) for name in reader.fieldnames or ()]
        rows = [EpochMetrics(**{c: _number(row.get(c)) for c in METRICS_COLUMNS}) for row in reader]
    version = schema_version(rows[0].schema_version) if rows else SCHEMA_VERSION
    missing = (
        lacking(reader.fieldnames, METRICS_COLUMNS, version)
        if needed is None
        else sorted(set(needed) - set(reader.fieldnames))
    )
    if missing and (rows or needed is not None):
        raise DamagedRecord(path.name, f"{path.name} lacks the column(s) {', '.join(missing)}")
    return rows


def lacking(header, columns: tuple[str, ...], version: int | None) -> list[str]:
    """The `columns` a CSV of schema `version` holds that `header` lacks (an older version lacks those added
    since; a version that is no version is checked as the first)."""
    return [c for c in columns if c not in header and c not in added_since(version or 1)]


def _number(text: str | None) -> float | None:
    return None if text is None or text == "" else float(text)


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
    """A stable hash of the run's identity (`archbench.config.run_identity`): everything that determines its
    numbers, not where or when it ran; the same for a record written before a field was added or renamed."""
    blob = json.dumps(run_identity(config), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _atomic_write(path: Path, write) -> None:
    """Write to a temporary name beside `path`, then rename: readers see the old file or the new one.
    A filesystem failure (no space left, not writable) is one line naming `path`, with nothing left behind."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it 0600; give it the mode open() would
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise ArchbenchError(f"cannot write {path}: {e.strerror or e}") from None
        raise


def _umask() -> int:
    """The process umask, read from /proc where the system has it (setting it to read it is not thread-safe)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


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
    """A run folder opened by `open_run`, locked by this process until `close()`.

    `status` is the recorded status of a run found already finished ("completed" or "diverged"):
    rerunning the same command skips it rather than training it again.
    """

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


def remove_stale_temporaries(run_dir: Path) -> list[Path]:
    """Delete the temporary files an interrupted atomic write left (`.NAME.xxxx.tmp`); call with the lock held."""
    stale = sorted(run_dir.glob(".*.tmp"))
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def recorded_status(run_dir: Path) -> str | None:
    try:
        return read_json(run_dir / SUMMARY).get("status")
    except (OSError, ValueError, AttributeError):
        return None


def new_run_id(seed: int, digest: str) -> str:
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-s{seed}-{digest[:6]}-{secrets.token_hex(2)}"


def open_run(out: Path, config: dict, fresh: bool = False) -> Run:
    """The run this config belongs to: a finished one (to skip), an unfinished one (to resume), or new.

    With `fresh`, always a new one. A new run's folder gets config.json (with `run_id` and
    `config_hash`) before this returns.
    """
    model_dir = out / config["model"]
    model_dir.mkdir(parents=True, exist_ok=True)
    digest = config_hash(config)
    if not fresh:
        matching = []
        for run_dir in sorted(model_dir.iterdir(), reverse=True):  # newest first: ids start with the time
            try:
                if read_json(run_dir / CONFIG).get("config_hash") == digest:
                    matching.append(run_dir)
            except (OSError, ValueError, AttributeError):
                continue
        for run_dir in matching:
            if recorded_status(run_dir) not in UNFINISHED:
                return Run(run_dir, run_dir.name, status=recorded_status(run_dir))
        for run_dir in matching:
            fd = _try_lock(run_dir)
            if fd is None:  # another process is running it right now
                continue
            if recorded_status(run_dir) not in UNFINISHED:  # it finished while we looked
                os.close(fd)
                return Run(run_dir, run_dir.name, status=recorded_status(run_dir))
            remove_stale_temporaries(run_dir)
            return Run(run_dir, run_dir.name, _lock_fd=fd)
    while True:
        run_id = new_run_id(config["seed"], digest)
        try:
            (model_dir / run_id).mkdir()
            break
        except FileExistsError:
            continue
    run_dir = model_dir / run_id
    fd = _try_lock(run_dir)
    write_json(run_dir / CONFIG, {**config, "run_id": run_id, "config_hash": digest, "schema_version": SCHEMA_VERSION})
    return Run(run_dir, run_id, _lock_fd=fd)
