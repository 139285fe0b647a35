"""The CUDA fast path, proven on the CPU: one compiled shape, loud recompiles, CUDA-safe determinism,
the optimiser kernel choice, per-device RNG state and the transform's output dtype."""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import random
import re
import subprocess
import sys
import tarfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_run_request
from test_report import table_rows
from torch import nn
from torch._dynamo.utils import counters

from archbench import devices, train
from archbench.config import RunRequest
from archbench.data import resolve
from archbench.data.loader import transform_batch
from archbench.devices import (
    DeterministicAdaptiveAvgPool2d,
    compile_model,
    make_deterministic,
    make_optimizer,
    needs_deterministic_pooling,
    optimizer_kernel,
    rng_state,
    set_rng_state,
)
from archbench.distributed import DistContext
from archbench.errors import ArchbenchError
from archbench.registry import get_entry, list_models
from archbench.report.load import load_gpu_results
from archbench.report.speed import gpu_part
from archbench.study import plan_runs, run_models
from archbench.train import build_training

ROOT = Path(__file__).resolve().parent.parent


def gpu_check_module():
    """benchmarks/gpu_check.py (a script, not a package module)."""
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_request(tiny_registry, tiny_data, out, **kw) -> RunRequest:
    return tiny_run_request(tiny_registry, tiny_data, out, **{"batch_size": 20, **kw})


def test_the_compiled_step_sees_one_shape(tiny_registry, tiny_data, tmp_path, monkeypatch):
    # 96 training images at batch 20: near-equal batches would be 20, 19, ... and compile a second graph
    monkeypatch.setenv("ARCHBENCH_COMPILE_BACKEND", "eager")
    counters.clear()
    (summary,) = run_models(tiny_request(tiny_registry, tiny_data, tmp_path, compile=True))
    assert summary["status"] == "completed"
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])
    assert summary["compile_seconds"] > 0
    config = json.loads((tmp_path / "tiny_resnet" / summary["run_id"] / "config.json").read_text())
    assert config["compile"] is True and config["compile_backend"] == "eager"


def test_a_recompile_limit_hit_is_an_error_not_a_fallback():
    forward = compile_model(nn.Sequential(nn.Linear(4, 2)), "eager")
    with torch._dynamo.config.patch(recompile_limit=1):
        forward(torch.randn(3, 4))
        with pytest.raises(torch._dynamo.exc.FailOnRecompileLimitHit):
            forward(torch.randn(5, 4))


def test_the_loop_turns_a_recompile_limit_hit_into_one_line(tiny_registry, tiny_data, tmp_path, monkeypatch):
    def recompiling(*args, **kwargs):
        raise torch._dynamo.exc.FailOnRecompileLimitHit("Hard failure due to fail_on_recompile_limit_hit")

    monkeypatch.setattr(train, "train_epoch", recompiling)
    with pytest.raises(ArchbenchError, match="recompile limit on tiny_resnet s0"):
        run_models(tiny_request(tiny_registry, tiny_data, tmp_path, epochs=1))


def test_deterministic_pooling_only_where_cuda_lacks_the_kernel():
    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert needs_deterministic_pooling(cuda, True)
    assert not needs_deterministic_pooling(cuda, False)
    assert not needs_deterministic_pooling(cpu, True)


@pytest.mark.parametrize("size, out", [(1, 7), (7, 7), (14, 7), (13, 7), (5, 3), (6, 1)])
def test_deterministic_pool_equals_pytorchs_forward_and_backward(size, out):
    x = torch.randn(2, 3, size, size, dtype=torch.float64, requires_grad=True)
    ours, theirs = DeterministicAdaptiveAvgPool2d(out)(x), nn.AdaptiveAvgPool2d(out)(x)
    weights = torch.randn_like(theirs)
    (grad_ours,) = torch.autograd.grad((ours * weights).sum(), x)
    (grad_theirs,) = torch.autograd.grad((theirs * weights).sum(), x)
    torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(grad_ours, grad_theirs)


