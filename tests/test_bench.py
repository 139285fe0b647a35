"""`archbench bench` on tiny models on the CPU: a process per model, the step's breakdown and memory, the
out-of-memory retry, and the result files.

No timing is asserted against a number: the phases of a step are checked against the step they split,
measured in the same window.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from rich.console import Console
from test_report import table_rows
from torch._dynamo.utils import counters
from typer.testing import CliRunner

from archbench import bench, train
from archbench.cli import app
from archbench.config import BenchRequest, RunRequest
from archbench.data import resolve
from archbench.devices import compile_model, optimizer_kernel, seed_everything
from archbench.distributed import DistContext
from archbench.errors import ArchbenchError
from archbench.registry import build_model
from archbench.report.load import load_bench_results
from archbench.report.speed import bench_part
from archbench.study import plan_runs

runner = CliRunner()
TORCH = torch.__version__.split("+")[0]
STEM = f"bench-cpu-fp32-contiguous-torch{TORCH}"


def bench_args(tiny_registry, tiny_data, out, *models) -> list[str]:
    return [
        "bench",
        *models,
        "--device",
        "cpu",
        "--image-size",
        "32",
        "--batch-size",
        "8",
        "--steps",
        "2",
        "--num-classes",
        "4",
        "--precision",
        "fp32",
        "--no-channels-last",
        "--data",
        str(tiny_data),
        "--registry",
        str(tiny_registry),
        "--out",
        str(out),
    ]


def request(tiny_registry, tiny_data, out, models=("tiny_resnet",), **kw) -> BenchRequest:
    settings = dict(
        models=list(models),
        device="cpu",
        image_size=32,
        batch_size=8,
        steps=2,
        num_classes=4,
        precision="fp32",
        channels_last=False,
        data=str(tiny_data),
        registry=tiny_registry,
        out=out,
    )
    return BenchRequest(**{**settings, **kw})


def test_each_model_is_measured_in_a_process_of_its_own_and_written_as_promised(tiny_registry, tiny_data, tmp_path):
    out = tmp_path / "results"
    result = runner.invoke(app, bench_args(tiny_registry, tiny_data, out, "tiny_resnet", "tiny_vgg"))
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == [f"{STEM}.csv", f"{STEM}.json"]

    written = json.loads((out / f"{STEM}.json").read_text())
    rows = {row["model"]: row for row in written["results"]}
    assert set(rows) == {"tiny_resnet", "tiny_vgg"}
    pids = {row["pid"] for row in rows.values()}
    assert len(pids) == 2 and os.getpid() not in pids  # a fresh process for each model
    assert written["provenance"]["torch"] == torch.__version__ and written["provenance"]["device_name"]
    for row in rows.values():
        assert row["provenance"]["torch"] == torch.__version__
        assert row["sgd"] == optimizer_kernel(torch.device("cpu"), "fp32")
        assert (row["batch_size"], row["requested_batch_size"], row["oom_batch_sizes"]) == (8, 8, [])
        for mode in ("train", "inference"):
            assert row[mode]["model_only"] > 0 and row[mode]["end_to_end"] > 0

    csv_lines = (out / f"{STEM}.csv").read_text().splitlines()
    header = csv_lines[0].split(",")
    assert {"model", "train_model_only", "breakdown_forward_s", "memory_peak_bytes", "provenance_torch"} <= set(header)
    assert sorted(line.split(",")[header.index("model")] for line in csv_lines[1:]) == ["tiny_resnet", "tiny_vgg"]

    latest = bench.latest_bench_results(out)
    assert sorted(latest["model"]) == ["tiny_resnet", "tiny_vgg"]
    assert (latest["train_images_per_s"] > 0).all() and (latest["peak_memory_mb"] > 0).all()
    assert set(latest["torch"]) == {torch.__version__} and set(latest["batch_size"]) == {8}


def test_the_breakdown_splits_a_training_step_and_memory_is_counted(tiny_registry, tiny_data, tmp_path):
    row = bench.measure("tiny_resnet", request(tiny_registry, tiny_data, tmp_path, steps=4))
    parts = row["breakdown"]
    phases = [parts["forward_s"], parts["backward_s"], parts["optimizer_s"]]
    assert all(p > 0 for p in phases), parts
    # The phases cover the step: only the loop between steps is outside them.
    assert 0.8 * parts["step_s"] <= sum(phases) <= parts["step_s"] * (1 + 1e-9), parts

    memory = row["memory"]
    model = build_model("tiny_resnet", registry=tiny_registry, num_classes=4)
    weights = sum(p.numel() * 4 for p in model.parameters())  # float32
    assert memory["weights_bytes"] == weights and memory["gradient_bytes"] == weights
    assert memory["optimizer_state_bytes"] == weights  # one momentum buffer per parameter
    # Activations of a batch of 8 at 32x32: at least the input and the first conv's output are kept.
    assert memory["activation_bytes"] >= 8 * 3 * 32 * 32 * 4 + 8 * 8 * 16 * 16 * 4
    assert memory["peak_bytes"] > memory["weights_bytes"] and "ru_maxrss" in memory["peak_kind"]
    assert row["compile_seconds"] is None


class Sleeper(bench.Subject):
    """A subject with no model: the loop's phases it times are replaced by sleeps."""

    def __init__(self):
        self.device = torch.device("cpu")
        self.clock = bench.Clock(self.device)
        self.training, self.fixed = None, (None, None)


