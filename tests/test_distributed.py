"""The same loop under torchrun (DDP, gloo on the CPU) and the one-model-per-GPU sweep (`--gpus`)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from archbench import launch
from archbench.train import RunRequest, run_models

TRAIN_SIZE = 4 * 24  # tiny_data: 4 classes x 24 images


def read_csv(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def only_run(out: Path, model: str = "tiny_resnet") -> Path:
    (run,) = [p for p in (out / model).iterdir() if p.is_dir()]
    return run


def archbench_run(tiny_registry, tiny_data, out, *extra, nproc: int | None = None) -> list[str]:
    prefix = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
              "-m", "archbench"] if nproc else [sys.executable, "-m", "archbench"]
    return [*prefix, "run", "tiny_resnet", "--data", str(tiny_data), "--preset", "smoke", "--image-size", "32",
            "--device", "cpu", "--deterministic", "--quiet", "--registry", str(tiny_registry), "--out", str(out), *extra]


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


def test_two_ranks_see_the_training_split_once_per_epoch(tiny_registry, tiny_data, tmp_path):
    done = subprocess.run(archbench_run(tiny_registry, tiny_data, tmp_path, "--epochs", "2", "--batch-size", "8", nproc=2),
                          env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    run = only_run(tmp_path)  # rank 0 alone writes: one run, not two
    config = json.loads((run / "config.json").read_text())
    assert config["world_size"] == 2 and config["recipe"]["global_batch_size"] == 16
    assert [int(r["train_samples"]) for r in read_csv(run / "metrics.csv")] == [TRAIN_SIZE, TRAIN_SIZE]
    assert json.loads((run / "summary.json").read_text())["status"] == "completed"


def test_sync_bn_two_ranks_match_one_process_at_twice_the_batch(tiny_registry, tiny_data, tmp_path):
    """Same global batches, SyncBN, gradients averaged: the curves agree up to float reduction order.

    Tolerance: 1e-4 relative on losses and gradient norms after 2 epochs (12 steps) of float32
    training; accuracies must be identical, since they count whole images.
    """
    one, two = tmp_path / "one", tmp_path / "two"
    for out, extra, nproc in ((one, ["--batch-size", "16"], None), (two, ["--batch-size", "8", "--sync-bn"], 2)):
        done = subprocess.run(archbench_run(tiny_registry, tiny_data, out, "--epochs", "2", *extra, nproc=nproc),
                              env=ENV, capture_output=True, text=True, timeout=300)
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


def test_a_killed_two_rank_job_resumes_from_its_checkpoint(tiny_registry, tiny_data, tmp_path):
    cmd = archbench_run(tiny_registry, tiny_data, tmp_path, "--epochs", "4", "--batch-size", "4", nproc=2)
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not list(tmp_path.glob("tiny_resnet/*/checkpoint.pt")):
        assert proc.poll() is None and time.monotonic() < deadline, "job ended before it could be killed"
        time.sleep(0.05)
    for pid in reversed(process_tree(proc.pid)):  # both ranks, then the launcher
        os.kill(pid, signal.SIGKILL)
    proc.wait()
    run = only_run(tmp_path)
    killed_at = torch.load(run / "checkpoint.pt", weights_only=True)["epoch"]  # the record may be one ahead
    assert 1 <= killed_at < 4

    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"resuming after step {killed_at * 12}" in done.stdout  # 48 images per rank / batch 4
    assert only_run(tmp_path) == run
    metrics = read_csv(run / "metrics.csv")
    assert [int(r["epoch"]) for r in metrics] == [1, 2, 3, 4]
    assert json.loads((run / "summary.json").read_text())["status"] == "completed"


def test_gpus_runs_one_process_per_job_and_queues_the_rest(tiny_registry, tiny_data, tmp_path, monkeypatch):
    chosen = []

    def cpu_slot(gpu):  # where a CUDA device would be chosen: hand the child the CPU instead
        chosen.append(gpu)
        return {"ARCHBENCH_TEST_GPU": gpu}, "cpu"

    monkeypatch.setattr(launch, "gpu_slot", cpu_slot)
    results = run_models(RunRequest(
        models=["tiny_resnet", "tiny_plain"], seeds=[0, 1], gpus="0,1", data=str(tiny_data), preset="smoke",
        epochs=1, batch_size=16, image_size=32, out=tmp_path, registry=tiny_registry,
    ))
    assert sorted(chosen) == ["0", "1"]
    assert sorted((r["model"], json.loads((tmp_path / r["model"] / r["run_id"] / "config.json").read_text())["seed"])
                  for r in results) == [("tiny_plain", 0), ("tiny_plain", 1), ("tiny_resnet", 0), ("tiny_resnet", 1)]
    assert all(r["status"] == "completed" for r in results)


def test_gpus_refuses_a_gpu_this_machine_lacks(tiny_registry, tiny_data, tmp_path):
    from archbench.errors import ArchbenchError

    with pytest.raises(ArchbenchError, match="visible CUDA device"):
        run_models(RunRequest(models=["tiny_resnet"], gpus="7", data=str(tiny_data), preset="smoke",
                              out=tmp_path, registry=tiny_registry))


def test_child_command_carries_the_request():
    req = RunRequest(models=["a"], data="synthetic", preset="smoke", epochs=3, thresholds=[0.2, 0.4], compile=True,
                     channels_last=False, out=Path("runs"), gpus="0")
    args = launch.child_args(req, "vgg11", 2, "cuda")
    text = " ".join(args)
    assert "run vgg11 --seed 2 --device cuda --quiet" in text
    assert "--epochs 3" in text and "--threshold 0.2 --threshold 0.4" in text and "--compile" in text
    assert "--no-channels-last" in text and "--gpus" not in text and "--out runs" in text


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
        run_models(RunRequest(models=["tiny_resnet"], gpus="0,0", data=str(tiny_data), preset="smoke",
                              out=tmp_path, registry=tiny_registry))
