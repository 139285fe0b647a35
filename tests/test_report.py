"""`archbench report` on small run records written here, in the agreed run-record format."""

from __future__ import annotations

import json
import math
import os
import stat
import statistics
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from archbench import runs
from archbench.cli import app
from archbench.config import BENCH_DIR, GPU_RESULTS_FILE, LATENCY_FILE, DataIdentity, Recipe, RunConfig
from archbench.errors import ArchbenchError
from archbench.report import write_report, write_table
from archbench.report.load import BENCHMARK_COMMAND, GPU_SCRIPT
from archbench.runs import epochs_to_threshold
from archbench.tuning import FORMAT_VERSION as TUNING_FORMAT
from archbench.tuning import Trial, choose

THRESHOLDS = [0.3, 0.4]
ENTRIES = {
    "resnet18": {"builder": "resnet", "residual": True, "batch_norm": True, "depth": 18, "layers": 21},
    "resnet18_plain": {"builder": "resnet", "residual": False, "batch_norm": True, "depth": 18, "layers": 18},
    "resnet34": {"builder": "resnet", "residual": True, "batch_norm": True, "depth": 34, "layers": 37},
    "resnet34_plain": {"builder": "resnet", "residual": False, "batch_norm": True, "depth": 34, "layers": 34},
    "vgg11": {"builder": "vgg", "residual": False, "batch_norm": False, "depth": 11, "layers": 11},
    "vgg11_bn": {"builder": "vgg", "residual": False, "batch_norm": True, "depth": 11, "layers": 11},
    "vgg16": {"builder": "vgg", "residual": False, "batch_norm": False, "depth": 16, "layers": 16},
}
SECTIONS = [
    "# archbench report",
    "## 1. Summary",
    "## 2. Methods",
    "## 3. Provenance",
    "## 4. Architectures",
    "## 5. Accuracy",
    "## 6. Convergence",
    "## 7. Early training",
    "## 8. Figures",
    "## 9. Discussion",
    "## 10. Run records",
]
FIGURES = (
    "REPORT-training-curves.png",
    "REPORT-accuracy-cost.png",
    "REPORT-performance-profile.png",
    "REPORT-gradnorm-depth.png",
    "REPORT-gradient-cosine.png",
)
T975 = {1: 12.706204736174707, 2: 4.302652729749464}  # Student's t, 97.5% quantile, by degrees of freedom


def interval(values: list[float], fmt: str = ".2f", resolution: str = "") -> str:
    """The report's 'mean ± half-width (n=k)', computed here by hand; every seed equal: 'value (all n seeds
    equal, resolution r)', never a zero-width interval."""
    n = len(values)
    if n == 1:
        return f"{values[0]:{fmt}} (n=1, no interval)"
    if len(set(values)) == 1:
        return f"{values[0]:{fmt}} (all {n} seeds equal{', resolution ' + resolution if resolution else ''})"
    half = T975[n - 1] * statistics.stdev(values) / math.sqrt(n)
    return f"{statistics.mean(values):{fmt}} ± {half:{fmt}} (n={n})"


def weight_norm(depth: int) -> float:
    return 2.0 + 0.5 * depth


def grad_to_weight(model: str, seed: int, step: int, depth: int) -> float:
    """‖g‖/‖w‖: residual models keep the first layer's near the last one's; the others lose it (the decay
    differs a little by seed, so the first/last ratio has a spread to test)."""
    n = ENTRIES[model]["layers"]
    if ENTRIES[model]["residual"] and step == 0 and depth in (1, 2):
        return 0.0  # a block whose last BN starts at zero passes no gradient to its convolutions at first
    decay = (0.95 if ENTRIES[model]["residual"] else 0.7) - 0.001 * seed
    return (1.0 + 0.1 * seed + 0.05 * step) * decay ** (n - 1 - depth)


def cosine(model: str, seed: int, step: int, depth: int) -> float:
    """Step-to-step cosine: residual models keep theirs high at every depth; plain ones lose it towards the input."""
    if step == 0:
        return float("nan")
    n = ENTRIES[model]["layers"]
    keep = 0.98 if ENTRIES[model]["residual"] else 0.85
    return (0.8 - 0.02 * seed) * keep ** (n - 1 - depth)


def gradnorm_rows(model: str, seed: int, steps: int) -> list[runs.GradNormRow]:
    layers = ENTRIES[model]["layers"]
    rows = []
    for step in range(steps):
        for d in range(layers):
            ratio, w = grad_to_weight(model, seed, step, d), weight_norm(d)
            rows.append(
                runs.GradNormRow(
                    step=step,
                    layer="conv1" if d == 0 else "fc" if d == layers - 1 else f"layer{d}",
                    layer_index=d,
                    kind="linear" if d == layers - 1 else "conv",
                    grad_norm=ratio * w,
                    weight_norm=w,
                    grad_to_weight=ratio,
                    grad_rms=ratio * w / math.sqrt(64 * (d + 1)),
                    cosine_to_previous=cosine(model, seed, step, d),
                )
            )
    return rows