def test_each_phase_is_timed_where_it_runs_and_is_the_loops_own(monkeypatch):
    # The loop's phases sleep 10, 20 and 5 ms: a bench that ran a step of its own would not sleep at all.
    def sleeping(seconds, result=None):
        return lambda *args: time.sleep(seconds) or result

    monkeypatch.setattr(train, "forward_loss", sleeping(0.010, (None, torch.zeros(()))))
    monkeypatch.setattr(train, "backward", sleeping(0.020))
    monkeypatch.setattr(train, "update", sleeping(0.005, 0.0))
    parts = Sleeper().breakdown(steps=3)
    # A sleep lasts at least as long as asked: a phase shorter than its sleep was timed around the wrong code.
    assert parts["forward_s"] >= 0.010 and parts["backward_s"] >= 0.020 and parts["optimizer_s"] >= 0.005
    assert parts["forward_s"] + parts["backward_s"] + parts["optimizer_s"] <= parts["step_s"]


def test_the_benchs_step_is_the_loops_bit_for_bit(tiny_registry, tiny_data, tmp_path):
    """Five steps on one batch through the bench (its warm-up steps, then two of its timed phases) and
    through the loop's own planning and `train.optimiser_step` leave the same weights: the same model, recipe,
    optimiser, loss and step."""
    cpu, data = torch.device("cpu"), resolve(str(tiny_data))
    subject = bench.Subject("tiny_resnet", request(tiny_registry, tiny_data, tmp_path), data, cpu)
    x, y = subject.fixed
    subject.breakdown(steps=2)  # WARMUP_STEPS train_step calls, then the three phases twice

    run = RunRequest(models=["tiny_resnet"], batch_size=8, image_size=32, channels_last=False, registry=tiny_registry)
    (plan,) = plan_runs(run, data, None, cpu, 1)
    seed_everything(plan.config.seed, plan.config.deterministic)
    t = train.build_training(plan.entry.build(num_classes=4), plan.config, data, None, cpu, DistContext())
    for step in range(bench.WARMUP_STEPS + 2):
        train.optimiser_step(t, x, y, step)
    assert subject.training.recipe == t.recipe
    bench_weights, loop_weights = subject.training.model.state_dict(), t.model.state_dict()
    assert all(torch.equal(bench_weights[k], loop_weights[k]) for k in loop_weights)


