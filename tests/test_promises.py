"""Documented promises of the training loop and the device choices, each against an outside oracle.

- gradient norms are recorded before clipping: a second, plain implementation of the first steps (torch's
  SGD and clip_grad_norm_, the warm-up and cosine written out by hand) recomputes every gradnorms.csv
  column from the run's initial weights and batches;
- the smoke preset warms up over half an epoch: the schedule against the formula, step by step;
- bf16 runs under autocast and fp16 with an enabled GradScaler whose scale never reaches the records;
- a non-finite loss is recorded at the step it happened (a model built to fail at a known step) and
  `archbench run` then exits with code 3;
- the choices made only on a GPU (precision `auto`, channels_last, SyncBatchNorm, the fused SGD kernel)
  with torch.cuda's answers replaced, so no GPU is needed.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_run_request
from torch import nn
from typer.testing import CliRunner

from archbench import train
from archbench.cli import app
from archbench.config import PRESETS
from archbench.data import resolve
from archbench.data.loader import DeviceLoader
from archbench.devices import optimizer_kernel, resolve_channels_last, resolve_device, resolve_precision
from archbench.distributed import GlooSyncBatchNorm, convert_sync_batchnorm
from archbench.errors import DIVERGED_EXIT
from archbench.registry import build_model
from archbench.study import plan_runs, run_models
from archbench.train import lr_lambda

runner = CliRunner()
CUDA = torch.device("cuda", 0)
CPU = torch.device("cpu")


request = tiny_run_request


def read_csv(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def only_run(out: Path, model: str) -> Path:
    (run,) = [p for p in (out / model).iterdir() if p.is_dir()]
    return run


@pytest.fixture
def built(monkeypatch) -> list[train.Training]:
    """Every `Training` the loop builds, as it builds it (before its first step)."""
    trainings = []
    real = train.build_training

    def spy(model, config, data, *args, **kwargs):
        t = real(model, config, data, *args, **kwargs)
        t.initial_state, t.config, t.data = copy.deepcopy(t.model.state_dict()), config, data
        trainings.append(t)
        return t

    monkeypatch.setattr(train, "build_training", spy)
    return trainings


# ------------------------------------------------------------------------------------------ the schedule


def test_the_smoke_preset_warms_up_over_half_an_epoch():
    recipe = PRESETS["smoke"].recipe
    assert recipe.warmup_epochs == 0.5
    steps_per_epoch = 10  # warm-up: the first 5 steps
    factor = lr_lambda(recipe, steps_per_epoch)
    warm, total = 5, recipe.epochs * steps_per_epoch
    for step in range(total):
        expected = (step + 1) / warm if step < warm else 0.5 * (1 + math.cos(math.pi * (step - warm) / (total - warm)))
        assert factor(step) == pytest.approx(expected, abs=1e-12), step


# ------------------------------------------------------------------------------------------ gradient records


def reference_records(t: train.Training, steps: int) -> list[dict]:
    """The first `steps` rows of gradnorms.csv, computed from the run's initial weights by a plain loop:
    torch's SGD (no foreach), torch's clip_grad_norm_, the warm-up and cosine written out, each gradient
    read before clipping and each weight before the step."""
    model = copy.deepcopy(t.model)
    model.load_state_dict(t.initial_state)
    model.train()
    config, data = t.config, t.data
    recipe = config.recipe
    optimizer = torch.optim.SGD(
        model.parameters(), lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay, foreach=False
    )
    loader = DeviceLoader(
        data.train_images,
        data.train_labels,
        batch_size=recipe.batch_size,
        image_size=config.image_size,
        train=True,
        device="cpu",
        seed=config.seed,
        **data.transform,
    )
    per_epoch = len(loader)
    warm, total = recipe.warmup_epochs * per_epoch, recipe.epochs * per_epoch
    assert warm == int(warm)  # the test's numbers make the warm-up a whole number of steps

    def rate(step: int) -> float:
        if step < warm:
            return recipe.lr * (step + 1) / warm
        return recipe.lr * 0.5 * (1 + math.cos(math.pi * (step - warm) / (total - warm)))

    layers = [(name, m.weight) for name, m in model.named_modules() if type(m) in (nn.Conv2d, nn.Linear)]
    rows, previous, step = [], None, 0
    for epoch in range(recipe.epochs):
        loader.set_epoch(epoch)
        for x, y in loader:
            if step == steps:
                return rows
            for group in optimizer.param_groups:
                group["lr"] = rate(step)
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            grads = [w.grad.detach().clone() for _, w in layers]
            for i, ((name, w), g) in enumerate(zip(layers, grads)):
                cosine = (
                    math.nan
                    if previous is None
                    else float(  # 0 where either gradient is zero
                        (g * previous[i]).sum() / max(float(g.norm() * previous[i].norm()), 1e-30)
                    )
                )
                rows.append(
                    {
                        "step": step,
                        "layer": name,
                        "layer_index": i,
                        "grad_norm": float(g.norm()),
                        "weight_norm": float(w.detach().norm()),
                        "grad_rms": float(g.norm() / g.numel() ** 0.5),
                        "grad_to_weight": float(g.norm() / w.detach().norm()),
                        "cosine_to_previous": cosine,
                        "total_norm": float(torch.cat([p.grad.flatten() for p in model.parameters()]).norm()),
                    }
                )
            previous = grads
            if recipe.clip_grad_norm:
                torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.clip_grad_norm)
            optimizer.step()
            step += 1
    return rows


def test_gradient_records_are_the_true_gradient_before_clipping(tiny_registry, tiny_data, tmp_path, built):
    """Clipped hard (to 0.05), so a record taken after clipping, or a weight read after the step, differs."""
    steps, clip = 12, 0.05  # two epochs of 6 steps; the half-epoch warm-up is 3 steps
    run_models(request(tiny_registry, tiny_data, tmp_path, clip_grad_norm=clip, gradnorm_steps=steps))
    (t,) = built
    config = json.loads((only_run(tmp_path, "tiny_resnet") / "config.json").read_text())
    assert config["recipe"]["warmup_epochs"] == 0.5 and config["recipe"]["clip_grad_norm"] == clip
    expected = reference_records(t, steps)
    assert sum(row["total_norm"] > 2 * clip for row in expected[:: len(t.gradients.layers)]) >= steps // 2

    recorded = read_csv(only_run(tmp_path, "tiny_resnet") / "gradnorms.csv")
    assert [(int(r["step"]), r["layer"], int(r["layer_index"])) for r in recorded] == [
        (r["step"], r["layer"], r["layer_index"]) for r in expected
    ]
    for got, want in zip(recorded, expected):
        where = (want["step"], want["layer"])
        for key in ("grad_norm", "weight_norm", "grad_rms", "grad_to_weight"):
            assert float(got[key]) == pytest.approx(want[key], rel=1e-4, abs=1e-9), (where, key)
        if math.isnan(want["cosine_to_previous"]):
            assert math.isnan(float(got["cosine_to_previous"])), where
        else:
            assert float(got["cosine_to_previous"]) == pytest.approx(want["cosine_to_previous"], abs=1e-4), where


# ------------------------------------------------------------------------------------------ precision


def _layer_calls(t: train.Training) -> list[tuple[bool, bool, torch.dtype, torch.dtype]]:
    """(training, autocast on, autocast dtype, output dtype) of every conv and linear call from now on."""
    calls = []

    def hook(module, inputs, output):
        calls.append((module.training, torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"), output.dtype))

    for m in t.model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            m.register_forward_hook(hook)
    return calls


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_bf16_trains_and_evaluates_under_autocast_and_fp32_never(
    tiny_registry, tiny_data, tmp_path, monkeypatch, precision
):
    calls = []
    real = train.build_training

    def spy(*args, **kwargs):
        t = real(*args, **kwargs)
        calls.append(_layer_calls(t))
        return t

    monkeypatch.setattr(train, "build_training", spy)
    (summary,) = run_models(request(tiny_registry, tiny_data, tmp_path, epochs=1, precision=precision))
    assert summary["status"] == "completed"
    (seen,) = calls
    assert {training for training, *_ in seen} == {True, False}  # training steps and evaluation
    if precision == "bf16":
        assert all(on and dtype == torch.bfloat16 and out == torch.bfloat16 for _, on, dtype, out in seen)
    else:
        assert not any(on for _, on, _, _ in seen) and {out for *_, out in seen} == {torch.float32}


def test_fp16_scales_the_loss_and_records_the_unscaled_gradient(tiny_registry, tiny_data, tmp_path, built):
    """The GradScaler is on under fp16 (off otherwise), and the recorded norms are of the true gradient:
    at step 0 within a factor of 2 of an fp32 run's, where a record of the scaled one would be 65536x."""
    norms = {}
    for precision in ("fp16", "fp32"):
        out = tmp_path / precision
        run_models(
            request(tiny_registry, tiny_data, out, epochs=1, precision=precision, clip_grad_norm=0, gradnorm_steps=1)
        )
        rows = read_csv(only_run(out, "tiny_resnet") / "gradnorms.csv")
        norms[precision] = math.sqrt(sum(float(r["grad_norm"]) ** 2 for r in rows))
    fp16, fp32 = built
    assert fp16.scaler.is_enabled() and fp16.scaler.get_scale() >= 2**10
    assert not fp32.scaler.is_enabled()
    assert 0.5 < norms["fp16"] / norms["fp32"] < 2, norms