def write_run(
    root: Path,
    model: str,
    seed: int,
    test_acc: list[float],
    *,
    status: str | None = "completed",
    started_at: str = "2025-01-01T00:00:00Z",
    synthetic: bool = False,
    data_name: str | None = None,
    diverged_at_step: int | None = None,
    gradnorm_steps: int = 3,
    lr_source: str = "preset",
    lr: float | None = None,
    holdout_acc: list[float] | None = None,
    tuning_trial: bool = False,
    args: dict | None = None,
    parameters: int | None = None,
    compile_seconds: float | None = None,
    run_tag: str = "abc123",
    peak_memory_mb: float = 512.0,
) -> Path:
    """One run folder written by the loop's own writer; status None leaves out summary.json. With `holdout_acc`
    the run held a holdout split out and chose its best epoch on it."""
    run_id = f"{started_at.replace('-', '').replace(':', '')[:15]}-s{seed}-{run_tag}-{len(test_acc):04x}"
    run_dir = root / model / run_id
    run_dir.mkdir(parents=True)
    entry = ENTRIES[model]
    lr_scale = 0.1 if model in ("vgg11", "vgg16") else None
    config = RunConfig(
        model=model,
        entry={
            "name": model,
            "builder": entry["builder"],
            "args": args or {},
            "description": model,
            "lr_scale": lr_scale,
            "toml_sha256": "0" * 64,
            "residual": entry["residual"],
            "batch_norm": entry["batch_norm"],
            "depth": entry["depth"],
        },
        preset="smoke",
        recipe=Recipe(
            epochs=len(test_acc) if status == "completed" else 4,  # a completed run ran all its epochs
            batch_size=32,
            lr=lr if lr is not None else 0.1 * (lr_scale or 1.0),
            weight_decay=1e-4,
            warmup_epochs=0,
        ),
        global_batch_size=32,
        lr_source=lr_source,
        image_size=32,
        seed=seed,
        thresholds=tuple(THRESHOLDS),
        gradnorm_steps=gradnorm_steps,
        validation=None if holdout_acc is None else {"per_class": 10, "seed": 0, "size": 100, "fingerprint": "b" * 64},
        tuning_trial=tuning_trial,
        optimizer_kernel="foreach",
        device="cpu",
        precision="fp32",
        compile=compile_seconds is not None,
        compile_backend="inductor" if compile_seconds is not None else None,
        channels_last=False,
        deterministic=True,
        sync_bn=False,
        world_size=1,
        data=DataIdentity(
            name=data_name or ("synthetic" if synthetic else "tiny-imagenet-200"),
            fingerprint="f" * 64 if synthetic else "a" * 64,
            num_classes=10,
            train_size=1000,
            test_size=200,
            synthetic=synthetic,
        ),
    )
    provenance = {
        "archbench_version": "0.1.0",
        "git_commit": "0123456789abcdef",
        "git_dirty": False,
        "torch": "2.14.1",
        "torchvision": "0.29.1",
        "cuda": None,
        "cudnn": None,
        "device_name": "x86_64 (2 threads)",
        "python": "3.11.2",
        "platform": "Linux",
        "started_at": started_at,
    }
    record = {**config.to_json(), "provenance": provenance, "run_id": run_id, "schema_version": runs.SCHEMA_VERSION}
    record["config_hash"] = runs.config_hash(record)
    runs.write_json(run_dir / runs.CONFIG, record)
    train_acc = [min(1.0, a + 0.1) for a in test_acc]
    vals = holdout_acc if holdout_acc is not None else [None] * len(test_acc)
    metrics = [
        runs.EpochMetrics(
            epoch=e,
            train_loss=2.5 / e,
            train_acc=tr,
            test_loss=2.6 / e,
            test_acc=te,
            lr=0.1,
            epoch_seconds=1.5,
            train_images_per_s=600.0,
            train_samples=1000,
            train_seconds=1.25,
            images_seen=1000 * e,
            holdout_loss=None if va is None else 2.0 - va,
            holdout_acc=va,
        )
        for e, (tr, te, va) in enumerate(zip(train_acc, test_acc, vals), start=1)
    ]
    chooser = holdout_acc if holdout_acc is not None else test_acc
    best = chooser.index(max(chooser)) if test_acc else None
    reached = epochs_to_threshold(test_acc, THRESHOLDS)
    summary = runs.Summary(
        run_id=run_id,
        model=model,
        seed=seed,
        status=status or "interrupted",
        diverged_at_step=diverged_at_step,
        epochs_completed=len(test_acc),
        final_train_acc=train_acc[-1] if test_acc else None,
        final_test_acc=test_acc[-1] if test_acc else None,
        best_test_acc=max(test_acc) if test_acc else None,
        best_epoch=None if best is None else best + 1,
        selected_on="holdout" if holdout_acc is not None else "test",
        best_holdout_acc=None if holdout_acc is None or best is None else holdout_acc[best],
        test_acc_at_best_epoch=None if best is None else test_acc[best],
        epochs_to_threshold=reached,
        seconds_to_threshold={k: None if v is None else 1.25 * v for k, v in reached.items()},
        images_to_threshold={k: None if v is None else 1000 * v for k, v in reached.items()},
        parameters=parameters or (11_279_112 if model.startswith("resnet") else 129_585_736),
        gflops={"image_size": 32, "at_image_size": 0.04, "at_224": 1.8187 if model.startswith("resnet") else 7.6058},
        mean_train_images_per_s=600.0,
        train_seconds=1.25 * len(test_acc),
        compile_seconds=compile_seconds,
        peak_memory_mb=peak_memory_mb,
        peak_memory_kind="cpu peak RSS of the process",
        wall_seconds=6.0,
        synthetic=synthetic,
        finished_at=started_at.replace("00:00Z", "09:00Z"),
        config_hash=record["config_hash"],
    )
    runs.write_record(run_dir, metrics, gradnorm_rows(model, seed, gradnorm_steps if test_acc else 0), summary)
    if status is None:  # killed before its first record was final
        (run_dir / runs.SUMMARY).unlink()
    return run_dir


