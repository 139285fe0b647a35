"""REPORT.md from recorded runs: provenance, tables, figures and a discussion written from the numbers.

Which runs count: per model and seed, the newest completed run (by `provenance.started_at`, ties broken
by run id). A model and seed with no completed run is shown from its newest run, marked with its status.
Every table averages, per model, over the seeds whose chosen run completed, or, for a model with no
completed run, over its chosen runs. Diverged and interrupted runs are listed in their own table;
nothing is dropped silently. A run folder without summary.json counts as interrupted.

The same runs give byte-identical output: no generation time, sorted rows, fixed float formats.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

from archbench import figures, references
from archbench.errors import ArchbenchError

STATUSES = ("completed", "diverged", "interrupted")
METRICS_COLUMNS = (
    "epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr",
    "epoch_seconds", "train_images_per_s", "train_samples",
)
GRADNORM_COLUMNS = ("step", "layer", "depth", "kind", "grad_norm")
DEPTH_BINS = 5  # the by-depth table groups each model's weight layers into fifths, first to last
BENCHMARK_COMMAND = "pytest benchmarks/test_forward_latency.py --benchmark-json benchmarks/forward_latency.json"
DASH = "—"


# --------------------------------------------------------------------------------------------------
# Reading run records


def _read_json(path: Path) -> dict:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ArchbenchError(f"cannot read {path}: {e.strerror}") from None
    except ValueError as e:
        raise ArchbenchError(f"{path} is not valid JSON ({e}); rerun or delete that run") from None
    if not isinstance(obj, dict):
        raise ArchbenchError(f"{path} does not hold a JSON object; rerun or delete that run")
    return obj


def _field(obj: dict, path: Path, *keys: str):
    value = obj
    for i, key in enumerate(keys):
        if not isinstance(value, dict) or key not in value:
            raise ArchbenchError(f"{path} lacks the field '{'.'.join(keys[: i + 1])}'; rerun or delete that run")
        value = value[key]
    return value


def _no_rows(columns: tuple[str, ...], text_columns: tuple[str, ...]) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=object if c in text_columns else float) for c in columns})


def _read_csv(path: Path, columns: tuple[str, ...], text_columns: tuple[str, ...] = ()) -> pd.DataFrame:
    """A run's CSV with the agreed columns, numbers parsed; a missing, empty or header-only file: no rows."""
    if not path.exists() or path.stat().st_size == 0:
        return _no_rows(columns, text_columns)
    try:
        frame = pd.read_csv(path, dtype={c: str for c in text_columns})
    except (ValueError, pd.errors.ParserError) as e:
        raise ArchbenchError(f"{path} is not a readable CSV ({str(e).splitlines()[0]}); rerun or delete that run") from None
    if frame.empty:  # stopped before its first epoch (or step): train.py may write a bare header then
        return _no_rows(columns, text_columns)
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ArchbenchError(f"{path} lacks the column(s) {', '.join(missing)}; rerun or delete that run")
    for c in columns:
        if c not in text_columns:
            try:
                frame[c] = pd.to_numeric(frame[c]).astype(float)
            except (ValueError, TypeError):
                raise ArchbenchError(f"{path} has a non-numeric value in column '{c}'; rerun or delete that run") from None
    return frame[list(columns)]


def _utc(stamp: str, path: Path) -> str:
    try:
        when = dt.datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))
    except ValueError:
        raise ArchbenchError(f"{path} has an unreadable provenance.started_at '{stamp}'; rerun or delete that run") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return when.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _epochs_to(metrics: pd.DataFrame, threshold: float) -> int | None:
    reached = metrics.loc[metrics["test_acc"] >= threshold, "epoch"]
    return int(reached.min()) if len(reached) else None


def _summary_from_metrics(metrics: pd.DataFrame, thresholds: list[float]) -> dict:
    """What summary.json would say, for a run stopped before writing one."""
    last = metrics.iloc[-1] if len(metrics) else None
    best = metrics.loc[metrics["test_acc"].idxmax()] if metrics["test_acc"].notna().any() else None
    return {
        "status": "interrupted",
        "diverged_at_step": None,
        "epochs_completed": len(metrics),
        "final_train_acc": None if last is None else last["train_acc"],
        "final_test_acc": None if last is None else last["test_acc"],
        "best_test_acc": None if best is None else best["test_acc"],
        "best_epoch": None if best is None else int(best["epoch"]),
        "epochs_to_threshold": {t: _epochs_to(metrics, t) for t in thresholds},
    }


def _num(value) -> float:
    return float("nan") if value is None else float(value)