def test_out_of_memory_halves_the_batch_and_records_the_one_that_ran(tiny_registry, tiny_data, tmp_path, monkeypatch):
    monkeypatch.setenv(bench.SIMULATE_OOM_ABOVE, "2")
    (row,) = bench.run_bench(request(tiny_registry, tiny_data, tmp_path, batch_size=8), Console(quiet=True))
    assert (row["batch_size"], row["requested_batch_size"], row["oom_batch_sizes"]) == (2, 8, [8, 4])
    (saved,) = json.loads((tmp_path / f"{STEM}.json").read_text())["results"]
    assert saved["batch_size"] == 2 and saved["requested_batch_size"] == 8


def test_out_of_memory_at_batch_one_is_one_line(tiny_registry, tiny_data, tmp_path, monkeypatch):
    monkeypatch.setenv(bench.SIMULATE_OOM_ABOVE, "0")
    with pytest.raises(ArchbenchError, match="out of memory even at batch 1"):
        bench.run_bench(request(tiny_registry, tiny_data, tmp_path, batch_size=1), Console(quiet=True))


def fake_row(model: str, measured_at: str, images_per_s: float, device: str = "cpu", batch: int = 8) -> dict:
    device_name = "cpu box" if device == "cpu" else "A GPU"
    return {
        "model": model,
        "device": device,
        "precision": "fp32",
        "channels_last": False,
        "memory_format": "contiguous",
        "compile": False,
        "compile_seconds": None,
        "image_size": 32,
        "batch_size": batch,
        "requested_batch_size": 8,
        "oom_batch_sizes": [] if batch == 8 else [8],
        "steps": 2,
        "warmup_steps": 3,
        "rounds": 3,
        "sgd": "foreach",
        "train": {"model_only": images_per_s, "end_to_end": images_per_s / 2, "ratio": 0.5},
        "inference": {"model_only": 3 * images_per_s, "end_to_end": images_per_s, "ratio": 1 / 3},
        "breakdown": {"forward_s": 0.1, "backward_s": 0.2, "optimizer_s": 0.05, "step_s": 0.36},
        "memory": {
            "weights_bytes": 2**20,
            "gradient_bytes": 2**20,
            "optimizer_state_bytes": 2**20,
            "activation_bytes": 2**21,
            "peak_bytes": 2**24,
            "peak_kind": "cpu peak resident set",
        },
        "pid": 1,
        "measured_at": measured_at,
        "provenance": {"torch": "2.14.1", "cuda": None, "device_name": device_name, "git_commit": "abc"},
    }


def test_a_later_run_replaces_its_models_rows_and_keeps_the_others(tmp_path):
    bench.write_results(
        [fake_row("a", "2025-01-01T00:00:00Z", 100), fake_row("b", "2025-01-01T00:00:00Z", 200)], tmp_path
    )
    json_path, csv_path = bench.write_results([fake_row("a", "2025-02-01T00:00:00Z", 150)], tmp_path)
    assert json_path.name == "bench-cpu-fp32-contiguous-torch2.14.1.json" and csv_path.suffix == ".csv"
    rows = json.loads(json_path.read_text())["results"]
    assert [(r["model"], r["train"]["model_only"]) for r in rows] == [("a", 150), ("b", 200)]
    assert len(csv_path.read_text().splitlines()) == 3