def test_deterministic_mode_trains_a_step_of_every_registry_model():
    """Each shipped model, with its pools swapped as on CUDA, under torch's deterministic mode."""
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        for name in list_models():
            with torch.device("meta"):
                model = get_entry(name).build(num_classes=10)
            model = make_deterministic(model.to_empty(device="cpu"))
            for p in model.parameters():  # a cheap, finite initialisation: the step is what is tested
                nn.init.normal_(p, std=0.02)
            assert not [m for m in model.modules() if type(m) is nn.AdaptiveAvgPool2d], name
            optimizer = make_optimizer(
                model.parameters(), lr=0.01, momentum=0.9, weight_decay=0, nesterov=False, kernel="foreach"
            )
            loss = F.cross_entropy(model(torch.randn(2, 3, 32, 32)), torch.tensor([1, 2]))
            loss.backward()
            optimizer.step()
            assert torch.isfinite(loss), name
    finally:
        torch.use_deterministic_algorithms(previous)


def test_build_training_swaps_the_pools_when_the_guard_says_so(tiny_registry, tiny_data, tmp_path, monkeypatch):
    request = RunRequest(
        models=["tiny_vgg"],
        data=str(tiny_data),
        preset="smoke",
        image_size=32,
        batch_size=8,
        device="cpu",
        registry=tiny_registry,
        out=tmp_path,
        deterministic=True,
    )
    data = resolve(request.data)
    (plan, *_) = plan_runs(request, data, None, torch.device("cpu"), 1)
    built = build_training(plan.entry.build(num_classes=4), plan.config, data, None, torch.device("cpu"), DistContext())
    assert [type(m) for m in built.model.modules() if isinstance(m, nn.AdaptiveAvgPool2d)] == [nn.AdaptiveAvgPool2d]
    monkeypatch.setattr(train, "needs_deterministic_pooling", lambda device, deterministic: deterministic)
    built = build_training(plan.entry.build(num_classes=4), plan.config, data, None, torch.device("cpu"), DistContext())
    assert [type(m) for m in built.model.modules() if isinstance(m, nn.AdaptiveAvgPool2d)] == [
        DeterministicAdaptiveAvgPool2d
    ]


@pytest.mark.parametrize(
    "device, precision, expected",
    [
        ("cuda", "bf16", "fused"),
        ("cuda", "fp32", "fused"),
        ("cuda", "fp16", "foreach"),
        ("cpu", "fp32", "foreach"),
        ("cpu", "bf16", "foreach"),
    ],
)
def test_the_sgd_kernel_choice(device, precision, expected):
    assert optimizer_kernel(torch.device(device), precision) == expected


def test_the_sgd_kernel_is_the_one_recorded(tiny_registry, tiny_data, tmp_path):
    (summary,) = run_models(tiny_request(tiny_registry, tiny_data, tmp_path, epochs=1))
    config = json.loads((tmp_path / "tiny_resnet" / summary["run_id"] / "config.json").read_text())
    assert config["optimizer_kernel"] == "foreach"
    params = [nn.Parameter(torch.zeros(3))]
    assert (
        make_optimizer(params, lr=0.1, momentum=0.9, weight_decay=0, nesterov=False, kernel="fused").defaults["fused"]
        is True
    )
    assert (
        make_optimizer(params, lr=0.1, momentum=0.9, weight_decay=0, nesterov=False, kernel="foreach").defaults[
            "foreach"
        ]
        is True
    )


def test_rng_state_round_trips_on_the_cpu():
    cpu = torch.device("cpu")
    torch.manual_seed(1)
    state = rng_state(cpu)
    draws = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(state, cpu)
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(draws[0], again[0]) and np.array_equal(draws[1], again[1]) and draws[2] == again[2]


def test_cuda_rng_state_is_one_device_and_restored_only_there(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: calls.append(("get", device)) or torch.ones(4))
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: calls.append(("set", device)))
    for name in ("get_rng_state_all", "set_rng_state_all"):  # every visible GPU's state: what broke resumes
        monkeypatch.setattr(torch.cuda, name, lambda *a: pytest.fail("saved or restored every device's state"))
    trained_on, resumed_on = torch.device("cuda", 3), torch.device("cuda", 0)
    state = rng_state(trained_on)
    set_rng_state(state, resumed_on)
    assert calls == [("get", trained_on), ("set", resumed_on)]
    calls.clear()
    set_rng_state(state, torch.device("cpu"))  # resumed without a GPU: no CUDA state to set
    assert calls == []


def test_the_transform_writes_the_training_dtype_and_layout_in_one_pass():
    images = torch.randint(0, 256, (4, 64, 64, 3), dtype=torch.uint8)
    reference = transform_batch(images, 32)
    out = transform_batch(images, 32, channels_last=True, dtype=torch.bfloat16)
    assert out.dtype == torch.bfloat16 and out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(out, reference.to(torch.bfloat16))  # exactly autocast's cast at the first conv


