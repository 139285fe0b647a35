"""The architecture section's measurements of speed: forward latency (pytest-benchmark), `archbench bench`
results, and the GPU results `benchmarks/gpu.sh` writes. Each says where it came from, or that it was
not measured."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from archbench.report.load import BENCHMARK_COMMAND, GPU_SCRIPT
from archbench.report.text import DASH, md

if TYPE_CHECKING:
    from archbench.report.study import Study

NOT_MEASURED = "not measured"
BENCH_COMMAND = "archbench bench MODEL... --out FOLDER"


def value_cell(value) -> str:
    """A measured value as a cell: — for none, yes/no, whole numbers with separators, floats to 3-4 digits."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return DASH
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    if isinstance(value, (float, np.floating)):
        return f"{value:,.1f}" if abs(value) >= 100 else f"{value:.3g}"
    return str(value)


def _rows_table(rows: list[dict], columns) -> str:
    """A table of `rows` (dicts), a column per (key, header) of `columns`, every value a `value_cell`."""
    return md(pd.DataFrame({header: [value_cell(r.get(key)) for r in rows] for key, header in columns}))


def latency_cell(latency: pd.DataFrame | None, model: str, batch: int) -> str:
    if latency is None:
        return NOT_MEASURED
    rows = latency[(latency["model"] == model) & (latency["batch"] == batch) & latency["archbench"].notna()]
    if rows.empty:
        return NOT_MEASURED
    return f"{1000 * rows.iloc[-1]['archbench']:.2f}"


def _ms(seconds: float) -> str:
    return f"{1000 * seconds:.2f}" if np.isfinite(seconds) else NOT_MEASURED


def latency_table(latency: pd.DataFrame) -> str:
    """Forward latency per model, batch and setting, both implementations and their ratio."""
    return md(
        pd.DataFrame(
            {
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
            }
        )
    )


LATENCY_ABOUT = (
    "pytest-benchmark; both implementations measured in the same session with the same input and memory "
    "format; torchvision's twin is the identical architecture, `resnet18(zero_init_residual=True)`, `vgg11`, "
    "`vgg11_bn`, `vgg16`, `vgg16_bn`"
)


def latency_part(study: Study) -> list[str]:
    latency, label = study.latency, study.inputs.latency_label
    if latency is None:
        return [f"Forward latency: not measured (no `{label}`; run `{BENCHMARK_COMMAND}`)."]
    if latency.empty:
        return [f"Forward latency: not measured (`{label}` holds no forward-latency benchmarks)."]
    return [f"Forward latency from `{label}` ({LATENCY_ABOUT}):", latency_table(latency)]


BENCH_COLUMNS = (  # (result column, table header)
    ("model", "model"),
    ("device_name", "device"),
    ("batch_size", "batch"),
    ("requested_batch_size", "batch asked"),
    ("image_size", "image size"),
    ("precision", "precision"),
    ("memory_format", "memory format"),
    ("compile", "compiled"),
    ("train_images_per_s", "train images/s (model only)"),
    ("train_end_to_end_images_per_s", "train images/s (end to end)"),
    ("inference_images_per_s", "inference images/s (model only)"),
    ("peak_memory_mb", "peak memory (MB)"),
    ("torch", "torch"),
    ("cuda", "CUDA"),
    ("git_commit", "commit"),
    ("measured_at", "measured"),
    ("file", "file"),
)


def bench_part(study: Study) -> list[str]:
    bench, label = study.bench, study.inputs.bench_label
    if bench is None:
        return [f"Throughput (`archbench bench`): not measured (no result files in `{label}/`; run `{BENCH_COMMAND}`)."]
    rows = bench.to_dict("records")
    gpu_folders = sorted({study.inputs.relative(r["source"]) for r in rows if r["source"]})
    for r in rows:
        r["git_commit"] = None if r.get("git_commit") is None else str(r["git_commit"])[:12]
        if r["source"]:  # a row from the GPU script's folder names that folder
            r["file"] = f"{study.inputs.relative(r['source'])}/{r['file']}"
    where = f"`{label}/`" + "".join(f" and `{g}/` (written by {GPU_SCRIPT})" for g in gpu_folders)
    return [
        f"Throughput from `archbench bench` (the newest result per model, device and settings in {where}; each "
        "model measured in its own process; model only: synthetic batches already on the device; end to end: "
        'the training loop\'s own input pipeline; "batch" is the batch measured, smaller than the one asked '
        "for when that ran out of memory):",
        _rows_table(rows, BENCH_COLUMNS),
    ]


LOOP_COLUMNS = (
    ("model", "model"),
    ("image_size", "image size"),
    ("batch_size", "batch"),
    ("precision", "precision"),
    ("channels_last", "channels_last"),
    ("compile", "compiled"),
    ("train_images_per_s", "images/s (median of steady epochs)"),
    ("compile_seconds", "compile (s)"),
    ("peak_memory_mb", "peak memory (MB)"),
)
MODEL_ONLY_COLUMNS = (
    ("model", "model"),
    ("train_images_per_s", "train images/s"),
    ("end_to_end_over_model_only", "end to end / model only (training)"),
    ("transform_over_forward", "batch transform / forward"),
)
GOAL_COLUMNS = (("goal", "goal"), ("value", "value"), ("target", "target"), ("met", "met"))


def gpu_part(study: Study) -> list[str]:
    gpu, label = study.gpu, study.inputs.gpu_label
    if gpu is None:
        return [f"GPU results: not yet measured (run {GPU_SCRIPT} on a CUDA machine)."]
    if gpu["cpu_check"]:
        return [
            f"GPU results: not yet measured (`{label}` is a CPU check of the script, not a GPU measurement; "
            f"run {GPU_SCRIPT} on a CUDA machine)."
        ]
    parts = [
        f"GPU results from `{label}`: measured {gpu['measured_at']} on {gpu['device']} (driver {gpu['driver']}, "
        f"torch {gpu['torch']}, CUDA {gpu['cuda']}, commit {str(gpu['git_commit'])[:12]}).",
        "The training loop, per setting:",
        _rows_table(gpu["loop"], LOOP_COLUMNS) if gpu["loop"] else "none recorded.",
        "Model only, in the same process (the loop's compiled step on batches kept on the device; batch "
        "transform / forward: seconds of the input transform of a batch over those of the model's training "
        "forward on it):",
        _rows_table(gpu["model_only"], MODEL_ONLY_COLUMNS) if gpu["model_only"] else "none recorded.",
    ]
    if gpu["goals"]:
        parts += ["Goals:", _rows_table(gpu["goals"], GOAL_COLUMNS)]
    if gpu.get("latency"):
        parts += [f"Forward latency on this GPU ({LATENCY_ABOUT}):", latency_table(pd.DataFrame(gpu["latency"]))]
    return parts
