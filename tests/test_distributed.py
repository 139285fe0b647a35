"""The same loop under torchrun (DDP, gloo on the CPU) and the one-model-per-GPU sweep (`--gpus`)."""

from __future__ import annotations

import csv
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from archbench import distributed, launch
from archbench.config import RunRequest
from archbench.errors import ArchbenchError
from archbench.runs import TIMING_COLUMNS
from archbench.study import run_models

TRAIN_SIZE = 4 * 24  # tiny_data: 4 classes x 24 images


def read_csv(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def only_run(out: Path, model: str = "tiny_resnet") -> Path:
    (run,) = [p for p in (out / model).iterdir() if p.is_dir()]
    return run


def archbench_run(registry, tiny_data, out, *extra, nproc: int | None = None, model: str = "tiny_resnet") -> list[str]:
    prefix = (
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            str(nproc),
            "-m",
            "archbench",
        ]
        if nproc
        else [sys.executable, "-m", "archbench"]
    )
    return [
        *prefix,
        "run",
        model,
        "--data",
        str(tiny_data),
        "--preset",
        "smoke",
        "--image-size",
        "32",
        "--device",
        "cpu",
        "--deterministic",
        "--quiet",
        "--registry",
        str(registry),
        "--out",
        str(out),
        *extra,
    ]


# Beside the shared tiny models: one without BN and dropout, whose training over two ranks at batch B is the
# same computation as one process at batch 2B (each rank's BN statistics and dropout masks are its own), and
# one with both, whose resume must restore every rank's dropout stream and rank 0's BN statistics.
DIST_MODELS = {
    "tiny_vgg_flat": """
description = "tiny_vgg without dropout, for tests"
builder = "vgg"
[args]
config = [8, "M", 16, "M", 16, "M"]
batch_norm = false
hidden = 32
dropout = 0.0
pool_size = 1
""",
    "tiny_vgg_bn": """
description = "tiny_vgg with BN and dropout, for tests"
builder = "vgg"
[args]
config = [8, "M", 16, "M", 16, "M"]
batch_norm = true
hidden = 32
dropout = 0.5
pool_size = 1
""",
}


