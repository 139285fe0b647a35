"""Reading what the report is made from: run records, tuning files, latency, bench and GPU result files; which
runs count (`select_runs`, `counted_runs`). The rules for older and damaged records are in docs/report.md."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import math
from pathlib import Path
from typing import NamedTuple

import pandas as pd

from archbench import bench_results
from archbench.config import LATENCY_FILE, TUNING_FILE, Recipe, run_identity, upgrade_config
from archbench.errors import ArchbenchError
from archbench.runs import (
    ADDED_IN,
    CONFIG,
    GRADNORM_TEXT_COLUMNS,
    GRADNORMS,
    METRICS,
    OUTCOME_FIELDS,
    STATUSES,
    SUMMARY,
    TIMING_COLUMNS,
    EpochMetrics,
    GradNormRow,
    check_record,
    columns,
    current_summary,
    holdout_record,
    non_finite_epoch,
    outcome,
    read_record,
    read_rows,
)
from archbench.tuning import load_tuning

BENCHMARK_COMMAND = f"pytest benchmarks/test_forward_latency.py --benchmark-json {LATENCY_FILE.as_posix()}"


def _read_json(path: Path, command: str) -> dict:
    """A benchmark result file as a dict, or one line naming it and the `command` that writes it anew."""
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ArchbenchError(f"cannot read {path}: {e.strerror}") from None
    except ValueError as e:
        raise ArchbenchError(f"{path} is not valid JSON ({e}); rerun `{command}`") from None
    if not isinstance(obj, dict):
        raise ArchbenchError(f"{path} does not hold a JSON object; rerun `{command}`")
    return obj


def _field(obj: dict, path: Path, *keys: str):
    value = obj
    for i, key in enumerate(keys):
        if not isinstance(value, dict) or key not in value:
            raise ArchbenchError(f"{path} lacks the field '{'.'.join(keys[: i + 1])}'; rerun or delete that run")
        value = value[key]
    return value


# file name -> the columns some file of that name lacked (an older schema version), filled as missing.
_FILLED: dict[str, set[str]] = {}


def schema_note() -> str | None:
    """One line for every file kind whose older records lacked columns this version has (filled as
    missing), each with the version that added them; None when no record lacked any."""
    parts = [
        f"{name}: {len(columns)} column(s) absent from records older than schema version "
        f"{max(v for v, added in ADDED_IN.items() if columns & set(added))} ({', '.join(sorted(columns))}), "
        "read as missing"
        for name, columns in sorted(_FILLED.items())
    ]
    return "; ".join(parts) or None


def reset_schema_notes() -> None:
    _FILLED.clear()


def _rows(path: Path, row_type=EpochMetrics) -> list:
    """A run's CSV rows (`archbench.runs.read_rows`), noting the columns its older schema version lacked."""
    rows, absent = read_rows(path, row_type, needed=None)
    if rows and absent:
        _FILLED.setdefault(path.name, set()).update(absent)
    return rows


def _frame(rows: list, row_type=EpochMetrics) -> pd.DataFrame:
    """CSV rows as a frame of every column of their type, numbers as floats (NaN: missing)."""
    names = columns(row_type)
    frame = pd.DataFrame([dataclasses.astuple(row) for row in rows], columns=names)
    return frame.astype({c: float for c in names if c not in GRADNORM_TEXT_COLUMNS})