# Final test accuracies per (model, seed) of the completed runs below.
CURVES = {
    ("resnet18", 0): [0.20, 0.35, 0.42, 0.46],
    ("resnet18", 1): [0.25, 0.31, 0.38, 0.40],
    ("resnet18_plain", 0): [0.10, 0.22, 0.33, 0.36],
    ("resnet18_plain", 1): [0.12, 0.28, 0.31, 0.35],
    ("vgg11", 0): [0.05, 0.12, 0.26, 0.31],
}


def peak_memory(seed: int) -> float:
    return 500.0 + 30.0 * seed


def write_study(root: Path, synthetic_run: bool = False, curves: dict | None = None) -> Path:
    """Three models, two seeds; vgg11 seed 1 diverged; an interrupted rerun of resnet18 seed 0."""
    for (model, seed), acc in (curves or CURVES).items():
        write_run(
            root,
            model,
            seed,
            acc,
            synthetic=synthetic_run and model == "vgg11",
            lr_source="preset x registry lr_scale" if model == "vgg11" else "preset",
            peak_memory_mb=peak_memory(seed),
        )
    write_run(root, "vgg11", 1, [0.02], status="diverged", diverged_at_step=7, lr_source="preset x registry lr_scale")
    write_run(root, "resnet18", 0, [0.21], status=None, started_at="2025-01-02T00:00:00Z")  # killed, no summary
    # an older completed run of the same seed, superseded by the newer one above
    write_run(root, "resnet18_plain", 0, [0.4, 0.5, 0.6, 0.7], started_at="2024-12-31T00:00:00Z")
    return root


def generate(
    tmp_path: Path,
    runs: Path,
    benchmarks: Path | None = None,
    name: str = "REPORT.md",
    *,
    bench_results: Path | None = None,
    gpu_results: Path | None = None,
) -> str:
    """The report of `runs`, written into `tmp_path`; result files default to paths that do not exist."""
    out = write_report(
        runs_dir=runs,
        out=tmp_path / name,
        benchmarks=benchmarks or tmp_path / "absent.json",
        bench_results=bench_results or tmp_path / "no-bench-results",
        gpu_results=gpu_results or tmp_path / "no-gpu-results.json",
    )
    return unwrap(out.read_text(encoding="utf-8"))


def unwrap(text: str) -> str:
    """The report with its hard-wrapped prose joined back into one line per paragraph, bullet or quote."""
    out: list[str] = []
    for line in text.split("\n"):
        prev = out[-1] if out else ""
        prose = prev and not prev.startswith(("|", "#", "![")) and line and not line.startswith(("|", "#", "![", "- "))
        if prose and prev.startswith("> ") and line.startswith("> "):
            out[-1] += " " + line[2:]
        elif prose and prev.startswith(("- ", "  ")) and line.startswith("  "):
            out[-1] += " " + line.strip()
        elif prose and not prev.startswith(("> ", "- ")) and not line.startswith((">", "  ")):
            out[-1] += " " + line
        else:
            out.append(line)
    return "\n".join(out)


def section(text: str, heading: str) -> str:
    start = text.index(heading)
    end = text.find("\n## ", start + len(heading))
    return text[start:] if end < 0 else text[start:end]


def table_rows(text: str) -> list[dict[str, str]]:
    """The first markdown table in `text`, as dicts keyed by header."""
    lines = text.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("|"))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = []
    for ln in lines[start + 2 :]:
        if not ln.startswith("|"):
            break
        rows.append(dict(zip(header, (c.strip() for c in ln.strip("|").split("|")))))
    return rows


def provenance_items(text: str) -> dict[str, str]:
    """The provenance list ("- name: value" lines) of the Provenance section, wrapped lines joined."""
    items, last = {}, None
    for line in text.splitlines():
        if line.startswith("- ") and ": " in line:
            last, value = line[2:].split(": ", 1)
            items[last] = value
        elif line.startswith("  ") and last is not None:
            items[last] += " " + line.strip()
        elif not line.strip() and items:
            break
    return items


def row_for(text: str, model: str) -> dict[str, str]:
    return next(r for r in table_rows(text) if r["model"] == model)


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> tuple[Path, str]:
    tmp = tmp_path_factory.mktemp("study")
    runs = write_study(tmp / "runs")
    return tmp, generate(tmp, runs)


