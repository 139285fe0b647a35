"""Reading `archbench bench` result files (bench-*.json, written by `archbench.bench`) for the report,
without importing torch."""

from __future__ import annotations

import json
from pathlib import Path

# Where benchmarks/gpu.sh's bench results land, relative to the parent of the bench folder (the report reads both).
GPU_SCRIPT_BENCH = Path("gpu", "bench")
MB = 1024**2
# A result replaces an older one of the same model measured with the same settings on the same device.
LATEST_KEY = ["device_name", "precision", "memory_format", "compile", "model"]


def newest(frame):
    """The newest row (by `measured_at`) per `LATEST_KEY`, sorted by device and model."""
    latest = frame.sort_values("measured_at", kind="stable").groupby(LATEST_KEY, sort=True, dropna=False).tail(1)
    return latest.sort_values(["device_name", "model", "precision", "memory_format"], ignore_index=True)


def latest_bench_results(folder: Path):
    """The newest result per `LATEST_KEY` in the bench-*.json files under `folder`, one row each (`file`: the
    file it came from); None when the folder holds no results. Files that cannot be read are skipped."""
    import pandas as pd

    records = []
    for path in sorted(Path(folder).glob("bench-*.json")):
        try:
            rows = json.loads(path.read_text())["results"]
            records += [_summary_record(row, path.name) for row in rows]
        except (OSError, ValueError, KeyError, TypeError):
            continue
    if not records:
        return None
    return newest(pd.DataFrame(records))


def _summary_record(row: dict, file: str) -> dict:
    info, memory = row["provenance"], row["memory"]
    return {
        "model": row["model"],
        "device": row["device"],
        "device_name": info["device_name"],
        "train_images_per_s": row["train"]["model_only"],
        "train_end_to_end_images_per_s": row["train"]["end_to_end"],
        "inference_images_per_s": row["inference"]["model_only"],
        "inference_end_to_end_images_per_s": row["inference"]["end_to_end"],
        "peak_memory_mb": memory["peak_bytes"] / MB,
        "peak_memory_kind": memory["peak_kind"],
        "weights_and_optimizer_mb": (memory["weights_bytes"] + memory["optimizer_state_bytes"]) / MB,
        "activation_mb": memory["activation_bytes"] / MB,
        "batch_size": row["batch_size"],
        "requested_batch_size": row["requested_batch_size"],
        "image_size": row["image_size"],
        "precision": row["precision"],
        "memory_format": row["memory_format"],
        "compile": row["compile"],
        "sgd": row["sgd"],
        "torch": info["torch"],
        "cuda": info.get("cuda"),
        "git_commit": info.get("git_commit"),
        "measured_at": row["measured_at"],
        "file": file,
    }