# ------------------------------------------------------------------------------------------ divergence

NAN_AT = '''
from torch import nn


class NanAt(nn.Module):
    """A small conv net whose training forward returns NaN logits from its `at`-th call (0-based) on."""

    def __init__(self, num_classes, at):
        super().__init__()
        self.at, self.calls = at, 0
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, num_classes)

    def forward(self, x):
        out = self.fc(self.conv(x).mean((2, 3)))
        if self.training:
            if self.calls >= self.at:
                out = out * float("nan")
            self.calls += 1
        return out
'''


@pytest.fixture
def failing_registry(tiny_registry, tmp_path) -> Path:
    """tiny_resnet, and nan_at: a model whose loss is first non-finite at step 8 (epoch 2 of 6-step epochs)."""
    folder = tmp_path / "registry"
    folder.mkdir()
    shutil.copy(tiny_registry / "tiny_resnet.toml", folder)
    (folder / "nan_at.py").write_text(NAN_AT)
    (folder / "nan_at.toml").write_text(
        'description = "NaN from step 8"\nbuilder = "python"\n[args]\ntarget = "nan_at.py:NanAt"\nat = 8\n'
    )
    return folder


def test_divergence_is_recorded_at_the_step_it_happened_and_exits_3(failing_registry, tiny_data, tmp_path):
    out = tmp_path / "runs"
    result = runner.invoke(
        app,
        [
            "run",
            "nan_at",
            "tiny_resnet",
            "--data",
            str(tiny_data),
            "--preset",
            "smoke",
            "--epochs",
            "2",
            "--batch-size",
            "16",
            "--image-size",
            "32",
            "--device",
            "cpu",
            "--quiet",
            "--registry",
            str(failing_registry),
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == DIVERGED_EXIT == 3, result.output
    diverged = json.loads((only_run(out, "nan_at") / "summary.json").read_text())
    assert diverged["status"] == "diverged" and diverged["diverged_at_step"] == 8
    assert diverged["epochs_completed"] == 1 and len(read_csv(only_run(out, "nan_at") / "metrics.csv")) == 1
    completed = json.loads((only_run(out, "tiny_resnet") / "summary.json").read_text())
    assert completed["status"] == "completed"  # the next model still ran

    again = runner.invoke(
        app,
        [
            "run",
            "tiny_resnet",
            "--data",
            str(tiny_data),
            "--preset",
            "smoke",
            "--epochs",
            "2",
            "--batch-size",
            "16",
            "--image-size",
            "32",
            "--device",
            "cpu",
            "--quiet",
            "--registry",
            str(failing_registry),
            "--out",
            str(out),
        ],
    )
    assert again.exit_code == 0, again.output  # every run completed (here: recorded already)


# ------------------------------------------------------------------------------------------ GPU-only choices


@pytest.fixture
def a_gpu(monkeypatch):
    """torch.cuda says a GPU with 80 GiB free is there; the test sets whether it supports bf16 with `a_gpu(bf16)`."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *args: (80 << 30, 80 << 30))

    def set_bf16(supported: bool) -> None:
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: supported)

    set_bf16(True)
    return set_bf16


@pytest.mark.parametrize("bf16, expected", [(True, "bf16"), (False, "fp32")])
def test_precision_auto_is_bf16_where_the_gpu_supports_it_else_fp32(a_gpu, bf16, expected):
    a_gpu(bf16)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_precision("auto", torch.device("cuda")) == expected
    assert resolve_precision("auto", CPU) == "fp32"
    for explicit in ("fp32", "bf16", "fp16"):
        assert resolve_precision(explicit, torch.device("cuda")) == explicit


def test_channels_last_is_on_by_default_for_cuda_only():
    assert resolve_channels_last(None, CUDA) is True
    assert resolve_channels_last(None, CPU) is False
    assert resolve_channels_last(False, CUDA) is False and resolve_channels_last(True, CPU) is True


@pytest.mark.parametrize(
    "bf16, precision, expected",
    [
        (True, "auto", ("bf16", True, "fused")),
        (False, "auto", ("fp32", True, "fused")),
        (True, "fp16", ("fp16", True, "foreach")),
    ],
)
def test_a_cuda_run_resolves_precision_memory_format_and_sgd_kernel(
    a_gpu, tiny_registry, tiny_data, tmp_path, bf16, precision, expected
):
    """What a run on a CUDA device would record in config.json, resolved by the loop's own planning."""
    a_gpu(bf16)
    req = request(tiny_registry, tiny_data, tmp_path, precision=precision)
    (plan,) = plan_runs(req, resolve(str(tiny_data)), None, CUDA, 1)
    assert (plan.config.precision, plan.config.channels_last, plan.config.optimizer_kernel) == expected
    assert plan.config.device == "cuda"
    (on_cpu,) = plan_runs(req, resolve(str(tiny_data)), None, CPU, 1)
    assert (on_cpu.config.channels_last, on_cpu.config.optimizer_kernel) == (False, "foreach")
    assert on_cpu.config.precision == ("fp32" if precision == "auto" else precision)


def test_the_fused_sgd_kernel_is_cudas_except_under_fp16():
    assert [optimizer_kernel(CUDA, p) for p in ("fp32", "bf16", "fp16")] == ["fused", "fused", "foreach"]
    assert {optimizer_kernel(CPU, p) for p in ("fp32", "bf16", "fp16")} == {"foreach"}


def _batch_norms(model: nn.Module) -> list[type]:
    return [type(m) for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def test_sync_bn_is_pytorchs_on_cuda_and_the_gloo_one_on_the_cpu(tiny_registry):
    model = build_model("tiny_resnet", registry=tiny_registry, num_classes=4)
    count = len(_batch_norms(model))
    assert count > 0
    assert _batch_norms(convert_sync_batchnorm(copy.deepcopy(model), CUDA)) == [nn.SyncBatchNorm] * count
    on_cpu = convert_sync_batchnorm(copy.deepcopy(model), CPU)
    assert _batch_norms(on_cpu) == [GlooSyncBatchNorm] * count
    before, after = model.state_dict(), on_cpu.state_dict()  # the converted layers keep their values
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