def test_every_section_present_with_figures(study):
    tmp, text = study
    positions = [text.index(s) for s in SECTIONS]
    assert positions == sorted(positions)
    for png in FIGURES:
        assert f"]({png})" in text
        assert (tmp / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp / "REPORT-lr-sensitivity.png").exists()  # no tuning trials, no sensitivity figure
    assert "fvcore counts one fused multiply-add as one flop" in text
    assert "*reference: resnet18*" in text and "85.46" in text and "54.72" in text
    assert "Depth: plain against residual" not in text and "Learning-rate sensitivity" not in text


def test_means_over_seeds_come_with_t_intervals(study):
    _, text = study
    assert "95% confidence interval" in section(text, "## 2. Methods")
    acc = section(text, "## 5. Accuracy")
    finals = [CURVES[("resnet18", s)][-1] * 100 for s in (0, 1)]
    row = row_for(acc, "resnet18")
    assert row["final test acc (%)"] == interval(finals)
    assert row["n"] == "2"
    trains = [min(1.0, CURVES[("resnet18", s)][-1] + 0.1) * 100 for s in (0, 1)]
    assert row["final train acc (%)"] == interval(trains)
    # one completed seed: the value alone, and the diverged seed is named
    vgg = row_for(acc, "vgg11")
    assert vgg["final test acc (%)"] == f"{100 * CURVES[('vgg11', 0)][-1]:.2f} (n=1, no interval)"
    assert vgg["n"] == "1"
    assert "seed 1 diverged" in vgg["status"]

    conv = row_for(section(text, "## 6. Convergence"), "resnet18")
    to_30 = [2, 2]  # both resnet18 seeds pass 30% at epoch 2
    to_40 = [3, 4]
    assert conv["epochs to 30%"] == interval(to_30, ".1f", "1 epoch")
    assert conv["epochs to 40%"] == interval(to_40, ".1f")
    plain = row_for(section(text, "## 6. Convergence"), "resnet18_plain")
    assert plain["epochs to 40%"] == "∞ (0/2)"  # never reached: infinite time, never a dropped seed
    vgg_conv = row_for(section(text, "## 6. Convergence"), "vgg11")
    assert vgg_conv["epochs to 30%"] == "∞ (1/2)"  # seed 1 diverged

    architectures = section(text, "## 4. Architectures")
    assert row_for(architectures, "resnet18")["peak memory (MB)"] == interval([500.0, 530.0], ",.0f")
    assert row_for(architectures, "vgg11")["peak memory (MB)"] == "500 (n=1, no interval)"


def test_time_to_result_at_the_main_threshold(study):
    _, text = study
    convergence = section(text, "## 6. Convergence")
    rows = {(r["model"], r["threshold"]): r for r in table_rows(convergence[convergence.index("Time to result") :])}
    # 40% is reached by resnet18 alone; 30% by resnet18 and resnet18_plain in both seeds: the main threshold is
    # the highest that at least half of the groups reach in most of their seeds
    assert {t for _, t in rows} == {"30%"}
    at_30 = rows[("resnet18_plain", "30%")]  # seeds 0 and 1 reach 30% at epochs 3 and 3, 1.25 training seconds each
    assert at_30["seeds reached"] == "2/2"
    assert at_30["training seconds"] == interval([3.75, 3.75], ".1f")
    assert at_30["images"] == interval([3000, 3000], ",.0f")
    assert at_30["device"] == "x86_64 (2 threads) x1"
    resnet = rows[("resnet18", "30%")]  # epochs 2 and 2
    assert resnet["device-hours"] == interval([2.5 / 3600, 2.5 / 3600], ".3g")
    vgg = rows[("vgg11", "30%")]  # seed 0 at epoch 4; seed 1 diverged: never, so infinite time
    assert vgg["seeds reached"] == "1/2" and vgg["epochs"] == vgg["training seconds"] == vgg["images"] == "∞ (1/2)"
    assert "GPU-hours on GPU runs" in convergence


def test_early_gradients_are_read_scale_free(study):
    _, text = study
    early = section(text, "## 7. Early training")
    n = ENTRIES["vgg11"]["layers"]
    # vgg11 counts its completed seed 0 only; step 0 apart, then the mean over steps 1-2
    row = row_for(early, "vgg11")
    at0 = grad_to_weight("vgg11", 0, 0, 0), grad_to_weight("vgg11", 0, 0, n - 1)
    later = [statistics.mean(grad_to_weight("vgg11", 0, s, d) for s in (1, 2)) for d in (0, n - 1)]
    assert row["first, step 0"] == f"{at0[0]:.3g} (n=1, no interval)"
    assert row["first / last, step 0"] == f"{at0[0] / at0[1]:.3g} (n=1, no interval)"
    assert row["first, steps 1-2"] == f"{later[0]:.3g} (n=1, no interval)"
    assert row["first / last, steps 1-2"] == f"{later[0] / later[1]:.3g} (n=1, no interval)"
    assert "steps" not in row  # the window is the one named in the headers, whatever each run recorded
    assert row["first layer"] == "conv1" and row["last layer"] == "fc"
    assert "5 groups" in early and "‖g‖/‖w‖" in early
    assert "Layers with no gradient at all at step 0: resnet18 (2)" in early
    # the raw norm is still shown, for reference
    other = table_rows(early[early.index("Other size measures") :])
    raw_first = statistics.mean(grad_to_weight("vgg11", 0, s, 0) * weight_norm(0) for s in (1, 2))
    assert next(r for r in other if r["model"] == "vgg11")["‖g‖ first"] == f"{raw_first:.3g} (n=1, no interval)"