def _utc(stamp: str, path: Path) -> str:
    try:
        when = dt.datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))
    except ValueError:
        raise ArchbenchError(
            f"{path} has an unreadable provenance.started_at '{stamp}'; rerun or delete that run"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return when.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _num(value) -> float:
    return float("nan") if value is None else float(value)


def _per_threshold(summary: dict, path: Path, key: str, kind) -> dict[float, float | int | None]:
    try:
        return {float(k): (None if v is None else kind(v)) for k, v in summary[key].items()}
    except (AttributeError, TypeError, ValueError):
        raise ArchbenchError(f"{path} has an unreadable '{key}'; rerun or delete that run") from None


def architecture_key(builder, args, source: str | None = None) -> str:
    """A short hash of what builds the network: the registry entry's builder and arguments, and the hash of
    the source file that defines it where the entry records one (a `python` entry)."""
    what = {"builder": builder, "args": args}
    if source is not None:
        what["source_sha256"] = source
    return _digest(what)[:6]


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _identity(config: dict, machine: bool) -> dict:
    """The run's identity (`archbench.config.run_identity`), whatever its rate was called (`lr_source`) or
    whether it was a tuning trial."""
    keyed = run_identity(config, machine=machine)
    # A rate computed as preset x lr_scale (0.1 x 0.1 = 0.010000000000000002) and the same rate read from a
    # tuning file (0.01) are one rate: numbers are compared at 12 significant digits.
    keyed["recipe"] = {
        k: float(f"{v:.12g}") if isinstance(v, float) else v
        for k, v in keyed.get("recipe", {}).items()
        if k != "lr_source"
    }
    keyed.pop("tuning_trial", None)
    return keyed


def recipe_key(config: dict) -> str:
    """A hash of what determines a run's numbers: two runs with the same key and the same numbers are one run
    recorded twice."""
    return _digest(_identity(config, machine=True))


def setup(config: dict) -> dict:
    """What a run is apart from its seed and the machine it ran on: its architecture, data and recipe. Runs
    of one model name are averaged together only when their setups are equal."""
    return {k: v for k, v in _identity(config, machine=False).items() if k != "seed"}


def numbers_key(metrics: pd.DataFrame) -> str:
    """A hash of a run's per-epoch numbers, timings left out (they differ between identical runs)."""
    kept = metrics[[c for c in metrics.columns if c not in TIMING_COLUMNS and c != "schema_version"]]
    # at 12 significant digits, as `recipe_key` compares rates
    return _digest({c: [None if pd.isna(v) else f"{v:.12g}" for v in kept[c]] for c in kept.columns})


def _read_run(run_dir: Path) -> dict | None:
    """One run folder as a row, or None when it holds no recorded epoch; `archbench.runs.DamagedRecord` when
    a record file cannot be read or the files disagree."""
    config_path = run_dir / CONFIG
    config = upgrade_config(read_record(config_path))

    def cfg(*keys):
        return _field(config, config_path, *keys)

    thresholds = sorted(float(t) for t in cfg("thresholds"))
    on_holdout = holdout_record(config) is not None
    history = _rows(run_dir / METRICS)
    metrics = _frame(history)
    summary_path = run_dir / SUMMARY
    recorded = current_summary(read_record(summary_path)) if summary_path.exists() else None
    check_record(config, recorded, history)
    summary = _read_summary(summary_path, recorded, history, thresholds, on_holdout)
    if summary["status"] == "interrupted" and not summary["epochs_completed"]:
        return None
    diverged_at_epoch = non_finite_epoch(history, on_holdout)
    what = setup(config)
    return {
        **_config_fields(config, cfg, run_dir, thresholds, on_holdout),
        **_summary_fields(summary, metrics),
        **({"status": "diverged"} if diverged_at_epoch is not None else {}),
        "diverged_at_epoch": diverged_at_epoch,
        "recipe_key": recipe_key(config),
        "setup": what,
        "setup_key": _digest(what),
        "config_hash": config.get("config_hash"),
    }


# summary.json's per-threshold maps (threshold -> epochs, seconds or images; null: never reached), by number type
TO_THRESHOLD = {"epochs_to_threshold": int, "seconds_to_threshold": float, "images_to_threshold": int}


def _read_summary(
    summary_path: Path, summary: dict | None, history: list[EpochMetrics], thresholds: list[float], on_holdout: bool
) -> dict:
    """summary.json as recorded (already checked against the other records), its fields checked and its
    per-threshold maps typed; rebuilt from metrics.csv's `history` for a run that has none yet."""
    if summary is not None:
        for key in ("status", *OUTCOME_FIELDS):  # the fields the report reads (`archbench.runs.Summary`)
            _field(summary, summary_path, key)
        if summary["status"] not in STATUSES:
            raise ArchbenchError(
                f"{summary_path} has an unknown status '{summary['status']}'; rerun or delete that run"
            )
    else:  # what summary.json would say, by the loop's own rules
        summary = {"status": "interrupted", "diverged_at_step": None, **outcome(history, thresholds, on_holdout)}
    return summary | {key: _per_threshold(summary, summary_path, key, kind) for key, kind in TO_THRESHOLD.items()}


PROVENANCE = ("archbench_version", "git_commit", "git_dirty", "torch", "torchvision", "cuda", "device_name", "python")


def _config_fields(config: dict, cfg, run_dir: Path, thresholds: list[float], on_holdout: bool) -> dict:
    """The row's fields that config.json records: what the run was asked to be and where it ran."""
    config_path = run_dir / CONFIG
    entry = cfg("entry")
    return {
        "model": str(cfg("model")),
        "seed": int(cfg("seed")),
        "run_id": str(cfg("run_id")),
        "path": str(run_dir),
        "started_at": _utc(cfg("provenance", "started_at"), config_path),
        "tuning_trial": bool(cfg("tuning_trial")),
        "holdout": on_holdout,
        "preset": cfg("preset"),
        "epochs_planned": int(cfg("recipe", "epochs")),
        "global_batch_size": cfg("recipe", "global_batch_size"),
        "lr": float(cfg("recipe", "lr")),
        "lr_source": cfg("recipe", "lr_source"),
        "lr_scale": entry.get("lr_scale"),
        # the recipe fields the report shows (read through `upgrade_config`: an older record's optimiser is SGD)
        **{f.name: cfg("recipe").get(f.name) for f in dataclasses.fields(Recipe) if f.metadata["report"]},
        "image_size": int(cfg("image_size")),
        "thresholds": tuple(thresholds),
        **{key: cfg(key) for key in ("gradnorm_steps", "device", "precision")},
        "compile": bool(cfg("compile")),
        "compile_backend": config.get("compile_backend"),
        "world_size": cfg("world_size"),
        "synthetic": bool(cfg("data", "synthetic")),
        "dataset": str(cfg("data", "name")),
        **{key: cfg("data", key) for key in ("fingerprint", "num_classes", "train_size")},
        "test_size": cfg("data").get("test_size", cfg("data").get("val_size")),
        **{key: entry.get(key) for key in ("builder", "depth", "residual", "batch_norm")},
        "architecture": architecture_key(entry.get("builder"), entry.get("args"), entry.get("source_sha256")),
        **{key: cfg("provenance", key) for key in PROVENANCE},
    }


# summary.json's numbers that may be null (NaN in the row)
NUMBERS = tuple(
    "final_train_acc final_test_acc best_test_acc best_epoch best_holdout_acc test_acc_at_best_epoch".split()
)


def _summary_fields(summary: dict, metrics: pd.DataFrame) -> dict:
    """The row's fields that summary.json and metrics.csv record: how the run ended and what it reached."""
    gflops = summary.get("gflops") or {}
    at_best = metrics.loc[metrics["epoch"] == _num(summary["best_epoch"]), "holdout_loss"]
    return {
        "status": summary["status"],
        "finished_at": summary.get("finished_at"),
        "diverged_at_step": summary.get("diverged_at_step"),
        "epochs_completed": int(summary["epochs_completed"] or 0),
        **{key: _num(summary[key]) for key in NUMBERS},
        "selected_on": summary["selected_on"],
        **{key: summary[key] for key in TO_THRESHOLD},
        "parameters": _num(summary.get("parameters")),
        "gflops_224": _num(gflops.get("at_224")),
        **{key: _num(summary.get(key)) for key in ("peak_memory_mb", "compile_seconds", "train_seconds")},
        "peak_memory_kind": summary.get("peak_memory_kind"),
        # the fraction of the run's optimiser steps whose gradient clipping bound (every epoch has the same
        # number of steps); NaN for a record from before clipping was recorded
        "clip_fraction": float(metrics["clip_fraction"].mean()),
        "numbers_key": numbers_key(metrics),
        # a tuning trial's tie-break (`archbench.tuning.choose`): the holdout loss of its chosen epoch
        "holdout_loss_at_best_epoch": float(at_best.iloc[0]) if len(at_best) else math.nan,
    }


class RunFolders(NamedTuple):
    runs: pd.DataFrame  # one row per run folder that holds a run (see `_read_run`)
    ignored: list[str]  # folders that hold no recorded epoch, as model/run_id
    damaged: list[str]  # folders whose records cannot be read or disagree, as "model/run_id: why"


def load_runs(runs_dir: Path) -> RunFolders:
    """Every run folder `runs_dir/<model>/<run_id>/`: the runs, and the folders that hold no run."""
    runs_dir = Path(runs_dir)
    run_dirs = sorted(
        d for d in runs_dir.glob("*/*") if d.is_dir() and not any(p.startswith(".") for p in (d.name, d.parent.name))
    )
    if not run_dirs:
        raise ArchbenchError(f"no runs found under {runs_dir}/; record some with `archbench run ...`")
    records, ignored, damaged = [], [], []
    for run_dir in run_dirs:
        name = f"{run_dir.parent.name}/{run_dir.name}"
        try:
            record = _read_run(run_dir)
        except ArchbenchError as e:  # one damaged run is left out and named, never the end of the report
            damaged.append(f"{name}: {e}")
            continue
        except (AttributeError, TypeError, ValueError) as e:
            damaged.append(f"{name}: a malformed run record ({e})")
            continue
        if record is None:
            ignored.append(name)
        else:
            records.append(record)
    if not records:
        raise ArchbenchError(
            f"no runs found under {runs_dir}/: of the {len(run_dirs)} run folder(s) there, {len(ignored)} stopped "
            f"before their first epoch and {len(damaged)} are damaged; record some with "
            "`archbench run ...`"
        )
    runs = pd.DataFrame(records).sort_values(["model", "seed", "started_at", "run_id"], ignore_index=True)
    return RunFolders(runs, ignored, damaged)


def _completed_or_all(rows: pd.DataFrame) -> pd.DataFrame:
    completed = rows[rows["status"] == "completed"]
    return completed if len(completed) else rows


def select_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """`runs` with `selected` marking, per label and seed, the newest completed run (or the newest run when
    none completed), and `superseded_by` naming, for a run not selected, the one that is."""
    runs = runs.sort_values(["label", "seed", "started_at", "run_id"], ignore_index=True)
    groups = runs.groupby(["label", "seed"], sort=True)
    chosen = {key: _completed_or_all(rows).iloc[-1]["run_id"] for key, rows in groups}
    keys = list(zip(runs["label"], runs["seed"]))
    runs["selected"] = [chosen[k] == r for k, r in zip(keys, runs["run_id"])]
    runs["superseded_by"] = [None if s else chosen[k] for k, s in zip(keys, runs["selected"])]
    return runs


def counted_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Per label, the selected runs that completed, or all its selected runs when none did."""
    groups = runs[runs["selected"]].groupby("label", sort=True)
    return pd.concat([_completed_or_all(rows) for _, rows in groups], ignore_index=True)


def load_csvs(runs: pd.DataFrame, name: str = METRICS) -> pd.DataFrame:
    """One CSV file (metrics.csv, or gradnorms.csv) of every given run, stacked, with their label, model, seed
    and run_id columns."""
    row_type = {METRICS: EpochMetrics, GRADNORMS: GradNormRow}[name]
    frames = [
        _frame(_rows(Path(r.path) / name, row_type), row_type).assign(
            label=r.label, model=r.model, seed=r.seed, run_id=r.run_id
        )
        for r in runs.itertuples()
    ]
    return pd.concat(frames, ignore_index=True)


class TuningFile(NamedTuple):
    label: str  # the file as the report names it
    content: dict


def load_tuning_files(runs_dir: Path, label_of) -> list[TuningFile]:
    """Every tuning file (`tuning.json`, as `archbench tune` writes it) under `runs_dir`, by path."""
    remedy = "rerun `archbench tune` or move the file away"
    return [TuningFile(label_of(path), load_tuning(path, remedy)) for path in sorted(Path(runs_dir).rglob(TUNING_FILE))]


def load_latency(path: Path) -> pd.DataFrame | None:
    """Per model, batch and setting, the median forward latency of both implementations in seconds (NaN where
    one was not measured) from a pytest-benchmark JSON; None when the file does not exist."""
    path = Path(path)
    if not path.exists():
        return None
    data = _read_json(path, BENCHMARK_COMMAND)
    benchmarks = data.get("benchmarks")
    if not isinstance(benchmarks, list):
        raise ArchbenchError(f"{path} is not pytest-benchmark JSON (no 'benchmarks' list); rerun `{BENCHMARK_COMMAND}`")
    rows = []
    for record in benchmarks:
        info = record.get("extra_info") or {}
        if not {"model", "impl", "batch"} <= info.keys():
            continue  # another benchmark saved into the same file
        try:
            median = float(record["stats"]["median"])
        except (KeyError, TypeError, ValueError):
            raise ArchbenchError(
                f"{path} has a benchmark without stats.median ({record.get('name')}); rerun `{BENCHMARK_COMMAND}`"
            ) from None
        rows.append(
            {
                "model": str(info["model"]),
                "batch": int(info["batch"]),
                "image_size": int(info.get("image_size") or 0),
                **{key: str(info.get(key, "?")) for key in ("device", "memory_format", "threads")},
                "impl": str(info["impl"]),
                "median": median,
            }
        )
    keys = ["model", "batch", "image_size", "device", "memory_format", "threads"]
    if not rows:
        return pd.DataFrame(columns=[*keys, "archbench", "torchvision"])
    table = pd.DataFrame(rows).drop_duplicates(keys + ["impl"], keep="last")
    wide = table.pivot(index=keys, columns="impl", values="median").reset_index()
    return wide.reindex(columns=[*keys, "archbench", "torchvision"]).sort_values(keys, ignore_index=True)


GPU_SCRIPT = "bash benchmarks/gpu.sh"
GPU_KEYS = tuple("measured_at device driver torch cuda git_commit cpu_check loop model_only goals".split())


def load_gpu_results(path: Path) -> dict | None:
    """The result file `benchmarks/gpu.sh` writes, checked for its fields; None when it does not exist."""
    path = Path(path)
    if not path.exists():
        return None
    results = _read_json(path, GPU_SCRIPT)
    missing = [k for k in GPU_KEYS if k not in results]
    if missing:
        raise ArchbenchError(f"{path} lacks the field(s) {', '.join(missing)}; rerun `{GPU_SCRIPT}`")
    if not all(isinstance(results[k], list) for k in ("loop", "model_only", "goals")):
        raise ArchbenchError(f"{path}: 'loop', 'model_only' and 'goals' must be lists; rerun `{GPU_SCRIPT}`")
    return results


def load_bench_results(folder: Path) -> pd.DataFrame | None:
    """The newest `archbench bench` result per model, device and settings in `folder` and in the GPU script's
    folder beside it (`bench_results.GPU_SCRIPT_BENCH`), `source` naming the latter; None when there is none."""
    folder = Path(folder)
    frames = []
    for where in (folder.parent / bench_results.GPU_SCRIPT_BENCH, folder):  # on a tie in time, `folder`'s row wins
        results = bench_results.latest_bench_results(where)
        if results is not None and len(results) > 0:
            frames.append(results.assign(source=None if where == folder else where.as_posix()))
    if not frames:
        return None
    return bench_results.newest(pd.concat(frames, ignore_index=True))