@pytest.fixture(scope="module")
def dist_registry(tiny_registry, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("dist-registry")
    for toml in tiny_registry.glob("*.toml"):
        shutil.copy(toml, folder)
    for name, text in DIST_MODELS.items():
        (folder / f"{name}.toml").write_text(text.lstrip())
    return folder


def comparable(run: Path) -> tuple[list, list]:
    """metrics.csv without the timing columns, and gradnorms.csv."""
    metrics = [{k: v for k, v in row.items() if k not in TIMING_COLUMNS} for row in read_csv(run / "metrics.csv")]
    return metrics, read_csv(run / "gradnorms.csv")


ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants (torchrun starts its workers in sessions of their own)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(parents.get(p, []))
    return tree


def test_two_ranks_train_on_disjoint_halves_like_one_process_at_twice_the_batch(dist_registry, tiny_data, tmp_path):
    """Without BN and dropout, two ranks at batch 8 are one process at batch 16: the ranks' shards are the two
    halves of each global batch and DDP averages their gradients. Ranks that trained on the same half, or
    on overlapping ones, would average other gradients from the first step on.

    Tolerance: 1e-5 relative on losses and gradient norms (float reduction order); accuracies and sample
    counts identical.
    """
    one, two = tmp_path / "one", tmp_path / "two"
    for out, extra, nproc in ((one, ["--batch-size", "16"], None), (two, ["--batch-size", "8"], 2)):
        done = subprocess.run(
            archbench_run(dist_registry, tiny_data, out, "--epochs", "2", *extra, nproc=nproc, model="tiny_vgg_flat"),
            env=ENV,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-3000:]
    run = only_run(two, "tiny_vgg_flat")  # rank 0 alone writes: one run, not two
    config = json.loads((run / "config.json").read_text())
    assert config["world_size"] == 2 and config["recipe"]["global_batch_size"] == 16
    assert json.loads((run / "summary.json").read_text())["status"] == "completed"
    a, b = read_csv(only_run(one, "tiny_vgg_flat") / "metrics.csv"), read_csv(run / "metrics.csv")
    assert [int(r["train_samples"]) for r in b] == [TRAIN_SIZE, TRAIN_SIZE]
    for ra, rb in zip(a, b, strict=True):
        for key in ("train_loss", "test_loss", "lr"):
            assert float(rb[key]) == pytest.approx(float(ra[key]), rel=1e-5), key
        for key in ("train_acc", "test_acc", "train_samples", "images_seen"):
            assert rb[key] == ra[key], key
    ga, gb = read_csv(only_run(one, "tiny_vgg_flat") / "gradnorms.csv"), read_csv(run / "gradnorms.csv")
    assert [(g["step"], g["layer"]) for g in ga] == [(g["step"], g["layer"]) for g in gb]
    for key in ("grad_norm", "weight_norm", "cosine_to_previous"):
        assert [float(g[key]) for g in gb] == pytest.approx(
            [float(g[key]) for g in ga], rel=1e-5, abs=1e-7, nan_ok=True
        ), key


def test_sync_bn_two_ranks_match_one_process_at_twice_the_batch(tiny_registry, tiny_data, tmp_path):
    """Same global batches, SyncBN, gradients averaged: the curves agree up to float reduction order.

    Tolerance: 1e-4 relative on losses and gradient norms after 2 epochs (12 steps) of float32
    training; accuracies must be identical, since they count whole images.
    """
    one, two = tmp_path / "one", tmp_path / "two"
    for out, extra, nproc in ((one, ["--batch-size", "16"], None), (two, ["--batch-size", "8", "--sync-bn"], 2)):
        done = subprocess.run(
            archbench_run(tiny_registry, tiny_data, out, "--epochs", "2", *extra, nproc=nproc),
            env=ENV,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-3000:]
    a, b = read_csv(only_run(one) / "metrics.csv"), read_csv(only_run(two) / "metrics.csv")
    for ra, rb in zip(a, b, strict=True):
        for key in ("train_loss", "test_loss", "lr"):
            assert float(rb[key]) == pytest.approx(float(ra[key]), rel=1e-4), key
        for key in ("train_acc", "test_acc", "train_samples"):
            assert rb[key] == ra[key], key
    ga, gb = read_csv(only_run(one) / "gradnorms.csv"), read_csv(only_run(two) / "gradnorms.csv")
    assert [g["layer"] for g in ga] == [g["layer"] for g in gb]
    assert [float(g["grad_norm"]) for g in gb] == pytest.approx([float(g["grad_norm"]) for g in ga], rel=1e-4)


SYNC_BN_RANK = """
import sys

import torch
import torch.distributed as dist

from archbench.distributed import GlooSyncBatchNorm

dist.init_process_group("gloo")
rank = dist.get_rank()
x, upstream, weight, bias = torch.load(sys.argv[1], weights_only=True)
bn = GlooSyncBatchNorm(3)
with torch.no_grad():
    bn.weight.copy_(weight)
    bn.bias.copy_(bias)
half = slice(2 * rank, 2 * rank + 2)
part = x[half].clone().requires_grad_()
out = bn(part)
(out * upstream[half]).sum().backward()
torch.save({"out": out.detach(), "grad_x": part.grad, "grad_weight": bn.weight.grad, "grad_bias": bn.bias.grad,
            "running_mean": bn.running_mean, "running_var": bn.running_var}, f"{sys.argv[2]}{rank}.pt")
dist.destroy_process_group()
"""


def test_gloo_sync_bn_over_two_ranks_is_batch_norm_over_the_whole_batch(tmp_path):
    """Each rank holds half of a batch of 4; outputs, input gradients (through the other rank's statistics),
    summed parameter gradients and running statistics (unbiased variance) equal nn.BatchNorm2d's on all 4."""
    generator = torch.Generator().manual_seed(0)
    x, upstream = torch.randn(2, 4, 3, 3, 3, generator=generator) * 2 + 1
    weight, bias = torch.rand(3, generator=generator) + 0.5, torch.randn(3, generator=generator)
    torch.save((x, upstream, weight, bias), tmp_path / "inputs.pt")
    (tmp_path / "rank.py").write_text(SYNC_BN_RANK)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            str(tmp_path / "rank.py"),
            str(tmp_path / "inputs.pt"),
            str(tmp_path / "rank"),
        ],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]

    reference = torch.nn.BatchNorm2d(3)
    with torch.no_grad():
        reference.weight.copy_(weight)
        reference.bias.copy_(bias)
    whole = x.clone().requires_grad_()
    out = reference(whole)
    (out * upstream).sum().backward()
    close = dict(rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.cat([r["out"] for r in ranks]), out.detach(), **close)
    torch.testing.assert_close(torch.cat([r["grad_x"] for r in ranks]), whole.grad, **close)
    torch.testing.assert_close(ranks[0]["grad_weight"] + ranks[1]["grad_weight"], reference.weight.grad, **close)
    torch.testing.assert_close(ranks[0]["grad_bias"] + ranks[1]["grad_bias"], reference.bias.grad, **close)
    for r in ranks:
        torch.testing.assert_close(r["running_mean"], reference.running_mean, **close)
        torch.testing.assert_close(r["running_var"], reference.running_var, **close)


