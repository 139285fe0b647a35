"""The CUDA fast path, proven on the CPU: one compiled shape, loud recompiles, CUDA-safe determinism,
the optimiser kernel choice, per-device RNG state and the transform's output dtype."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch._dynamo.utils import counters

from archbench import train
from archbench.config import RunRequest
from archbench.data import resolve
from archbench.data.loader import transform_batch
from archbench.devices import (
    DeterministicAdaptiveAvgPool2d,
    make_deterministic,
    make_sgd,
    needs_deterministic_pooling,
    rng_state,
    set_rng_state,
    sgd_implementation,
)
from archbench.distributed import DistContext
from archbench.errors import ArchbenchError
from archbench.registry import get_entry, list_models
from archbench.train import build_training, compile_model, plan_runs, run_models

ROOT = Path(__file__).resolve().parent.parent


def tiny_request(tiny_registry, tiny_data, out, **kw) -> RunRequest:
    settings = dict(
        models=["tiny_resnet"],
        data=str(tiny_data),
        preset="smoke",
        epochs=2,
        batch_size=20,
        image_size=32,
        device="cpu",
        out=out,
        quiet=True,
        registry=tiny_registry,
    )
    return RunRequest(**{**settings, **kw})


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
            optimizer = make_sgd(
                model.parameters(), lr=0.01, momentum=0.9, weight_decay=0, nesterov=False, implementation="foreach"
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
    assert sgd_implementation(torch.device(device), precision) == expected


def test_the_sgd_kernel_is_the_one_recorded(tiny_registry, tiny_data, tmp_path):
    (summary,) = run_models(tiny_request(tiny_registry, tiny_data, tmp_path, epochs=1))
    config = json.loads((tmp_path / "tiny_resnet" / summary["run_id"] / "config.json").read_text())
    assert config["optimizer"] == "foreach"
    params = [nn.Parameter(torch.zeros(3))]
    assert (
        make_sgd(params, lr=0.1, momentum=0.9, weight_decay=0, nesterov=False, implementation="fused").defaults["fused"]
        is True
    )
    assert (
        make_sgd(params, lr=0.1, momentum=0.9, weight_decay=0, nesterov=False, implementation="foreach").defaults[
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
    """`bash benchmarks/gpu.sh --cpu-check` runs every step of the GPU script on the CPU."""
    out = tmp_path / "gpu"
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu.sh"), "--cpu-check", str(out)],
        env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin", "ARCHBENCH_CACHE": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((out / "gpu-results.json").read_text())
    assert results["cpu_check"] is True and results["device"] == "cpu"
    assert {row["model"] for row in results["loop"]} == {"resnet18", "vgg16_bn"}
    for row in results["loop"]:
        assert row["status"] == "completed" and row["epoch2_images_per_s"] > 0 and row["compile_seconds"] > 0
    assert all(row["train_images_per_s"] > 0 for row in results["model_only"])
    assert len(results["goals"]) == 4