def _bin_interval(values: list[float], fmt: str) -> str:
    """A by-depth cell: the interval without its n, which the row states once."""
    return interval(values, fmt).removesuffix(f" (n={len(values)})")


def test_gradient_size_by_depth_has_an_interval_over_seeds(study):
    _, text = study
    early = section(text, "## 7. Early training")
    rows = table_rows(early[early.index("‖g‖/‖w‖ by depth") :])
    plain = {r["measured at"]: r for r in rows if r["model"] == "resnet18_plain"}
    # 18 layers in five groups: layers 0-3 are the first fifth, 15-17 the last
    first, last = range(4), range(15, 18)
    at0 = [statistics.mean(grad_to_weight("resnet18_plain", s, 0, d) for d in first) for s in (0, 1)]
    later = [
        statistics.mean(statistics.mean(grad_to_weight("resnet18_plain", s, t, d) for t in (1, 2)) for d in last)
        for s in (0, 1)
    ]
    assert plain["step 0"]["n"] == "2" and plain["step 0"]["weight layers"] == "18"
    assert plain["step 0"]["0-20% depth"] == _bin_interval(at0, ".2e")
    assert plain["steps 1-2"]["80-100% depth"] == _bin_interval(later, ".2e")
    vgg = next(r for r in rows if r["model"] == "vgg11" and r["measured at"] == "step 0")
    vgg_first = statistics.mean(grad_to_weight("vgg11", 0, 0, d) for d in range(3))  # 11 layers: 0-2 come first
    assert vgg["n"] == "1" and vgg["0-20% depth"] == f"{vgg_first:.2e}"  # one seed: the value alone


def test_step_to_step_cosine_by_depth(study):
    _, text = study
    early = section(text, "## 7. Early training")
    cos = table_rows(early[early.index("Gradient noise") :])
    plain = next(r for r in cos if r["model"] == "resnet18_plain")
    first = [cosine("resnet18_plain", s, 1, 0) for s in (0, 1)]  # the same at steps 1 and 2
    assert plain["first-layer cosine"] == interval(first, ".3f")
    fifths = table_rows(early[early.index("Cosine by depth") :])
    resnet = next(r for r in fifths if r["model"] == "resnet18")
    # 21 layers in five groups: layers 0-4 are the first fifth, 17-20 the last
    by_seed = {
        b: [statistics.mean(cosine("resnet18", s, 1, d) for d in b) for s in (0, 1)] for b in (range(5), range(17, 21))
    }
    assert resnet["0-20% depth"] == _bin_interval(by_seed[range(5)], ".3f")
    assert resnet["80-100% depth"] == _bin_interval(by_seed[range(17, 21)], ".3f")
    assert statistics.mean(by_seed[range(5)]) < statistics.mean(by_seed[range(17, 21)])


def test_diverged_and_interrupted_runs_are_listed(study):
    _, text = study
    records = section(text, "## 10. Run records")
    not_completed = records[records.index("Runs that did not complete") :]
    rows = table_rows(not_completed)
    statuses = sorted((r["model"], r["status"]) for r in rows)
    assert statuses == [("resnet18", "interrupted"), ("vgg11", "diverged")]
    diverged = next(r for r in rows if r["status"] == "diverged")
    assert diverged["diverged at step"] == "7"
    assert diverged["in the tables"].startswith("yes")
    interrupted = next(r for r in rows if r["status"] == "interrupted")
    assert interrupted["in the tables"].startswith("no")
    assert "superseded" in records and "resnet18_plain/20241231T000000" in records
    assert "counted as never reaching any threshold: vgg11 seed 1 (step 7)" in section(text, "## 9. Discussion")


def test_a_model_without_a_completed_run_shows_with_its_status(tmp_path):
    runs = tmp_path / "runs"
    write_run(runs, "vgg11", 0, [], status="diverged", diverged_at_step=3)
    text = generate(tmp_path, runs)
    row = row_for(section(text, "## 5. Accuracy"), "vgg11")
    assert row["status"] == "seed 0 diverged"
    assert row["final test acc (%)"] == "—"
    assert row_for(section(text, "## 6. Convergence"), "vgg11")["epochs to 30%"] == "∞ (0/1)"
    assert row_for(section(text, "## 1. Summary"), "vgg11")["completed"] == "0/1"
    discussion = section(text, "## 9. Discussion")
    assert "counted as never reaching any threshold: vgg11 seed 0 (step 3)" in discussion


