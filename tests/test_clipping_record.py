"""Gradient clipping is recorded: per early step the global norm before clipping and whether clipping bound
(clipping.csv), per epoch the fraction of optimiser steps it bound (metrics.csv's clip_fraction)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

from conftest import tiny_run_request

from archbench import runs
from archbench.study import run_models


def read_rows(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return list(csv.DictReader(f))


def recorded(tiny_registry, tiny_data, out: Path, clip: float) -> tuple[list[dict], list[dict], list[dict]]:
    (summary,) = run_models(
        tiny_run_request(tiny_registry, tiny_data, out, models=("tiny_vgg",), clip_grad_norm=clip, epochs=1)
    )
    run_dir = out / summary["model"] / summary["run_id"]
    return tuple(read_rows(run_dir / name) for name in (runs.METRICS, runs.CLIPPING, runs.GRADNORMS))


def test_clip_fraction_is_one_under_a_tiny_threshold_zero_without_clipping_and_norms_are_pre_clip(
    tiny_registry, tiny_data, tmp_path
):
    tiny, tiny_steps, tiny_layers = recorded(tiny_registry, tiny_data, tmp_path / "tiny", 1e-9)
    never, never_steps, _ = recorded(tiny_registry, tiny_data, tmp_path / "none", 0)
    huge, huge_steps, _ = recorded(tiny_registry, tiny_data, tmp_path / "huge", 1e9)

    assert [float(r["clip_fraction"]) for r in tiny] == [1.0]
    assert [float(r["clip_fraction"]) for r in never] == [0.0]
    assert [float(r["clip_fraction"]) for r in huge] == [0.0]
    assert tiny_steps and all(r["clipped"] == "1" for r in tiny_steps)
    assert never_steps and all(r["clipped"] == "0" and r["clip_grad_norm"] == "" for r in never_steps)
    assert all(r["clipped"] == "0" for r in huge_steps)
    assert {r["schema_version"] for r in tiny + tiny_steps} == {str(runs.SCHEMA_VERSION)}
    # Step 0 sees the same weights and batch whatever the threshold: its norm is read before clipping.
    norms = [float(rows[0]["global_grad_norm"]) for rows in (tiny_steps, never_steps, huge_steps)]
    assert norms[0] > 1e-3 and math.isclose(norms[0], norms[1], rel_tol=1e-6) and norms[1] == norms[2]
    # The global norm covers every weight layer (and biases): at least the root sum of their squares.
    layer_norms = [float(r["grad_norm"]) for r in tiny_layers if r["step"] == "0"]
    assert norms[0] >= math.sqrt(sum(n * n for n in layer_norms)) * (1 - 1e-6)