def _read_run(run_dir: Path) -> dict:
    config_path = run_dir / "config.json"
    if not config_path.exists():
        raise ArchbenchError(f"{config_path} is missing; delete that folder or rerun the run")
    config = _read_json(config_path)

    def cfg(*keys):
        return _field(config, config_path, *keys)

    thresholds = sorted(float(t) for t in cfg("thresholds"))
    summary_path = run_dir / "summary.json"
    if summary_path.exists():
        summary = _read_json(summary_path)
        for key in ("status", "epochs_completed", "final_train_acc", "final_test_acc", "best_test_acc",
                    "best_epoch", "epochs_to_threshold"):
            _field(summary, summary_path, key)
        if summary["status"] not in STATUSES:
            raise ArchbenchError(f"{summary_path} has an unknown status '{summary['status']}'; rerun or delete that run")
        try:
            to_threshold = {float(k): (None if v is None else int(v)) for k, v in summary["epochs_to_threshold"].items()}
        except (AttributeError, TypeError, ValueError):
            raise ArchbenchError(f"{summary_path} has an unreadable 'epochs_to_threshold'; rerun or delete that run") from None
        summary = {**summary, "epochs_to_threshold": to_threshold}
    else:
        summary = _summary_from_metrics(_read_csv(run_dir / "metrics.csv", METRICS_COLUMNS), thresholds)
    gflops = summary.get("gflops") or {}
    entry = cfg("entry")
    return {
        "model": str(cfg("model")),
        "seed": int(cfg("seed")),
        "run_id": str(cfg("run_id")),
        "path": str(run_dir),
        "status": summary["status"],
        "started_at": _utc(cfg("provenance", "started_at"), config_path),
        "finished_at": summary.get("finished_at"),
        "preset": cfg("preset"),
        "epochs_planned": int(cfg("recipe", "epochs")),
        "global_batch_size": cfg("recipe", "global_batch_size"),
        "lr": float(cfg("recipe", "lr")),
        "lr_source": cfg("recipe", "lr_source"),
        "lr_scale": entry.get("lr_scale"),
        "schedule": cfg("recipe", "schedule"),
        "clip_grad_norm": cfg("recipe").get("clip_grad_norm"),
        "image_size": int(cfg("image_size")),
        "thresholds": tuple(thresholds),
        "gradnorm_steps": cfg("gradnorm_steps"),
        "device": cfg("device"),
        "precision": cfg("precision"),
        "world_size": cfg("world_size"),
        "synthetic": bool(cfg("data", "synthetic")),
        "data_spec": cfg("data", "spec"),
        "fingerprint": cfg("data", "fingerprint"),
        "num_classes": cfg("data", "num_classes"),
        "train_size": cfg("data", "train_size"),
        "val_size": cfg("data", "val_size"),
        "builder": entry.get("builder"),
        "depth": entry.get("depth"),
        "residual": entry.get("residual"),
        "batch_norm": entry.get("batch_norm"),
        "archbench_version": cfg("provenance", "archbench_version"),
        "git_commit": cfg("provenance", "git_commit"),
        "git_dirty": cfg("provenance", "git_dirty"),
        "torch": cfg("provenance", "torch"),
        "torchvision": cfg("provenance", "torchvision"),
        "cuda": cfg("provenance", "cuda"),
        "device_name": cfg("provenance", "device_name"),
        "python": cfg("provenance", "python"),
        "diverged_at_step": summary.get("diverged_at_step"),
        "epochs_completed": int(summary["epochs_completed"] or 0),
        "final_train_acc": _num(summary["final_train_acc"]),
        "final_test_acc": _num(summary["final_test_acc"]),
        "best_test_acc": _num(summary["best_test_acc"]),
        "best_epoch": _num(summary["best_epoch"]),
        "epochs_to_threshold": summary["epochs_to_threshold"],
        "parameters": _num(summary.get("parameters")),
        "gflops_224": _num(gflops.get("at_224")),
    }


def load_runs(runs_dir: Path) -> pd.DataFrame:
    """One row per run folder `runs_dir/<model>/<run_id>/`, with `selected` marking the runs that count.

    `superseded_by` names, for a run that does not count, the run chosen for its model and seed.
    """
    runs_dir = Path(runs_dir)
    run_dirs = sorted(
        d for model_dir in (runs_dir.iterdir() if runs_dir.is_dir() else ())
        if model_dir.is_dir() and not model_dir.name.startswith(".")
        for d in model_dir.iterdir() if d.is_dir() and not d.name.startswith(".")
    )
    if not run_dirs:
        raise ArchbenchError(f"no runs found under {runs_dir}/; record some with `archbench run ...`")
    records = []
    for run_dir in run_dirs:
        try:
            records.append(_read_run(run_dir))
        except (AttributeError, TypeError, ValueError) as e:
            raise ArchbenchError(f"{run_dir} holds a malformed run record ({e}); rerun or delete that run") from None
    runs = pd.DataFrame(records)
    runs = runs.sort_values(["model", "seed", "started_at", "run_id"], ignore_index=True)
    chosen = {}
    for (model, seed), group in runs.groupby(["model", "seed"], sort=True):
        completed = group[group["status"] == "completed"]
        chosen[(model, seed)] = (completed if len(completed) else group).iloc[-1]["run_id"]
    keys = list(zip(runs["model"], runs["seed"]))
    runs["selected"] = [chosen[k] == r for k, r in zip(keys, runs["run_id"])]
    runs["superseded_by"] = [None if s else chosen[k] for k, s in zip(keys, runs["selected"])]
    return runs