def test_latest_results_take_the_newest_row_per_model_and_device(tmp_path):
    bench.write_results([fake_row("a", "2025-01-01T00:00:00Z", 100)], tmp_path)
    bench.write_results([fake_row("a", "2025-03-01T00:00:00Z", 300, batch=4)], tmp_path)  # another key: kept too
    gpu_file, _ = bench.write_results([fake_row("a", "2025-02-01T00:00:00Z", 200, device="cuda")], tmp_path)
    assert gpu_file.name == "bench-a-gpu-fp32-contiguous-torch2.14.1.json"
    (tmp_path / "bench-damaged.json").write_text("{")
    latest = bench.latest_bench_results(tmp_path)
    assert list(zip(latest["device_name"], latest["model"], latest["train_images_per_s"])) == [
        ("A GPU", "a", 200),
        ("cpu box", "a", 300),
    ]
    assert list(latest["batch_size"]) == [8, 4] and list(latest["requested_batch_size"]) == [8, 8]
    assert latest["peak_memory_mb"].iloc[0] == pytest.approx(16.0)
    assert {"inference_images_per_s", "precision", "torch", "git_commit", "measured_at"} <= set(latest.columns)
    assert bench.latest_bench_results(tmp_path / "nothing") is None


def test_out_is_a_folder(tiny_registry, tiny_data, tmp_path):
    result = runner.invoke(app, bench_args(tiny_registry, tiny_data, tmp_path / "bench.json", "tiny_resnet"))
    assert result.exit_code == 2 and "folder" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "bench.json").exists()


def test_the_default_folder_is_benchmarks_results():
    assert bench.out_folder(None) == Path("benchmarks/results")


@pytest.mark.slow
def test_compile_time_is_reported_apart(tiny_registry, tiny_data, tmp_path):
    (row,) = bench.run_bench(request(tiny_registry, tiny_data, tmp_path, compile=True), Console(quiet=True))
    assert row["compile"] is True and set(row["compile_seconds"]) == {"train", "inference"}
    # The first compiled step holds the compilation, which the windows after the warm-up do not.
    assert row["compile_seconds"]["train"] > row["breakdown"]["step_s"]
    assert (tmp_path / f"{STEM.replace('contiguous', 'contiguous-compiled')}.json").exists()


def test_every_timed_batch_has_the_one_fixed_size(tiny_registry, tiny_data, tmp_path, monkeypatch):
    # 96 training images at batch 20: the evaluation loader's near-equal batches would be 20, 19, 19, ...
    sizes = {"train_step": [], "infer_step": []}
    for name, seen in sizes.items():
        original = getattr(bench.Subject, name)

        def recording(self, batch, original=original, seen=seen):
            seen.append(len(batch[1]))
            return original(self, batch)

        monkeypatch.setattr(bench.Subject, name, recording)
    bench.measure("tiny_resnet", request(tiny_registry, tiny_data, tmp_path, batch_size=20))
    assert set(sizes["train_step"]) == {20} and set(sizes["infer_step"]) == {20}, sizes
    # every inference window ran: the first step, then ROUNDS x 2 streams x (warm-up + timed steps)
    assert len(sizes["infer_step"]) == 1 + bench.ROUNDS * 2 * (bench.WARMUP_STEPS + 2)


def test_the_bench_compiles_as_the_loop_does_one_graph_per_mode(tiny_registry, tiny_data, tmp_path, monkeypatch):
    monkeypatch.setenv("ARCHBENCH_COMPILE_BACKEND", "eager")
    backends = []

    def recording(forward, backend):
        backends.append(backend)
        return compile_model(forward, backend)

    monkeypatch.setattr(train, "compile_model", recording)
    counters.clear()
    row = bench.measure("tiny_resnet", request(tiny_registry, tiny_data, tmp_path, batch_size=20, compile=True))
    assert backends == ["eager"] and row["compile_backend"] == "eager"
    # train and inference: one graph each, however many batches the windows time (no new shape appears)
    assert counters["stats"]["unique_graphs"] == 2, dict(counters["stats"])