def test_synthetic_warning_exactly_when_a_run_used_synthetic_data(tmp_path):
    real = generate(tmp_path / "a", write_study(tmp_path / "a" / "runs"))
    assert "SYNTHETIC" not in real
    mixed = generate(tmp_path / "b", write_study(tmp_path / "b" / "runs", synthetic_run=True))
    top = mixed.splitlines()[:3]
    assert top[0] == "# archbench report"
    assert top[2].startswith("> **WARNING: SYNTHETIC DATA.**")
    assert "No number in this report is a result on real images" in top[2]


def test_same_runs_give_identical_bytes(tmp_path):
    runs = write_study(tmp_path / "runs")
    first = generate(tmp_path / "one", runs).encode()
    files = [*FIGURES, "REPORT-claims.csv", "REPORT-results.csv"]
    pngs = [(tmp_path / "one" / n).read_bytes() for n in files]
    second = generate(tmp_path / "one", runs).encode()
    assert first == second
    assert pngs == [(tmp_path / "one" / n).read_bytes() for n in files]
    # another folder beside it: the same relative paths, so the same bytes
    assert generate(tmp_path / "two", runs).encode() == first


def test_discussion_is_one_sentence_per_claims_row(tmp_path):
    text = generate(tmp_path, write_study(tmp_path / "runs"))
    discussion = section(text, "## 9. Discussion")
    claims = pd.read_csv(tmp_path / "REPORT-claims.csv", keep_default_na=False)
    assert len(claims) and set(claims["family"]) >= {"accuracy", "time-to-threshold", "gradient-step0"}
    bullets = [ln for ln in discussion.splitlines() if ln.startswith("- ") and " [" in ln and "]: " in ln]
    assert len(bullets) == len(claims)  # every claim has its sentence, and no sentence lacks its claim
    for row, bullet in zip(claims.itertuples(), bullets):
        assert bullet.startswith(f"- {row.claim} [{row.arm}]: ")
        assert f"→ {row.verdict}" in bullet
    for family, rows in claims.groupby("family"):
        assert f"{len(rows)} rows of REPORT-claims.csv (family `{family}`)" in discussion
    # the fixture's plain nets lose ‖g‖/‖w‖ by 0.7 per layer towards the input (a factor 0.7^17 over 18
    # layers: vanishing); the residual ones by 0.95 (0.95^20 = 0.36: within a factor of 10, balanced)
    assert "resnet18_plain: log10 ratio below 0, gradients vanishing by its 95% interval (step 0)" in discussion
    assert "resnet18: log10 ratio below 0, gradients balanced by its 95% interval (step 0)" in discussion
    assert "one seed only" in discussion and "vgg11" in discussion
    assert "changes" not in discussion and "seeds per model would" not in text


NO_TUNED_RUNS = "Registry default rates against tuned rates: no runs with tuned rates are recorded yet"


def test_discussion_says_when_tuned_rates_are_chosen_but_not_run(study, tmp_path):
    assert NO_TUNED_RUNS not in study[1]  # no tuning file
    runs = write_study(tmp_path / "runs")
    trials = [
        Trial(model=m, lr=lr, seed=0, run_id=f"t-{m}-{lr}", status="completed", val_acc=acc, val_loss=1.0, test_acc=acc)
        for m, grid in {"resnet18": {0.1: 0.3, 1.0: 0.4}, "vgg11": {0.01: 0.2, 0.1: 0.25}}.items()
        for lr, acc in grid.items()
    ]
    # a tuning file with the fields every reader checks: its format, study, each model's choice and the trials
    models = {m: choose([t for t in trials if t.model == m]) for m in ("resnet18", "vgg11")}
    study_fields = {"data": {"fingerprint": "f"}, "validation": {"per_class": 5}, "epochs": 1, "global_batch_size": 32}
    content = {"format_version": TUNING_FORMAT, **study_fields, "models": models, "trials": [vars(t) for t in trials]}
    (runs / "tuning.json").write_text(json.dumps(content), encoding="utf-8")
    discussion = section(generate(tmp_path, runs), ". Discussion")
    line = next(ln for ln in discussion.splitlines() if NO_TUNED_RUNS in ln)
    assert "the tuning file(s) `runs/tuning.json` chose" in line
    assert "`archbench run resnet18 vgg11 --lr tuned --preset smoke --seed 0 --seed 1`" in line

    write_run(runs, "resnet18", 0, [0.3, 0.5], lr_source="tuned (tuning.json)", lr=1.0, run_tag="tuned")
    assert NO_TUNED_RUNS not in section(generate(tmp_path, runs), ". Discussion")


@pytest.mark.parametrize(
    ("name", "text", "command"),
    [
        ("forward_latency.json", "{not json", BENCHMARK_COMMAND),
        ("gpu-results.json", "[1, 2]", GPU_SCRIPT),
    ],
)
def test_a_damaged_benchmark_file_names_the_command_that_writes_it(tmp_path, name, text, command):
    runs = write_study(tmp_path / "runs")
    damaged = tmp_path / name
    damaged.write_text(text)
    where = {"benchmarks": damaged} if name == "forward_latency.json" else {"gpu_results": damaged}
    with pytest.raises(ArchbenchError) as refused:
        generate(tmp_path, runs, **where)
    assert str(damaged) in refused.value.message and refused.value.message.endswith(f"rerun `{command}`")