def counted_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Per model, the chosen runs that completed, or all its chosen runs when none did."""
    chosen = runs[runs["selected"]]
    parts = []
    for _, group in chosen.groupby("model", sort=True):
        completed = group[group["status"] == "completed"]
        parts.append(completed if len(completed) else group)
    return pd.concat(parts, ignore_index=True)


def load_curves(runs: pd.DataFrame) -> pd.DataFrame:
    """metrics.csv of the given runs, stacked, with model, seed and run_id columns."""
    frames = [
        _read_csv(Path(r.path) / "metrics.csv", METRICS_COLUMNS).assign(model=r.model, seed=r.seed, run_id=r.run_id)
        for r in runs.itertuples()
    ]
    return pd.concat(frames, ignore_index=True)


def load_gradnorms(runs: pd.DataFrame) -> pd.DataFrame:
    """gradnorms.csv of the given runs, stacked, with model, seed and run_id columns."""
    frames = [
        _read_csv(Path(r.path) / "gradnorms.csv", GRADNORM_COLUMNS, text_columns=("layer", "kind"))
        .assign(model=r.model, seed=r.seed, run_id=r.run_id)
        for r in runs.itertuples()
    ]
    return pd.concat(frames, ignore_index=True)


def load_latency(path: Path) -> pd.DataFrame | None:
    """Median forward latency per model, batch and implementation from a pytest-benchmark JSON.

    One row per (model, batch, image_size, device, memory_format, threads) with the medians of both
    implementations in seconds (NaN where one was not measured). None when the file does not exist.
    """
    path = Path(path)
    if not path.exists():
        return None
    data = _read_json(path)
    benchmarks = data.get("benchmarks")
    if not isinstance(benchmarks, list):
        raise ArchbenchError(f"{path} is not pytest-benchmark JSON (no 'benchmarks' list); rerun `{BENCHMARK_COMMAND}`")
    rows = []
    for bench in benchmarks:
        info = bench.get("extra_info") or {}
        if not {"model", "impl", "batch"} <= info.keys():
            continue  # another benchmark saved into the same file
        try:
            median = float(bench["stats"]["median"])
        except (KeyError, TypeError, ValueError):
            raise ArchbenchError(f"{path} has a benchmark without stats.median ({bench.get('name')}); rerun `{BENCHMARK_COMMAND}`") from None
        rows.append({
            "model": str(info["model"]),
            "batch": int(info["batch"]),
            "image_size": int(info.get("image_size") or 0),
            "device": str(info.get("device", "?")),
            "memory_format": str(info.get("memory_format", "?")),
            "threads": str(info.get("threads", "?")),
            "impl": str(info["impl"]),
            "median": median,
        })
    keys = ["model", "batch", "image_size", "device", "memory_format", "threads"]
    if not rows:
        return pd.DataFrame(columns=[*keys, "archbench", "torchvision"])
    table = pd.DataFrame(rows).drop_duplicates(keys + ["impl"], keep="last")
    wide = table.pivot(index=keys, columns="impl", values="median").reset_index()
    for impl in ("archbench", "torchvision"):
        if impl not in wide.columns:
            wide[impl] = float("nan")
    return wide[[*keys, "archbench", "torchvision"]].sort_values(keys, ignore_index=True)


# --------------------------------------------------------------------------------------------------
# Numbers to text


def _md(frame: pd.DataFrame) -> str:
    return frame.to_markdown(index=False, disable_numparse=True)


def _finite(values) -> list[float]:
    return [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]


def _mean_std(values) -> tuple[float, float, int]:
    v = _finite(values)
    if not v:
        return float("nan"), float("nan"), 0
    return float(np.mean(v)), (float(np.std(v, ddof=1)) if len(v) > 1 else float("nan")), len(v)


def _stat(values, fmt: str, scale: float = 1.0) -> str:
    """'mean ± std' over seeds (sample std), the single value for one seed, — for none."""
    mean, std, n = _mean_std(values)
    if n == 0:
        return DASH
    if n == 1:
        return format(scale * mean, fmt)
    return f"{format(scale * mean, fmt)} ± {format(scale * std, fmt)}"


def _pct(values) -> str:
    return _stat(values, ".2f", 100.0)


def _epochs(values) -> str:
    v = _finite(values)
    if len(v) == 1:
        return str(int(v[0]))
    return _stat(v, ".1f")


def _counts(values) -> str:
    """Distinct whole numbers, e.g. epochs run by each seed: '30' or '12, 30'."""
    return ", ".join(str(v) for v in sorted({int(v) for v in _finite(values)})) or DASH


def _threshold_label(t: float) -> str:
    return f"{100 * t:g}%"


def _join(items) -> str:
    items = [str(i) for i in items]
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _unique(series) -> list:
    return sorted({str(v) for v in series if v is not None and not (isinstance(v, float) and math.isnan(v))})


def _seeds(group: pd.DataFrame) -> str:
    return ", ".join(str(s) for s in sorted(group["seed"]))


def _status_note(model_runs: pd.DataFrame, counted: pd.DataFrame) -> str:
    """'completed', or the status of each chosen seed that is not completed."""
    others = model_runs[model_runs["status"] != "completed"].sort_values("seed")
    if others.empty:
        return "completed"
    notes = "; ".join(f"seed {r.seed} {r.status}" for r in others.itertuples())
    return notes if (counted["status"] != "completed").all() else f"completed; {notes}"


# --------------------------------------------------------------------------------------------------
# Sections


def header_section(listed: pd.DataFrame, runs_label: str, command: str) -> str:
    lines = ["# archbench report", ""]
    synthetic = listed[listed["synthetic"]]
    if len(synthetic):
        lines += [
            f"> **WARNING: SYNTHETIC DATA.** {len(synthetic)} of the {len(listed)} runs in this report trained on "
            "synthetic images, not Tiny-ImageNet-200. No number in this report is a Tiny-ImageNet result; "
            "they show that the code runs end to end, nothing about how these architectures compare.",
            "",
        ]
    fingerprints = _unique(listed["fingerprint"])
    if len(fingerprints) > 1:
        lines += [
            f"> **Note:** the runs used {len(fingerprints)} different datasets (fingerprints "
            f"{', '.join(f[:12] for f in fingerprints)}); numbers from different datasets do not compare.",
            "",
        ]
    lines += [
        f"Regenerate with `{command}` (from this file's folder); every number below is read from the run "
        f"records under `{runs_label}/`. Per model and seed the newest completed run counts (by start time); "
        "a model and seed without one is shown from its newest run, marked with its status. "
        "Mean ± std is over seeds (sample standard deviation, shown only where there are several).",
    ]
    return "\n".join(lines)


def provenance_section(runs: pd.DataFrame) -> str:
    chosen = runs[runs["selected"]]
    data = sorted({
        f"{r.data_spec} ({'SYNTHETIC' if r.synthetic else 'Tiny-ImageNet-200'}, {r.num_classes} classes, "
        f"{r.train_size} train / {r.val_size} test images, fingerprint {str(r.fingerprint)[:12]})"
        for r in chosen.itertuples()
    })
    commits = sorted({f"{str(r.git_commit)[:12]}{' (uncommitted changes)' if r.git_dirty else ''}" for r in chosen.itertuples()})
    seeds = sorted({f"{m}: {_seeds(g)}" for m, g in chosen.groupby("model", sort=True)})
    devices = sorted({f"{r.device_name} ({r.device}, {r.precision}, {r.world_size} process(es))" for r in chosen.itertuples()})
    finished = _unique(chosen["finished_at"])
    rows = [
        ("data", "; ".join(data)),
        ("devices", "; ".join(devices)),
        ("archbench", ", ".join(_unique(chosen["archbench_version"]))),
        ("torch / torchvision", "; ".join(sorted({f"{r.torch} / {r.torchvision}" for r in chosen.itertuples()}))),
        ("CUDA", ", ".join(_unique(chosen["cuda"])) or "none (CPU)"),
        ("python", ", ".join(_unique(chosen["python"]))),
        ("git commits", ", ".join(commits)),
        ("presets", ", ".join(_unique(chosen["preset"]))),
        ("seeds", "; ".join(seeds)),
        ("runs started", f"{chosen['started_at'].min()} to {chosen['started_at'].max()}"),
        ("last run finished", finished[-1] if finished else DASH),
        ("run folders read", f"{len(runs)} ({int(chosen.shape[0])} counted; the others are listed under Run records)"),
    ]
    recipe = []
    for model, group in chosen.groupby("model", sort=True):
        recipe.append({
            "model": model,
            "preset": ", ".join(_unique(group["preset"])),
            "epochs": ", ".join(_unique(group["epochs_planned"])),
            "global batch": ", ".join(_unique(group["global_batch_size"])),
            "image size": ", ".join(_unique(group["image_size"])),
            "lr": ", ".join(sorted({f"{lr:g}" for lr in group["lr"]})),
            "lr source": ", ".join(_unique(group["lr_source"])),
            "registry lr_scale": ", ".join(f"{s:g}" for s in sorted(set(_finite(group["lr_scale"])))) or DASH,
            "schedule": ", ".join(_unique(group["schedule"])),
            "grad clip": ", ".join(f"{c:g}" for c in sorted(set(_finite(group["clip_grad_norm"])))) or DASH,
        })
    return "\n\n".join([
        "## 1. Provenance",
        _md(pd.DataFrame(rows, columns=["", "value"])),
        "Training recipe per model (\"lr source\" says whether the learning rate is the preset's, the preset's "
        "times the registry entry's `lr_scale`, or set with `--lr`; \"grad clip\" is the global gradient-norm "
        "bound, — where none):",
        _md(pd.DataFrame(recipe)),
    ])


def _latency_cell(latency: pd.DataFrame | None, model: str, batch: int) -> str:
    if latency is None:
        return "not measured"
    rows = latency[(latency["model"] == model) & (latency["batch"] == batch) & latency["archbench"].notna()]
    if rows.empty:
        return "not measured"
    return f"{1000 * rows.iloc[-1]['archbench']:.2f}"


def architectures_section(runs: pd.DataFrame, latency: pd.DataFrame | None, latency_label: str) -> str:
    chosen = runs[runs["selected"]]
    rows = []
    for model, group in chosen.groupby("model", sort=True):
        first = group.iloc[0]
        params = _finite(group["parameters"])
        gflops = _finite(group["gflops_224"])
        rows.append({
            "model": model,
            "depth": DASH if first["depth"] is None else str(int(first["depth"])),
            "residual": "yes" if first["residual"] else "no",
            "BN": "yes" if first["batch_norm"] else "no",
            "parameters": f"{int(params[0]):,}" if params else DASH,
            "GFLOPs @224": f"{gflops[0]:.4f}" if gflops else DASH,
            "latency b1 (ms)": _latency_cell(latency, model, 1),
            "latency b32 (ms)": _latency_cell(latency, model, 32),
        })
    parts = [
        "## 2. Architectures",
        _md(pd.DataFrame(rows)),
        "Depth counts the conv and linear weight layers on the main path. GFLOPs: fvcore at 224x224 in eval "
        "mode; fvcore counts one fused multiply-add as one flop (so these are GMACs; PyTorch's own "
        "`FlopCounterMode` counts 2 per multiply-add and reports about twice as much). "
        "Latency: median archbench forward pass in eval mode under `torch.inference_mode()`, at the image size "
        "and on the device of the latency table below.",
    ]
    if latency is None:
        parts.append(f"Forward latency: not measured (no `{latency_label}`; run `{BENCHMARK_COMMAND}`).")
    elif latency.empty:
        parts.append(f"Forward latency: not measured (`{latency_label}` holds no forward-latency benchmarks).")
    else:
        detail = pd.DataFrame({
            "model": latency["model"],
            "batch": latency["batch"].astype(str),
            "image size": latency["image_size"].astype(str),
            "device": latency["device"],
            "memory format": latency["memory_format"],
            "threads": latency["threads"],
            "archbench median (ms)": [_ms(v) for v in latency["archbench"]],
            "torchvision median (ms)": [_ms(v) for v in latency["torchvision"]],
            "archbench / torchvision": [
                f"{a / t:.3f}" if np.isfinite(a) and np.isfinite(t) else "no torchvision twin"
                for a, t in zip(latency["archbench"], latency["torchvision"])
            ],
        })
        parts += [
            f"Forward latency from `{latency_label}` (pytest-benchmark; both implementations measured in the "
            "same session with the same input and memory format; torchvision's twin is the identical "
            "architecture, `resnet18(zero_init_residual=True)`, `vgg11`, `vgg11_bn`, `vgg16`, `vgg16_bn`):",
            _md(detail),
        ]
    return "\n\n".join(parts)


def _ms(seconds: float) -> str:
    return f"{1000 * seconds:.2f}" if np.isfinite(seconds) else "not measured"


def accuracy_section(runs: pd.DataFrame, counted: pd.DataFrame) -> str:
    chosen = runs[runs["selected"]]
    rows = []
    for model, group in counted.groupby("model", sort=True):
        rows.append({
            "model": model,
            "n": str(len(group)),
            "status": _status_note(chosen[chosen["model"] == model], group),
            "final train acc (%)": _pct(group["final_train_acc"]),
            "final test acc (%)": _pct(group["final_test_acc"]),
            "best test acc (%)": _pct(group["best_test_acc"]),
            "best epoch": _epochs(group["best_epoch"]),
            "epochs run": _counts(group["epochs_completed"]),
        })
    ref = references.REPRODUCTION
    rows.append({
        "model": f"*reference: {ref.model}*",
        "n": DASH,
        "status": "*reference (not an archbench run)*",
        "final train acc (%)": f"{ref.train_acc:.2f}",
        "final test acc (%)": f"{ref.test_acc:.2f}",
        "best test acc (%)": DASH,
        "best epoch": DASH,
        "epochs run": DASH,
    })
    published = pd.DataFrame([
        {
            "archbench model": p.model, "as published": p.label, "dataset": p.dataset, "protocol": p.protocol,
            "metric": p.metric, "value": p.value, "source": p.source,
        }
        for p in references.PUBLISHED
    ])
    return "\n\n".join([
        "## 3. Accuracy",
        _md(pd.DataFrame(rows)),
        f"n: seeds behind each row. The reference row gives the numbers reported by {ref.source} "
        f"({ref.protocol}): they are not an archbench result.",
        "Published references under other protocols (for orientation only; not archbench results, and not "
        "the protocol above):",
        _md(published),
    ])


def _threshold_cell(group: pd.DataFrame, t: float) -> str:
    epochs = [e.get(t) for e in group["epochs_to_threshold"]]
    reached = [e for e in epochs if e is not None]
    if not reached:
        return DASH
    cell = _epochs(reached)
    return cell if len(reached) == len(epochs) else f"{cell} ({len(reached)}/{len(epochs)} seeds reached)"


def _thresholds(runs: pd.DataFrame) -> list[float]:
    return sorted({t for ts in runs["thresholds"] for t in ts})


def convergence_section(counted: pd.DataFrame) -> str:
    thresholds = _thresholds(counted)
    rows = []
    for model, group in counted.groupby("model", sort=True):
        row = {"model": model, "n": str(len(group)), "epochs run": _counts(group["epochs_completed"])}
        for t in thresholds:
            row[f"epochs to {_threshold_label(t)}"] = _threshold_cell(group, t)
        rows.append(row)
    claim = references.CONVERGENCE
    return "\n\n".join([
        "## 4. Convergence",
        _md(pd.DataFrame(rows)),
        "Epochs until the test accuracy first reaches each threshold (mean ± std over the seeds that reached "
        f"it; {DASH} where no seed did).",
        f"> Reference claim, from {claim.source}: \"{claim.quote}\". It does not say which accuracy counts "
        "as converged, so its epochs are not directly comparable to a threshold column.\n>\n"
        f"> He et al. 2016 (§4.1, plain-18 against ResNet-18 on ImageNet): \"{references.HE_2016_CONVERGENCE_QUOTE}\".",
    ])


def gradnorm_per_run(grads: pd.DataFrame) -> pd.DataFrame:
    """Per run: each layer's gradient norm averaged over the recorded steps."""
    if grads.empty:
        return pd.DataFrame(columns=["model", "seed", "run_id", "depth", "layer", "grad_norm", "steps"])
    per_layer = grads.groupby(["model", "seed", "run_id", "depth"], sort=True).agg(
        layer=("layer", "first"), grad_norm=("grad_norm", "mean"), steps=("step", "nunique")
    )
    return per_layer.reset_index()