def test_a_bench_stopped_part_way_keeps_the_models_it_finished(tiny_registry, tiny_data, tmp_path, monkeypatch):
    def measured(name, request, console):
        if name == "tiny_vgg":
            raise KeyboardInterrupt  # stopped (a timeout, Ctrl-C) while measuring the second model
        return fake_row(name, "2025-01-01T00:00:00Z", 100)

    monkeypatch.setattr(bench, "measure_with_retries", measured)
    models = ("tiny_resnet", "tiny_vgg")
    with pytest.raises(KeyboardInterrupt):
        bench.run_bench(request(tiny_registry, tiny_data, tmp_path, models=models), Console(quiet=True))
    (saved,) = json.loads((tmp_path / "bench-cpu-fp32-contiguous-torch2.14.1.json").read_text())["results"]
    assert saved["model"] == "tiny_resnet"
    assert sorted(p.name for p in tmp_path.iterdir()) == [  # each file replaced whole: no temporary left behind
        "bench-cpu-fp32-contiguous-torch2.14.1.csv",
        "bench-cpu-fp32-contiguous-torch2.14.1.json",
    ]


def test_the_report_shows_the_bench_folder_and_the_gpu_scripts_beside_it(tmp_path):
    results, gpu_bench = tmp_path / "benchmarks" / "results", tmp_path / "benchmarks" / bench.GPU_SCRIPT_BENCH
    cpu_file, gpu_file = "bench-cpu-fp32-contiguous-torch2.14.1.json", "bench-a-gpu-fp32-contiguous-torch2.14.1.json"
    bench.write_results(
        [fake_row("a", "2025-01-01T00:00:00Z", 100), fake_row("b", "2025-01-01T00:00:00Z", 200)], results
    )
    bench.write_results([fake_row("a", "2025-02-01T00:00:00Z", 9000, device="cuda")], gpu_bench)
    bench.write_results([fake_row("b", "2025-03-01T00:00:00Z", 300)], gpu_bench)  # newer than b in results/
    latest = load_bench_results(results)
    rows = {(r["device_name"], r["model"]): r for r in latest.to_dict("records")}
    assert set(rows) == {("A GPU", "a"), ("cpu box", "a"), ("cpu box", "b")}
    assert rows[("A GPU", "a")]["train_images_per_s"] == 9000 and rows[("cpu box", "b")]["train_images_per_s"] == 300
    assert rows[("cpu box", "a")]["source"] is None and rows[("A GPU", "a")]["source"] == gpu_bench.as_posix()

    inputs = SimpleNamespace(bench_label="benchmarks/results", relative=lambda p: os.path.relpath(p, tmp_path))
    text = "\n".join(bench_part(SimpleNamespace(bench=latest, inputs=inputs)))
    assert "in `benchmarks/results/` and `benchmarks/gpu/bench/` (written by bash benchmarks/gpu.sh)" in text
    shown = {(r["device"], r["model"]): r["file"] for r in table_rows(text)}
    assert shown == {
        ("A GPU", "a"): f"benchmarks/gpu/bench/{gpu_file}",
        ("cpu box", "a"): cpu_file,
        ("cpu box", "b"): f"benchmarks/gpu/bench/{cpu_file}",
    }


def test_a_ratio_above_one_is_flagged_as_noise(tiny_registry, tiny_data, tmp_path, monkeypatch):
    """End to end cannot beat model only (the pipeline only adds work): `archbench bench` says so when it does."""

    def row(name, train_ratio):
        return {"model": name, "train": {"ratio": train_ratio}, "inference": {"ratio": 0.95}}

    rows = iter([row("tiny_resnet", 1.78), row("tiny_vgg", 1.0)])
    monkeypatch.setattr(bench, "measure_with_retries", lambda name, request, console: next(rows))
    monkeypatch.setattr(bench, "write_results", lambda rows, folder: (folder / "a.json", folder / "a.csv"))
    monkeypatch.setattr(bench, "throughput_table", lambda rows, request: "")
    monkeypatch.setattr(bench, "step_table", lambda rows, request: "")
    console = Console(record=True, width=400)
    bench.run_bench(request(tiny_registry, tiny_data, tmp_path, models=("tiny_resnet", "tiny_vgg")), console)
    warnings = [line for line in console.export_text().splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and warnings[0].startswith("warning: tiny_resnet train: end-to-end / model-only = 1.78")
