"""Nothing silent: one name with two architectures, folders that hold no run, and the speed results the
report reads (or says it did not find)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from test_report import generate, interval, provenance_items, row_for, section, table_rows, write_run

from archbench import bench, bench_results
from archbench.report.load import architecture_key, load_bench_results
from archbench.report.speed import bench_part, gpu_part

ARCH_A, ARCH_B = {"config": "A", "batch_norm": False}, {"config": "A", "batch_norm": False, "hidden": 1024}
GPU = {
    "measured_at": "2025-03-01T00:00:00Z",
    "device": "NVIDIA H200",
    "driver": "570.1",
    "torch": "2.9.0",
    "cuda": "12.8",
    "git_commit": "fedcba9876543210",
    "cpu_check": False,
    "loop": [
        {
            "model": "resnet18",
            "image_size": 224,
            "batch_size": 256,
            "precision": "bf16",
            "channels_last": True,
            "compile": True,
            "train_images_per_s": 9876.5,
            "compile_seconds": 41.2,
            "peak_memory_mb": 20480.0,
        }
    ],
    "model_only": [{"model": "resnet18", "train_images_per_s": 12000.0, "inference_images_per_s": 35000.0}],
    "goals": [{"goal": "resnet18 epoch under 30 s", "value": 12.6, "target": 30, "met": True}],
}
BENCH = pd.DataFrame(
    [
        {
            "model": "resnet18",
            "device": "cuda",
            "device_name": "NVIDIA H200",
            "train_images_per_s": 11000.0,
            "train_end_to_end_images_per_s": 10500.0,
            "inference_images_per_s": 30000.0,
            "peak_memory_mb": 18000.0,
            "batch_size": 256,
            "requested_batch_size": 256,
            "image_size": 224,
            "precision": "bf16",
            "memory_format": "channels_last",
            "compile": False,
            "torch": "2.9.0",
            "cuda": "12.8",
            "git_commit": "0123456789abcdef",
            "measured_at": "2025-03-01T01:00:00Z",
            "file": "bench-nvidia-h200-bf16.json",
        }
    ]
)


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[Path, str]:
    tmp = tmp_path_factory.mktemp("silent")
    runs = tmp / "runs"
    for seed in (0, 1):
        write_run(runs, "vgg11", seed, [0.2, 0.3], args=ARCH_A, parameters=1000, run_tag="archa")
        write_run(runs, "vgg11", seed, [0.5, 0.6], args=ARCH_B, parameters=2000, run_tag="archb")
        write_run(runs, "resnet18", seed, [0.3, 0.4], compile_seconds=12.0 + 2 * seed)
    write_run(runs, "resnet18", 2, [], status="interrupted", run_tag="empty1")  # a summary, no epoch
    write_run(runs, "resnet18", 3, [], status=None, run_tag="empty2")  # no summary, a header-only metrics.csv
    write_run(runs, "resnet18_plain", 0, [], status="diverged", diverged_at_step=0)  # a result: it diverged
    gpu = tmp / "gpu-results.json"
    gpu.write_text(json.dumps(GPU))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(bench_results, "latest_bench_results", lambda folder: BENCH)
        return tmp, generate(tmp, runs, gpu_results=gpu)


def test_one_name_two_architectures_are_shown_apart_and_warned_about(report):
    _, text = report
    a, b = architecture_key("vgg", ARCH_A), architecture_key("vgg", ARCH_B)
    top = text[: text.index("## 2.")]  # the warning follows the first screen's summary, before any detail
    assert "WARNING: one name, several architectures" in top
    assert f"vgg11 [{a}] (builder vgg, 1,000 parameters)" in top
    assert f"vgg11 [{b}] (builder vgg, 2,000 parameters)" in top
    accuracy = section(text, "## 5. Accuracy")
    assert row_for(accuracy, f"vgg11 [{a}]")["final test acc (%)"] == interval([30.0, 30.0], resolution="0.5 points")
    assert row_for(accuracy, f"vgg11 [{b}]")["final test acc (%)"] == interval([60.0, 60.0], resolution="0.5 points")
    assert all(r["model"] != "vgg11" for r in table_rows(accuracy))  # never averaged under the bare name


def test_folders_without_an_epoch_are_counted_not_shown(report):
    _, text = report
    provenance = provenance_items(section(text, "## 3. Provenance"))
    line = provenance["folders without a recorded epoch"]
    assert line.startswith("2, ignored") and "resnet18/" in line
    records = section(text, ". Run records\n")
    assert "empty1" not in records and "empty2" not in records
    diverged = row_for(section(text, "## 5. Accuracy"), "resnet18_plain")
    assert diverged["status"] == "seed 0 diverged"  # the recorded status, with no epoch


def test_architecture_table_has_memory_compile_bench_and_gpu_results(report):
    _, text = report
    arch = section(text, "## 4. Architectures")
    resnet = row_for(arch, "resnet18")
    assert resnet["peak memory (MB)"] == interval([512.0, 512.0], ",.0f")
    assert resnet["compile (s)"] == interval([12.0, 14.0], ".1f") + ", inductor"
    assert row_for(arch, f"vgg11 [{architecture_key('vgg', ARCH_A)}]")["compile (s)"] == "not compiled"
    throughput = table_rows(arch[arch.index("Throughput from `archbench bench`") :])
    assert throughput[0]["train images/s (model only)"] == "11,000.0"
    assert throughput[0]["file"] == "bench-nvidia-h200-bf16.json" and throughput[0]["commit"] == "0123456789ab"
    gpu = arch[arch.index("GPU results from") :]
    assert (
        "measured 2025-03-01T00:00:00Z on NVIDIA H200 (driver 570.1, torch 2.9.0, CUDA 12.8, commit fedcba987654)"
    ) in gpu
    assert table_rows(gpu)[0]["images/s (median of steady epochs)"] == "9,876.5"
    assert "| resnet18 epoch under 30 s | 12.6    | 30       | yes   |" in gpu


def _stub(**fields) -> SimpleNamespace:
    inputs = SimpleNamespace(gpu_label="benchmarks/gpu/gpu-results.json", bench_label="benchmarks/results")
    return SimpleNamespace(inputs=inputs, **fields)


def test_gpu_results_absent_or_a_cpu_check_are_not_shown_as_gpu_results():
    absent = gpu_part(_stub(gpu=None))
    assert absent == ["GPU results: not yet measured (run bash benchmarks/gpu.sh on a CUDA machine)."]
    cpu = gpu_part(_stub(gpu={**GPU, "cpu_check": True}))
    assert len(cpu) == 1 and "CPU check" in cpu[0] and "not yet measured" in cpu[0]
    assert "H200" not in cpu[0]


def test_bench_results_absent_say_not_measured(monkeypatch, tmp_path):
    assert bench_part(_stub(bench=None))[0].startswith("Throughput (`archbench bench`): not measured")
    assert load_bench_results(tmp_path) is None  # an empty folder
    monkeypatch.setattr(bench, "latest_bench_results", lambda folder: None)
    assert load_bench_results(tmp_path) is None