def early_summary(per_layer: pd.DataFrame) -> pd.DataFrame:
    """Per run: first and last layer (by depth index), their mean early gradient norm and first/last."""
    rows = []
    for (model, seed, run_id), g in per_layer.groupby(["model", "seed", "run_id"], sort=True):
        g = g.sort_values("depth")
        first, last = g.iloc[0], g.iloc[-1]
        rows.append({
            "model": model, "seed": seed, "run_id": run_id, "steps": int(g["steps"].max()),
            "first_layer": first["layer"], "last_layer": last["layer"],
            "first": first["grad_norm"], "last": last["grad_norm"],
            "ratio": first["grad_norm"] / last["grad_norm"] if last["grad_norm"] != 0 else float("nan"),
        })
    return pd.DataFrame(rows, columns=["model", "seed", "run_id", "steps", "first_layer", "last_layer", "first", "last", "ratio"])


def by_depth(per_layer: pd.DataFrame) -> pd.DataFrame:
    """Per model and depth index: the layer's name and its early gradient norm averaged over steps, then seeds."""
    if per_layer.empty:
        return pd.DataFrame(columns=["model", "depth", "layer", "grad_norm"])
    grouped = per_layer.groupby(["model", "depth"], sort=True)
    return grouped.agg(layer=("layer", "first"), grad_norm=("grad_norm", "mean")).reset_index()