LATENCY = {
    "machine_info": {
        "node": "host",
        "processor": "x86_64",
        "machine": "x86_64",
        "python_implementation": "CPython",
        "python_version": "3.11.2",
        "release": "6.1",
        "system": "Linux",
        "cpu": {"count": 2},
    },
    "commit_info": {"id": "0123456789abcdef", "dirty": False, "branch": "main"},
    "benchmarks": [],
    "datetime": "2025-01-03T00:00:00.000000+00:00",
    "version": "5.1.0",
}


def _bench(model: str, impl: str, batch: int, median: float) -> dict:
    name = f"test_forward_latency[{model}-b{batch}-{impl}]"
    return {
        "group": f"{model}-b{batch}",
        "name": name,
        "fullname": f"benchmarks/test_forward_latency.py::{name}",
        "params": {"name": model, "batch": batch, "impl": impl},
        "param": f"{model}-b{batch}-{impl}",
        "extra_info": {
            "model": model,
            "impl": impl,
            "batch": batch,
            "image_size": 64,
            "device": "cpu",
            "memory_format": "channels_last",
            "threads": 1,
        },
        "options": {
            "disable_gc": False,
            "timer": "perf_counter",
            "min_rounds": 5,
            "max_time": 1.0,
            "min_time": 5e-06,
            "precision": None,
            "confidence": None,
            "warmup": False,
        },
        "stats": {
            "min": median * 0.9,
            "max": median * 1.2,
            "mean": median * 1.01,
            "stddev": median * 0.05,
            "rounds": 10,
            "median": median,
            "iqr": median * 0.04,
            "q1": median * 0.98,
            "q3": median * 1.02,
            "iqr_outliers": 0,
            "stddev_outliers": 1,
            "outliers": "1;0",
            "ld15iqr": median * 0.9,
            "hd15iqr": median * 1.2,
            "ops": 1 / median,
            "total": median * 10,
            "iterations": 1,
            "data": [median * f for f in (0.9, 0.98, 1.0, 1.0, 1.0, 1.0, 1.0, 1.02, 1.1, 1.2)],
        },
    }


def test_latency_table_reads_pytest_benchmark_json(tmp_path):
    runs = write_study(tmp_path / "runs")
    architectures = section(generate(tmp_path, runs), "## 4. Architectures")
    assert "not measured" in row_for(architectures, "resnet18")["latency b1 (ms)"]

    bench = tmp_path / "forward_latency.json"
    data = dict(
        LATENCY,
        benchmarks=[
            _bench("resnet18", "archbench", 1, 0.002),
            _bench("resnet18", "torchvision", 1, 0.0025),
            _bench("resnet18", "archbench", 32, 0.040),
            _bench("resnet18", "torchvision", 32, 0.032),
            _bench("resnet18_plain", "archbench", 1, 0.0019),
            _bench("vgg11", "archbench", 1, 0.030),
            _bench("vgg11", "torchvision", 1, 0.030),
        ],
    )
    bench.write_text(json.dumps(data))
    text = generate(tmp_path, runs, benchmarks=bench)
    arch = section(text, "## 4. Architectures")
    assert row_for(arch, "resnet18")["latency b1 (ms)"] == "2.00"
    assert row_for(arch, "resnet18")["latency b32 (ms)"] == "40.00"
    assert row_for(arch, "vgg11")["latency b32 (ms)"] == "not measured"
    detail = table_rows(arch[arch.index("Forward latency from") :])
    ratios = {(r["model"], r["batch"]): r["archbench / torchvision"] for r in detail}
    assert ratios[("resnet18", "1")] == "0.800"
    assert ratios[("resnet18", "32")] == "1.250"
    assert ratios[("vgg11", "1")] == "1.000"
    assert ratios[("resnet18_plain", "1")] == "no torchvision twin"
    assert all(r["memory format"] == "channels_last" and r["threads"] == "1" for r in detail)


def test_malformed_run_file_names_the_file_and_the_rest_is_reported(tmp_path):
    runs = write_study(tmp_path / "runs")
    broken = sorted((runs / "vgg11").iterdir())[0] / "summary.json"
    broken.write_text("{not json")
    assert f"- vgg11/{broken.parent.name}: summary.json is not valid JSON" in generate(tmp_path, runs)
    broken.unlink()  # now it counts as interrupted
    metrics = broken.parent / "metrics.csv"
    metrics.write_text("epoch,train_loss\n1,2.0\n")
    assert "metrics.csv lacks the column(s) train_acc" in generate(tmp_path, runs)


@pytest.mark.parametrize("make", [lambda p: p.mkdir(), lambda p: None], ids=["empty", "missing"])
def test_no_runs_is_one_line_from_the_cli(tmp_path, make):
    runs = tmp_path / "EMPTY"
    make(runs)
    result = CliRunner().invoke(app, ["report", "--runs", str(runs), "--report", str(tmp_path / "R.md")])
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1
    assert f"no runs found under {runs}/" in lines[0]
    assert not (tmp_path / "R.md").exists()


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_report_tables_and_run_records_get_the_mode_open_would_give_under_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        runs.write_json(tmp_path / "summary.json", {"a": 1})
        write_table(tmp_path / "REPORT-claims.csv", pd.DataFrame({"a": [1]}))
    finally:
        os.umask(old)
    for name in ("summary.json", "REPORT-claims.csv"):  # not mkstemp's 0600
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~umask