def test_the_loaders_emit_the_precision_of_the_run(tiny_registry, tiny_data, tmp_path):
    request = RunRequest(
        models=["tiny_resnet"],
        data=str(tiny_data),
        preset="smoke",
        image_size=32,
        batch_size=8,
        device="cpu",
        registry=tiny_registry,
        out=tmp_path,
        precision="bf16",
        channels_last=True,
    )
    data = resolve(request.data)
    (plan,) = plan_runs(request, data, None, torch.device("cpu"), 1)
    built = build_training(plan.entry.build(num_classes=4), plan.config, data, None, torch.device("cpu"), DistContext())
    x, _ = next(iter(built.train_loader))
    assert x.dtype == torch.bfloat16 and x.is_contiguous(memory_format=torch.channels_last)


def test_ddp_does_not_broadcast_buffers_every_step(tiny_registry, tiny_data, tmp_path, monkeypatch):
    wrapped = {}

    class FakeDDP(nn.Module):
        def __init__(self, module, **kwargs):
            super().__init__()
            wrapped.update(kwargs)
            self.module = module

    monkeypatch.setattr(train.nn.parallel, "DistributedDataParallel", FakeDDP)
    request = RunRequest(
        models=["tiny_resnet"],
        data=str(tiny_data),
        preset="smoke",
        image_size=32,
        batch_size=8,
        device="cpu",
        registry=tiny_registry,
        out=tmp_path,
    )
    data = resolve(request.data)
    (plan,) = plan_runs(request, data, None, torch.device("cpu"), 2)
    build_training(
        plan.entry.build(num_classes=4), plan.config, data, None, torch.device("cpu"), DistContext(rank=0, world_size=2)
    )
    assert wrapped["broadcast_buffers"] is False


def test_sync_bn_with_compile_is_refused_before_anything_runs(tiny_registry, tiny_data, tmp_path):
    request = RunRequest(
        models=["tiny_resnet"],
        data=str(tiny_data),
        preset="smoke",
        image_size=32,
        batch_size=8,
        device="cpu",
        registry=tiny_registry,
        out=tmp_path / "runs",
        sync_bn=True,
        compile=True,
    )
    with pytest.raises(ArchbenchError, match="--sync-bn with --compile"):
        plan_runs(request, resolve(request.data), None, torch.device("cpu"), 2)
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_gpu_script_cpu_check_end_to_end(tmp_path):
    """`bash benchmarks/gpu.sh --cpu-check` runs every step of the GPU script on the CPU and leaves what the GPU
    machine hands back: at most 8 files, none deeper than DIR/a/b/file, each under 16 MiB."""
    out = tmp_path / "gpu"
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu.sh"), "--cpu-check", str(out)],
        env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin", "ARCHBENCH_CACHE": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "0 step(s) failed, 0 skipped for time" in done.stdout
    assert_hand_back_sized(out)
    results = json.loads((out / "gpu-results.json").read_text())
    assert results["cpu_check"] is True and results["device"] == "cpu"
    assert Path(results["archbench_file"]).is_relative_to(ROOT) and results["steps_missing_or_failed"] == []
    assert {row["model"] for row in results["loop"]} == {"resnet18", "vgg16_bn"}
    for row in results["loop"]:
        assert row["status"] == "completed" and row["compile_seconds"] > 0
        assert len(row["train_images_per_s_spread"]["values"]) == 2 and row["train_images_per_s"] > 0  # 2 steady epochs
    for row in results["model_only"]:
        assert row["train_images_per_s"] > 0 and len(row["train_images_per_s_spread"]["values"]) == 2
        assert 0 < row["transform_over_forward"] < 1
    assert len(results["goals"]) == 4 and all(g["value"] is not None for g in results["goals"])
    assert "CPU CHECK" in (out / "summary.txt").read_text()
    # the optional steps ran too: the latency benchmark (folded into gpu-results.json) and the bench
    assert results["latency"] and all(row["device"] == "cpu" for row in results["latency"])
    (bench_file,) = (out / "bench").glob("bench-cpu-*-compiled-*.json")
    (row,) = json.loads(bench_file.read_text())["results"]
    assert row["model"] == "resnet18_plain" and row["compile_backend"] == "eager"
    with tarfile.open(out / "results.tar.gz") as tar:
        names = tar.getnames()
    assert {"device.log", "data.log", "loop-resnet18.log", "resnet18.json", "vgg16_bn.json", "latency.log"} <= set(
        names
    )
    assert any(n.endswith("metrics.csv") for n in names) and not any(n.endswith(".pt") for n in names)