def early_training_section(counted: pd.DataFrame, early: pd.DataFrame, depth_means: pd.DataFrame) -> str:
    if early.empty:
        return "## 5. Early training\n\nNo gradient norms were recorded (`gradnorms.csv` empty or absent in every counted run)."
    rows = []
    for model, g in early.groupby("model", sort=True):
        rows.append({
            "model": model,
            "n": str(len(g)),
            "steps": ", ".join(_unique(g["steps"])),
            "first layer": ", ".join(_unique(g["first_layer"])),
            "last layer": ", ".join(_unique(g["last_layer"])),
            "first-layer norm": _stat(g["first"], ".3e"),
            "last-layer norm": _stat(g["last"], ".3e"),
            "first / last": _stat(g["ratio"], ".3g"),
        })
    missing = sorted(set(counted["model"]) - set(early["model"]))
    bins = []
    for model, g in depth_means.groupby("model", sort=True):
        g = g.sort_values("depth").reset_index(drop=True)
        n_layers = len(g)
        group = (np.arange(n_layers) * DEPTH_BINS) // n_layers
        row = {"model": model, "weight layers": str(n_layers)}
        for b in range(DEPTH_BINS):
            values = g.loc[group == b, "grad_norm"]
            row[f"{100 * b // DEPTH_BINS}-{100 * (b + 1) // DEPTH_BINS}% depth"] = (
                f"{values.mean():.2e}" if len(values) else DASH
            )
        bins.append(row)
    parts = [
        "## 5. Early training",
        _md(pd.DataFrame(rows)),
        "Gradient norms (L2, per weight tensor) of the first and the last weight layer in forward order, "
        "averaged over the optimiser steps recorded at the start of training (\"steps\"), then over seeds; "
        "first / last is computed per run, then averaged. Well below 1: gradients shrink on their way to the "
        "input; near 1: they arrive about as large as at the output.",
        f"By depth: each model's weight layers, in forward order, split into {DEPTH_BINS} groups of (nearly) "
        "equal count; each cell is the mean gradient norm of the layers in that group (averaged over the "
        "recorded steps and seeds).",
        _md(pd.DataFrame(bins)),
    ]
    if missing:
        parts.append(f"No gradient norms recorded for {_join(missing)}.")
    return "\n\n".join(parts)