def test_a_killed_two_rank_job_resumes_to_the_uninterrupted_records(dist_registry, tiny_data, tmp_path):
    """Kill both ranks and the launcher after an epoch, rerun the command: the resumed run's metrics (less the
    timing columns) and gradient records equal an uninterrupted two-rank run's exactly (--deterministic).
    The model has BN (rank 0's statistics are checkpointed and evaluated) and dropout (each rank draws its own
    masks, so each rank's RNG state must come back to it); the gradient records span the resume (all 48 steps)."""

    def command(out):
        return archbench_run(
            dist_registry, tiny_data, out, "--epochs", "4", "--batch-size", "4", nproc=2, model="tiny_vgg_bn"
        )

    straight = subprocess.run(command(tmp_path / "straight"), env=ENV, capture_output=True, text=True, timeout=300)
    assert straight.returncode == 0, straight.stderr[-3000:]

    out = tmp_path / "killed"
    proc = subprocess.Popen(command(out), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not list(out.glob("tiny_vgg_bn/*/checkpoint.pt")):
        assert proc.poll() is None and time.monotonic() < deadline, "job ended before it could be killed"
        time.sleep(0.05)
    for pid in reversed(process_tree(proc.pid)):  # both ranks, then the launcher
        os.kill(pid, signal.SIGKILL)
    proc.wait()
    run = only_run(out, "tiny_vgg_bn")
    killed_at = torch.load(run / "checkpoint.pt", weights_only=True)["epoch"]  # the record may be one ahead
    assert 1 <= killed_at < 4

    done = subprocess.run(command(out), env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"resuming after step {killed_at * 12}" in done.stdout  # 48 images per rank / batch 4
    assert only_run(out, "tiny_vgg_bn") == run
    assert json.loads((run / "summary.json").read_text())["status"] == "completed"
    resumed, uninterrupted = comparable(run), comparable(only_run(tmp_path / "straight", "tiny_vgg_bn"))
    assert [int(r["epoch"]) for r in resumed[0]] == [1, 2, 3, 4]
    assert {int(g["step"]) for g in resumed[1]} == set(range(48))  # every step, before and after the resume
    assert resumed == uninterrupted


def test_gpus_runs_each_job_on_one_gpu_and_queues_the_rest(tiny_registry, tiny_data, tmp_path, monkeypatch):
    """Two GPUs (as a scheduler shows them: CUDA_VISIBLE_DEVICES=6,7), four jobs. `gpu_slot` chooses each
    child's GPU as it would on a GPU machine; only the child's --device becomes cpu. Every child is recorded
    with the GPU it was given and when it ran: each job once, on one GPU; both GPUs busy at once; never two
    jobs at a time on one GPU."""
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "6,7")
    real_slot, real_popen = launch.gpu_slot, subprocess.Popen
    monkeypatch.setattr(launch, "gpu_slot", lambda gpu: (real_slot(gpu)[0], "cpu"))
    children = []

    class RecordedPopen(real_popen):
        def __init__(self, args, env, **kwargs):
            super().__init__(args, env=env, **kwargs)
            sent = json.loads(Path(args[-1]).read_text())["request"]  # the job file
            self.record = {
                "job": (*sent["models"], *sent["seeds"]),
                "gpu": env["CUDA_VISIBLE_DEVICES"],
                "start": time.monotonic(),
            }
            children.append(self.record)

        def wait(self, *args, **kwargs):
            code = super().wait(*args, **kwargs)
            self.record.setdefault("end", time.monotonic())
            return code

    monkeypatch.setattr(
        launch, "subprocess", SimpleNamespace(Popen=RecordedPopen, PIPE=subprocess.PIPE, STDOUT=subprocess.STDOUT)
    )
    results = run_models(
        RunRequest(
            models=["tiny_resnet", "tiny_plain"],
            seeds=[0, 1],
            gpus="0,1",
            data=str(tiny_data),
            preset="smoke",
            epochs=1,
            batch_size=16,
            image_size=32,
            out=tmp_path,
            registry=tiny_registry,
        )
    )
    jobs = [("tiny_plain", 0), ("tiny_plain", 1), ("tiny_resnet", 0), ("tiny_resnet", 1)]
    assert sorted(child["job"] for child in children) == jobs
    assert {child["gpu"] for child in children} == {"6", "7"}  # one GPU each, and both GPUs used
    for first, second in itertools.combinations(children, 2):
        overlap = first["start"] < second["end"] and second["start"] < first["end"]
        assert not (overlap and first["gpu"] == second["gpu"]), (first, second)
    assert any(a["start"] < b["end"] and b["start"] < a["end"] for a, b in itertools.combinations(children, 2))
    assert (
        sorted(
            (r["model"], json.loads((tmp_path / r["model"] / r["run_id"] / "config.json").read_text())["seed"])
            for r in results
        )
        == jobs
    )
    assert all(r["status"] == "completed" for r in results)


def test_gpus_refuses_a_gpu_this_machine_lacks(tiny_registry, tiny_data, tmp_path):
    from archbench.errors import ArchbenchError

    with pytest.raises(ArchbenchError, match="visible CUDA device"):
        run_models(
            RunRequest(
                models=["tiny_resnet"],
                gpus="7",
                data=str(tiny_data),
                preset="smoke",
                out=tmp_path,
                registry=tiny_registry,
            )
        )


def test_the_job_file_carries_the_request(tmp_path):
    req = RunRequest(
        models=["a", "vgg11"],
        seeds=[1, 2],
        data="synthetic",
        preset="smoke",
        epochs=3,
        thresholds=[0.2, 0.4],
        compile=True,
        channels_last=False,
        out=Path("runs"),
        gpus="0",
    )
    job_file = launch.write_job(launch.jobs_of([req])[-1], tmp_path / "job.json", "cuda")
    assert launch.job_command(job_file) == [sys.executable, "-m", "archbench.study", str(job_file)]
    sent = RunRequest(**json.loads(job_file.read_text())["request"])
    expected = {"models": ["vgg11"], "seeds": [2], "device": "cuda", "gpus": None, "quiet": True}
    assert sent == RunRequest(**{**vars(req), **expected, "out": Path("runs").resolve()})  # any folder reads it


def test_gpu_ids_index_the_gpus_this_process_sees(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")
    assert launch.gpu_slot("1") == ({"CUDA_VISIBLE_DEVICES": "5"}, "cuda")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert launch.gpu_slot("1") == ({"CUDA_VISIBLE_DEVICES": "1"}, "cuda")


def test_gpus_refuses_a_gpu_named_twice(tiny_registry, tiny_data, tmp_path, monkeypatch):
    from archbench.errors import ArchbenchError

    monkeypatch.setattr(launch, "gpu_slot", lambda gpu: ({}, "cpu"))
    with pytest.raises(ArchbenchError, match="twice"):
        run_models(
            RunRequest(
                models=["tiny_resnet"],
                gpus="0,0",
                data=str(tiny_data),
                preset="smoke",
                out=tmp_path,
                registry=tiny_registry,
            )
        )


@pytest.mark.parametrize("text", ["abc", "0", "-5", "inf", "nan", ""])
def test_a_bad_collective_timeout_is_one_line_before_joining(monkeypatch, text):
    monkeypatch.setenv("ARCHBENCH_DIST_TIMEOUT", text)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ArchbenchError, match="ARCHBENCH_DIST_TIMEOUT"):
        distributed.from_environment("cpu")
    assert not torch.distributed.is_initialized()


def test_the_collective_timeout_is_read_in_seconds(monkeypatch):
    monkeypatch.setenv("ARCHBENCH_DIST_TIMEOUT", "90")
    assert distributed.collective_timeout().total_seconds() == 90
    monkeypatch.delenv("ARCHBENCH_DIST_TIMEOUT")
    assert distributed.collective_timeout().total_seconds() == distributed.DEFAULT_TIMEOUT_S