def test_the_regenerate_command_names_the_report_when_it_is_not_the_default_and_rewrites_it(tmp_path, monkeypatch):
    project = tmp_path / "project"
    for seed in range(2):
        write_run(project / "runs", "resnet18", seed, [0.3, 0.4 + 0.01 * seed])
    files = {  # where the CLI looks by default: in the runs folder's project
        "benchmarks": project / LATENCY_FILE,
        "bench_results": project / BENCH_DIR,
        "gpu_results": project / GPU_RESULTS_FILE,
    }
    write_report(project / "runs", project / "REPORT.md", **files)  # the CLI's defaults: nothing to name
    assert "Regenerate with `archbench report` (from" in unwrap((project / "REPORT.md").read_text(encoding="utf-8"))
    elsewhere = tmp_path / "elsewhere"
    first = write_report(project / "runs", elsewhere / "R.md", **files)
    command = next(ln for ln in unwrap(first.read_text(encoding="utf-8")).splitlines() if "Regenerate with" in ln)
    command = command.split("`")[1]
    assert command == "archbench report --runs ../project/runs --report R.md"  # default benchmark paths omitted
    before = first.read_text(encoding="utf-8")
    first.unlink()
    monkeypatch.chdir(elsewhere)  # run as the report says: from its folder
    result = CliRunner().invoke(app, command.split()[1:])
    assert result.exit_code == 0, result.output
    assert first.read_text(encoding="utf-8") == before


def test_a_model_keeps_its_colour_in_every_figure_and_arms_differ_by_line_style():
    from archbench.report.figures import _styles, once_per_model

    every = ["resnet18", "resnet18 (tuned lr)", "resnet18_plain", "vgg11", "vgg11 (tuned lr)"]
    styles = _styles(every)
    assert styles["resnet18"]["color"] == styles["resnet18 (tuned lr)"]["color"]
    assert styles["resnet18"]["marker"] == styles["resnet18 (tuned lr)"]["marker"]
    assert (styles["resnet18"]["linestyle"], styles["resnet18 (tuned lr)"]["linestyle"]) == ("-", "--")
    assert len({str(styles[m]["color"]) for m in ("resnet18", "resnet18_plain", "vgg11")}) == 3
    # a figure that shows only some models (e.g. learning-rate sensitivity) keeps their colours
    assert _styles(["vgg11"], every)["vgg11"]["color"] == styles["vgg11"]["color"]
    # step 0 is the same in every arm: drawn once per architecture
    assert once_per_model(every) == ["resnet18", "resnet18_plain", "vgg11"]
    assert once_per_model(["vgg11 (tuned lr)"]) == ["vgg11 (tuned lr)"]


def test_an_accuracy_band_near_zero_is_clipped_at_zero(tmp_path, monkeypatch):
    import matplotlib.axes

    from archbench.report import figures

    bands = []
    original = matplotlib.axes.Axes.fill_between

    def record(self, x, low, high, **kw):
        bands.append((self.get_ylabel() or "", np.asarray(low), np.asarray(high)))
        return original(self, x, low, high, **kw)

    monkeypatch.setattr(matplotlib.axes.Axes, "fill_between", record)
    curves = pd.DataFrame(
        [
            {
                "label": "vgg11",
                "arm": "registry default rates",
                "seed": s,
                "epoch": e,
                "test_acc": acc,
                "train_loss": 2.3,
            }
            for s, acc in enumerate((0.0, 0.0, 0.03))  # mean 1%, a t band of ± 3.7 points
            for e in (1, 2)
        ]
    )
    figures.plot_training_curves(curves, ["vgg11"], tmp_path / "curves.png")
    accuracy = [low for _, low, _ in bands if len(low) and low.max() < 50]
    assert accuracy and all(low.min() >= 0.0 for low in accuracy)


def test_the_accuracy_cost_figure_says_completed_of_total_per_model(tmp_path, monkeypatch):
    import matplotlib.axes

    from archbench.report import figures

    labels = []
    original = matplotlib.axes.Axes.errorbar

    def record(self, *args, **kw):
        labels.append(kw.get("label"))
        return original(self, *args, **kw)

    monkeypatch.setattr(matplotlib.axes.Axes, "errorbar", record)
    results = pd.DataFrame(
        {
            "label": ["vgg11"] * 3,
            "status": ["completed", "completed", "diverged"],
            "final_test_acc": [0.5, 0.52, math.nan],
            "parameters": [1e6] * 3,
            "gflops_224": [1.0] * 3,
            "train_seconds": [10.0] * 3,
        }
    )
    figures.plot_accuracy_vs_cost(results, ["vgg11"], tmp_path / "cost.png")
    assert set(labels) == {"vgg11 (2/3 completed)"}