def figures_section(curves_png: str, grads_png: str) -> str:
    return "\n\n".join([
        "## 6. Figures",
        f"![Test accuracy and train loss per epoch, mean over seeds]({curves_png})",
        f"![Early gradient norm against depth, log scale]({grads_png})",
    ])


# --------------------------------------------------------------------------------------------------
# Discussion: sentences from the numbers


def _caveats(counted: pd.DataFrame, listed: pd.DataFrame) -> list[str]:
    out = []
    if listed["synthetic"].all():
        out.append("All runs used synthetic data, so nothing below is evidence about Tiny-ImageNet; the "
                   "sentences describe these runs only.")
    elif listed["synthetic"].any():
        out.append("Some runs used synthetic data and some did not; comparisons across them are not meaningful.")
    single = sorted(m for m, g in counted.groupby("model") if len(g) == 1)
    if single:
        out.append(f"{_join(single)} {'has' if len(single) == 1 else 'have'} one seed only: differences "
                   f"involving {'it' if len(single) == 1 else 'them'} carry no error bar.")
    return out


def _gap_hedge(gap: float, a: list[float], b: list[float], unit: str, fmt: str = ".2f") -> str:
    _, std_a, n_a = _mean_std(a)
    _, std_b, n_b = _mean_std(b)
    if n_a < 2 or n_b < 2:
        return " (one seed on at least one side, so no spread to judge the gap by)"
    spread = max(std_a, std_b)
    if abs(gap) <= spread:
        return f" (within the seed-to-seed standard deviation of {spread:{fmt}}{unit}, so not resolved)"
    return f" (larger than the seed-to-seed standard deviation of {spread:{fmt}}{unit})"


def _accuracy_sentences(counted: pd.DataFrame) -> list[str]:
    completed = counted[counted["status"] == "completed"]
    means = sorted(
        ((_mean_std(g["final_test_acc"])[0], m, list(g["final_test_acc"])) for m, g in completed.groupby("model")),
        key=lambda x: (-x[0] if np.isfinite(x[0]) else math.inf, x[1]),
    )
    means = [x for x in means if np.isfinite(x[0])]
    if not means:
        return ["No run completed, so there is no final accuracy to compare."]
    ranking = ", ".join(f"{m} {100 * v:.2f}%" for v, m, _ in means)
    out = [f"Final test accuracy, highest first (mean over seeds): {ranking}."]
    if len(means) > 1:
        (v1, m1, a1), (v2, m2, a2) = means[0], means[1]
        gap = 100 * (v1 - v2)
        out.append(f"{m1} leads {m2} by {gap:.2f} points"
                   + _gap_hedge(gap, [100 * x for x in a1], [100 * x for x in a2], " points") + ".")
    ref = references.REPRODUCTION
    own = completed[completed["model"] == ref.model]
    if len(own):
        train, test = 100 * _mean_std(own["final_train_acc"])[0], 100 * _mean_std(own["final_test_acc"])[0]
        comparable = not own["synthetic"].any() and (own["preset"] == "paper").all()
        out.append(
            f"{ref.model} ends at {train:.2f}% train / {test:.2f}% test against the reference reproduction's "
            f"{ref.train_acc:.2f}% / {ref.test_acc:.2f}%"
            + ("." if comparable else
               f"; the comparison is not meaningful here ({'synthetic data' if own['synthetic'].any() else 'not the paper preset'}, "
               f"{_join(sorted({str(e) for e in own['epochs_completed']}))} epochs).")
        )
    return out