def assert_hand_back_sized(out: Path) -> None:
    files = [p for p in out.rglob("*") if p.is_file()]
    assert 3 <= len(files) <= 8, files
    assert all(len(p.relative_to(out).parts) <= 3 and p.stat().st_size < 16 * 2**20 for p in files), files


def loop_file(model: str, rate: float, model_only: float) -> dict:
    """A loop step's file as gpu_check.py writes it."""

    def spread(values):
        return {"median": sorted(values)[len(values) // 2], "min": min(values), "max": max(values), "values": values}

    return {
        "model": model,
        "image_size": 224,
        "batch_size": 256,
        "precision": "bf16",
        "channels_last": True,
        "compile": True,
        "epochs": 4,
        "run_id": "r1",
        "epochs_recorded": 4,
        "train_images_per_s": spread([rate * 0.99, rate, rate * 1.01]),
        "compile_seconds": 40.0,
        "peak_memory_mb": 9000.0,
        "status": "completed",
        "model_only_train_images_per_s": spread([model_only, model_only * 1.01, model_only * 0.99]),
        "loader_fed_over_model_only": spread([0.97, 0.98, 0.99]),
        "end_to_end_over_model_only": rate / model_only,
        "transform_over_forward": 0.02,
    }


def test_collect_records_goals_spreads_and_latency_and_the_report_shows_them(tmp_path):
    gpu_check = gpu_check_module()
    work, out = tmp_path / "work", tmp_path / "out"
    work.mkdir()
    device = {k: None for k in ("driver", "cuda", "git_commit")}
    device.update(measured_at="2025-03-01T00:00:00Z", device="NVIDIA H200", torch="2.11.0", cpu_check=False)
    (work / "device.json").write_text(json.dumps(device))
    for model, rate in (("resnet18", 16000.0), ("vgg16_bn", 3000.0)):
        (work / f"{model}.json").write_text(json.dumps(loop_file(model, rate, rate / 0.98)))
    (work / "steps.jsonl").write_text(
        "".join(json.dumps({"step": s, "exit": 0}) + "\n" for s in gpu_check.REQUIRED_STEPS)
    )
    (work / "runs" / "resnet18" / "r1").mkdir(parents=True)
    (work / "runs" / "resnet18" / "r1" / "checkpoint.pt").write_bytes(b"x" * 100)

    def latency(impl, median):
        info = {"model": "resnet18", "impl": impl, "batch": 32, "image_size": 224, "device": "cuda:0"}
        return {
            "name": impl,
            "extra_info": {**info, "memory_format": "channels_last", "threads": 16},
            "stats": {"median": median},
        }

    (work / "forward_latency.json").write_text(
        json.dumps({"benchmarks": [latency("archbench", 0.004), latency("torchvision", 0.005)]})
    )
    gpu_check.collect(work, out)
    assert sorted(p.name for p in out.iterdir()) == ["gpu-results.json", "results.tar.gz", "summary.txt"]
    with tarfile.open(out / "results.tar.gz") as tar:  # every result file, never a checkpoint
        assert set(tar.getnames()) == {
            "device.json",
            "resnet18.json",
            "vgg16_bn.json",
            "steps.jsonl",
            "forward_latency.json",
        }
    results = load_gpu_results(out / "gpu-results.json")
    assert {r["model"] for r in results["loop"]} == {"resnet18", "vgg16_bn"}
    loop = {r["model"]: r for r in results["loop"]}
    assert (
        loop["resnet18"]["train_images_per_s"] == 16000.0
        and loop["resnet18"]["train_images_per_s_spread"]["max"] == 16160.0
    )
    assert [g["met"] for g in results["goals"]] == [True, False, True, True]
    assert "NOT MET       vgg16_bn training end to end = 3000" in (out / "summary.txt").read_text()

    inputs = SimpleNamespace(gpu_label="benchmarks/gpu/gpu-results.json")
    text = "\n".join(gpu_part(SimpleNamespace(gpu=results, inputs=inputs)))
    model_only = {r["model"]: r for r in table_rows(text[text.index("Model only") :])}
    assert model_only["vgg16_bn"]["batch transform / forward"] == "0.02"
    (shown,) = table_rows(text[text.index("Forward latency on this GPU") :])
    assert (shown["model"], shown["batch"], shown["device"]) == ("resnet18", "32", "cuda:0")
    assert (shown["archbench median (ms)"], shown["archbench / torchvision"]) == ("4.00", "0.800")


def test_collect_works_with_any_subset_and_says_why_a_goal_was_not_measured(tmp_path):
    gpu_check = gpu_check_module()
    work = tmp_path / "work"
    work.mkdir()
    results = gpu_check.collect(work, tmp_path / "nothing")  # no step ran at all: no traceback, every goal named
    assert [g["met"] for g in results["goals"]] == [None] * 4
    assert all(g["why"] == "step loop-resnet18 did not run" for g in results["goals"][::2])
    assert results["steps_missing_or_failed"] == list(gpu_check.REQUIRED_STEPS)

    # the vgg16_bn loop timed out after two epochs: its run record's epochs still count; resnet18's step failed
    run = work / "runs" / "vgg16_bn" / "20250301-000000-abcd"
    run.mkdir(parents=True)
    (run / "metrics.csv").write_text("epoch,train_images_per_s\n1,100.0\n2,2900.0\n")
    (run / "summary.json").write_text(json.dumps({"status": "interrupted", "compile_seconds": 50.0}))
    lines = [{"step": "device", "exit": 0}, {"step": "loop-resnet18", "exit": 1}]
    lines += [
        {"step": "loop-vgg16_bn", "exit": None, "timeout": 170},
        {"step": "loop-vgg16_bn", "exit": 124, "timeout": 170},
    ]
    (work / "steps.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    results = gpu_check.collect(work, tmp_path / "some", cpu_check=True)
    goals = {g["goal"]: g for g in results["goals"]}
    assert (
        goals["vgg16_bn training end to end"]["value"] == 2900.0
        and goals["vgg16_bn training end to end"]["met"] is False
    )
    assert goals["vgg16_bn end-to-end / model-only"]["why"].startswith("step loop-vgg16_bn timed out after 170 s")
    assert goals["resnet18 training end to end"]["why"].startswith("step loop-resnet18 failed with exit 1")
    assert results["cpu_check"] is True and results["steps_missing_or_failed"] == [
        "data",
        "loop-resnet18",
        "loop-vgg16_bn",
    ]
    summary = (tmp_path / "some" / "summary.txt").read_text()
    assert summary.startswith("CPU CHECK") and "step data did not run" in summary


def test_a_carried_wheel_that_differs_from_the_tree_is_an_error(tmp_path, monkeypatch):
    from importlib import metadata

    gpu_check = gpu_check_module()
    tree, site = tmp_path / "tree", tmp_path / "site"
    (tree / "archbench").mkdir(parents=True)
    (tree / "archbench" / "__init__.py").write_text("version = 2\n")
    (tree / "archbench" / "same.py").write_text("x = 1\n")
    info = site / "archbench-0.1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: archbench\nVersion: 0.1.0\n")

    def record(files: dict[str, bytes]) -> str:
        digest = {
            n: base64.urlsafe_b64encode(hashlib.sha256(c).digest()).rstrip(b"=").decode() for n, c in files.items()
        }
        return "".join(f"{n},sha256={d},{len(files[n])}\n" for n, d in digest.items())

    (info / "RECORD").write_text(record({"archbench/__init__.py": b"version = 1\n", "archbench/same.py": b"x = 1\n"}))
    monkeypatch.setattr(metadata, "distribution", lambda name: metadata.PathDistribution(info))
    wheel, differ = gpu_check.wheel_mismatches(tree)
    assert Path(wheel) == site and differ == ["archbench/__init__.py"]
    (info / "RECORD").write_text(record({"archbench/__init__.py": b"version = 2\n", "archbench/same.py": b"x = 1\n"}))
    assert gpu_check.wheel_mismatches(tree) == (str(site), [])

    # the device step stops with one line when the installed wheel differs from the tree
    monkeypatch.setattr(gpu_check, "wheel_mismatches", lambda: (str(site), ["archbench/train.py"]))
    with pytest.raises(SystemExit, match=r"differs from the working tree in 1 file\(s\), e.g. archbench/train.py"):
        gpu_check.device_info(tmp_path, cpu_check=True)
    device = json.loads((tmp_path / "device.json").read_text())
    assert Path(device["archbench_file"]).is_relative_to(ROOT) and device["wheel_differs_in"] == ["archbench/train.py"]


def test_the_throughput_set_is_written_as_packed_arrays_the_loop_reads(tmp_path):
    gpu_check = gpu_check_module()
    packed = gpu_check.write_throughput_set(tmp_path / "set", classes=3, train_per_class=4, test_per_class=2)
    assert not list((tmp_path / "set").rglob("*.JPEG"))
    data = resolve(str(tmp_path / "set"))
    assert data.synthetic and data.num_classes == 3
    assert data.train_images.shape == (12, 64, 64, 3) and list(data.test_labels) == [0, 0, 1, 1, 2, 2]
    assert gpu_check.write_throughput_set(tmp_path / "set", 3, 4, 2) == packed  # kept when already there


def run_gpu_script_steps_as_no_ops(tmp_path, deadline: int) -> str:
    """gpu.sh --cpu-check with every step's interpreter replaced by `true`: its control flow, in a moment."""
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu.sh"), "--cpu-check", str(tmp_path / "gpu")],
        env={
            "PYTHON": "true",
            "PATH": "/usr/bin:/bin",
            "ARCHBENCH_CACHE": str(tmp_path),
            "ARCHBENCH_GPU_DEADLINE": str(deadline),
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_gpu_script_skips_the_optional_steps_the_deadline_leaves_no_room_for(tmp_path):
    steps = ["device", "data", "loop-resnet18", "loop-vgg16_bn"]
    # 50 s: after the collect step's 30 s, neither the latency benchmark (60 s) nor the bench (45 s at least) fits
    out = run_gpu_script_steps_as_no_ops(tmp_path, 50)
    assert all(f"== {name} (timeout" in out for name in steps), out
    assert "== latency skipped" in out and "== bench skipped" in out and "2 skipped for time" in out
    # 100 s: the latency benchmark gets its whole timeout, the bench what is left (it saves model by model)
    out = run_gpu_script_steps_as_no_ops(tmp_path, 100)
    assert "== latency (timeout 60s" in out and "0 skipped for time" in out, out
    bench_timeout = int(re.search(r"== bench \(timeout (\d+)s", out).group(1))
    assert 65 <= bench_timeout <= 70, out


def test_peak_rss_is_read_in_bytes_on_linux_and_macos(monkeypatch):
    """ru_maxrss is KiB on Linux and bytes on macOS; training and the bench read it through one helper."""
    import resource

    monkeypatch.setattr(resource, "getrusage", lambda who: SimpleNamespace(ru_maxrss=2048))
    monkeypatch.setattr(devices.sys, "platform", "linux")
    assert devices.process_peak_rss_bytes() == 2048 * 1024
    monkeypatch.setattr(devices.sys, "platform", "darwin")
    assert devices.process_peak_rss_bytes() == 2048


def test_gpu_script_puts_the_tree_first_and_stops_when_the_device_step_refuses_the_code(tmp_path):
    """Every step runs with the working tree first on PYTHONPATH (before a carried wheel's folder), and a
    device step that fails (the code is not the tree's) stops the script before anything is measured."""
    fake = tmp_path / "python"
    fake.write_text(
        '#!/bin/sh\necho "$PYTHONPATH $*" >> "$LOG"\n'
        'case "$*" in *"gpu_check.py device"*) [ -n "$REFUSE" ] && exit 1;; esac\nexit 0\n'
    )
    fake.chmod(0o755)
    env = {"PYTHON": str(fake), "PATH": "/usr/bin:/bin", "ARCHBENCH_CACHE": str(tmp_path), "LOG": str(tmp_path / "log")}
    env["PYTHONPATH"] = "/tmp/site"
    script = [str(ROOT / "benchmarks" / "gpu.sh"), "--cpu-check", str(tmp_path / "gpu")]
    done = subprocess.run(["bash", *script], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    calls = (tmp_path / "log").read_text().splitlines()
    assert len(calls) > 5 and all(line.startswith(f"{ROOT}:/tmp/site ") for line in calls), calls
    (tmp_path / "log").unlink()
    done = subprocess.run(["bash", *script], env={**env, "REFUSE": "1"}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "stopped: the device step failed" in done.stdout
    calls = (tmp_path / "log").read_text().splitlines()
    assert [c.split(" ")[2] for c in calls] == ["device", "collect"], calls  # nothing measured after it