def _threshold_stats(counted: pd.DataFrame, t: float) -> list[tuple[float, str, int, int, list[int]]]:
    """(mean epoch, model, seeds reached, seeds, epochs) for each model with at least one seed at t."""
    stats = []
    for model, g in counted.groupby("model", sort=True):
        epochs = [e.get(t) for e in g["epochs_to_threshold"]]
        reached = [e for e in epochs if e is not None]
        if reached:
            stats.append((float(np.mean(reached)), model, len(reached), len(epochs), reached))
    return sorted(stats, key=lambda s: (s[0], -s[2] / s[3], s[1]))


def _epoch_text(mean: float, reached: int, total: int) -> str:
    text = f"epoch {mean:g}" if mean == int(mean) else f"epoch {mean:.1f}"
    return text + (f" in {reached}/{total} seeds" if reached < total else "")


def _convergence_sentences(counted: pd.DataFrame) -> list[str]:
    out = []
    models = sorted(counted["model"].unique())
    unreached = [_threshold_label(t) for t in _thresholds(counted) if not _threshold_stats(counted, t)]
    if unreached:
        out.append(f"No model reached {_join(unreached).replace(' and ', ' or ')} test accuracy.")
    for t in _thresholds(counted):
        label = _threshold_label(t)
        stats = _threshold_stats(counted, t)
        never = [m for m in models if m not in {s[1] for s in stats}]
        if not stats:
            continue
        first = stats[0]
        ties = [s for s in stats if s[0] == first[0]]
        if len(ties) > 1:
            text = f"{_join(s[1] for s in ties)} reached {label} test accuracy first, tied at {_epoch_text(first[0], first[2], first[3])}"
        else:
            text = f"{first[1]} reached {label} test accuracy first ({_epoch_text(first[0], first[2], first[3])})"
            if len(stats) > 1:
                second = stats[1]
                gap = second[0] - first[0]
                text += (f", {gap:.1f} epochs before {second[1]} ({_epoch_text(second[0], second[2], second[3])})"
                         + _gap_hedge(gap, first[4], second[4], " epochs", ".1f"))
        if never:
            text += f"; never reached by {_join(never)}"
        out.append(text + ".")
    out += _claim_sentence(counted)
    return out


def _claim_sentence(counted: pd.DataFrame) -> list[str]:
    """Compare ResNet (residual) with VGG at the highest threshold every ResNet seed reached."""
    claim = references.CONVERGENCE
    kinds = counted.groupby("model", sort=True).first()
    resnets = [m for m in kinds.index if kinds.loc[m, "builder"] == "resnet" and kinds.loc[m, "residual"]]
    vggs = [m for m in kinds.index if kinds.loc[m, "builder"] == "vgg"]
    if not resnets or not vggs:
        return []
    for t in reversed(_thresholds(counted)):
        stats = {s[1]: s for s in _threshold_stats(counted, t)}
        if not all(m in stats and stats[m][2] == stats[m][3] for m in resnets):
            continue
        res = ", ".join(f"{m} {stats[m][0]:.1f}" for m in resnets)
        vgg_text = ", ".join(f"{m} {stats[m][0]:.1f}" if m in stats else f"{m} never" for m in vggs)
        slower = [m for m in vggs if m not in stats or stats[m][0] > max(stats[r][0] for r in resnets)]
        if len(slower) == len(vggs):
            verdict = "the same direction as"
        elif not slower:
            verdict = "the opposite direction to"
        else:
            verdict = "only partly in the direction of"
        hedge = " On synthetic data this says nothing about Tiny-ImageNet." if counted["synthetic"].any() else ""
        return [f"Epochs to {_threshold_label(t)}: {res} against {vgg_text}; {verdict} the reference's "
                f"\"{claim.quote}\" (whose threshold is not stated).{hedge}"]
    return [f"No threshold was reached by every seed of {_join(resnets)}, so the reference's convergence claim "
            "(about 30 vs 40 epochs) cannot be checked here."]


def _stability_sentences(runs: pd.DataFrame) -> list[str]:
    bad = runs[runs["status"] != "completed"]
    if bad.empty:
        return ["Every run completed; none diverged."]
    out = []
    for status in ("diverged", "interrupted"):
        for model, g in bad[bad["status"] == status].groupby("model", sort=True):
            total = runs[(runs["model"] == model)].shape[0]
            details = []
            for r in g.sort_values(["seed", "run_id"]).itertuples():
                step = r.diverged_at_step
                where = "" if step is None or pd.isna(step) else f" at step {int(step)}"
                where += f" after {r.epochs_completed} epoch(s)"
                later = "; another run of this seed completed and is used" if not r.selected else ""
                details.append(f"seed {r.seed}{where}{later}")
            out.append(f"{model}: {len(g)} of {total} run(s) {status} ({'; '.join(details)}).")
    if bad[bad["status"] == "diverged"].empty:
        out.insert(0, "No run diverged.")
    return out


def _gradient_sentences(early: pd.DataFrame, counted: pd.DataFrame) -> list[str]:
    if early.empty:
        return []
    per_model = {m: list(g["ratio"]) for m, g in early.groupby("model", sort=True)}
    means = {m: _mean_std(v)[0] for m, v in per_model.items()}
    ordered = sorted((v, m) for m, v in means.items() if np.isfinite(v))
    out = []
    if len(ordered) > 1:
        out.append(f"First-to-last-layer gradient ratio over the first steps: lowest for {ordered[0][1]} "
                   f"({ordered[0][0]:.3g}), highest for {ordered[-1][1]} ({ordered[-1][0]:.3g}).")
    kinds = counted.groupby("model", sort=True).first()
    pairs = []
    for a in kinds.index:
        for b in kinds.index:
            if a >= b or a not in means or b not in means:
                continue
            same = lambda key: kinds.loc[a, key] == kinds.loc[b, key]  # noqa: E731
            if same("builder") and same("depth"):
                if same("batch_norm") and not same("residual"):
                    pairs.append(("residual connections", "keep", *((a, b) if kinds.loc[a, "residual"] else (b, a))))
                elif same("residual") and not same("batch_norm"):
                    pairs.append(("BN", "keeps", *((a, b) if kinds.loc[a, "batch_norm"] else (b, a))))
    for feature, verb, with_, without in sorted(pairs):
        r_with, r_without = means[with_], means[without]
        if not (np.isfinite(r_with) and np.isfinite(r_without)) or r_with <= 0 or r_without <= 0:
            continue
        # The claim is about the first layers' share of the gradient: larger with the feature supports it.
        claim = f"the claim that {feature} {verb} early gradients alive"
        text = (f"With {feature}, {with_}'s first layer gets {r_with:.3g}x its last layer's gradient norm, against "
                f"{r_without:.3g}x for {without}: ")
        if r_with > r_without:
            text += f"the first layer's share is larger with {feature}, in line with {claim}"
        else:
            text += (f"the first layer's share is smaller with {feature}, so these runs show no fading of early "
                     f"gradients without {feature}, against {claim}")
        text += _gap_hedge(r_with - r_without, per_model[with_], per_model[without], "", ".3g")
        out.append(text + ".")
    return out


def discussion_section(runs: pd.DataFrame, counted: pd.DataFrame, listed: pd.DataFrame, early: pd.DataFrame) -> str:
    sentences = (
        _caveats(counted, listed)
        + _accuracy_sentences(counted)
        + _convergence_sentences(counted)
        + _stability_sentences(runs)
        + _gradient_sentences(early, counted)
    )
    return "## 7. Discussion\n\n" + "\n".join(f"- {s}" for s in sentences)


def run_records_section(runs: pd.DataFrame) -> str:
    chosen = runs[runs["selected"]]
    used = pd.DataFrame({
        "model": chosen["model"],
        "seed": chosen["seed"].astype(str),
        "run id": chosen["run_id"],
        "status": chosen["status"],
        "epochs": chosen["epochs_completed"].astype(str),
        "data": [("synthetic " if s else "") + str(f)[:12] for s, f in zip(chosen["synthetic"], chosen["fingerprint"])],
        "device": chosen["device"],
        "started": chosen["started_at"],
    })
    parts = ["## 8. Run records", "Runs behind the numbers above:", _md(used)]
    bad = runs[runs["status"] != "completed"]
    if bad.empty:
        parts.append("Runs that did not complete: none.")
    else:
        parts += [
            "Runs that did not complete (diverged, or interrupted: stopped before finishing, or still running):",
            _md(pd.DataFrame({
                "model": bad["model"],
                "seed": bad["seed"].astype(str),
                "run id": bad["run_id"],
                "status": bad["status"],
                "epochs completed": bad["epochs_completed"].astype(str),
                "diverged at step": [DASH if v is None or pd.isna(v) else str(int(v)) for v in bad["diverged_at_step"]],
                "started": bad["started_at"],
                "in the tables": ["yes (no completed run for this seed)" if s else f"no (run {b} of this seed completed)"
                                  for s, b in zip(bad["selected"], bad["superseded_by"])],
            })),
        ]
    older = runs[(runs["status"] == "completed") & ~runs["selected"]]
    if len(older):
        parts.append("Older completed runs superseded by a newer completed run of the same model and seed: "
                     + ", ".join(f"{m}/{r}" for m, r in zip(older["model"], older["run_id"])) + ".")
    return "\n\n".join(parts)


# --------------------------------------------------------------------------------------------------


def _relative(path: Path, start: Path) -> str:
    return Path(os.path.relpath(Path(path).resolve(), start.resolve())).as_posix()


def write_report(runs_dir: Path, out: Path, benchmarks: Path) -> Path:
    """Write REPORT.md (and its two PNG figures beside it) from the run records under `runs_dir`."""
    runs_dir, out = Path(runs_dir), Path(out)
    runs = load_runs(runs_dir)
    counted = counted_runs(runs)
    listed = runs[runs["selected"] | (runs["status"] != "completed")]
    latency = load_latency(Path(benchmarks))
    per_layer = gradnorm_per_run(load_gradnorms(counted))
    early = early_summary(per_layer)
    depth_means = by_depth(per_layer)

    models = sorted(counted["model"].unique())
    curves = load_curves(counted).groupby(["model", "epoch"], sort=True)[["test_acc", "train_loss"]].mean().reset_index()
    out.parent.mkdir(parents=True, exist_ok=True)
    curves_png = out.parent / f"{out.stem}-training-curves.png"
    grads_png = out.parent / f"{out.stem}-gradnorm-depth.png"
    figures.plot_training_curves(curves, models, curves_png)
    figures.plot_gradnorm_by_depth(depth_means, models, grads_png)

    runs_label, bench_label = _relative(runs_dir, out.parent), _relative(Path(benchmarks), out.parent)
    command = " ".join(
        ["archbench report"]
        + ([f"--runs {runs_label}"] if runs_label != "runs" else [])
        + ([f"--out {out.name}"] if out.name != "REPORT.md" else [])
        + ([f"--benchmarks {bench_label}"] if bench_label != "benchmarks/forward_latency.json" else [])
    )
    sections = [
        header_section(listed, runs_label, command),
        provenance_section(runs),
        architectures_section(runs, latency, bench_label),
        accuracy_section(runs, counted),
        convergence_section(counted),
        early_training_section(counted, early, depth_means),
        figures_section(curves_png.name, grads_png.name),
        discussion_section(runs, counted, listed, early),
        run_records_section(runs),
    ]
    out.write_text("\n\n".join(sections) + "\n", encoding="utf-8", newline="\n")
    return out
