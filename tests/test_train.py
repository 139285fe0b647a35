"""The training loop on tiny models and tiny synthetic data, on the CPU."""

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
from conftest import tiny_run_request
from typer.testing import CliRunner

from archbench import bench
from archbench.cli import app
from archbench.config import PRESETS, BenchRequest, Recipe, RunRequest
from archbench.runs import TIMING_COLUMNS, epochs_to_threshold
from archbench.study import run_models
from archbench.train import lr_lambda

runner = CliRunner()


request = tiny_run_request


def read_csv(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def run_dirs(out: Path, model: str) -> list[Path]:
    return sorted(p for p in (out / model).iterdir() if p.is_dir())


def test_epochs_to_threshold_on_a_known_curve():
    curve = [0.10, 0.25, 0.31, 0.29, 0.45, 0.52]
    assert epochs_to_threshold(curve, [0.3, 0.4, 0.5, 0.6]) == {"0.3": 3, "0.4": 5, "0.5": 6, "0.6": None}
    assert epochs_to_threshold([], [0.3]) == {"0.3": None}
    assert epochs_to_threshold([0.3], [0.3]) == {"0.3": 1}  # reaching counts, not only exceeding


def test_schedule_warms_up_then_decays_to_zero():
    f = lr_lambda(Recipe(epochs=3, batch_size=1, lr=1.0, warmup_epochs=1), steps_per_epoch=10)
    assert [round(f(s), 3) for s in (0, 4, 9)] == [0.1, 0.5, 1.0]
    assert f(10) == pytest.approx(1.0) and f(20) == pytest.approx(0.5) and f(30) == pytest.approx(0.0)
    assert all(f(s) >= f(s + 1) for s in range(10, 30))


def test_a_run_writes_its_record(tiny_registry, tiny_data, tmp_path):
    (summary,) = run_models(request(tiny_registry, tiny_data, tmp_path, gradnorm_steps=5, seeds=[3]))
    (run,) = run_dirs(tmp_path, "tiny_resnet")
    config = json.loads((run / "config.json").read_text())
    assert config["seed"] == 3 and config["model"] == "tiny_resnet" and config["data"]["synthetic"] is True
    assert config["data"]["fingerprint"] and config["provenance"]["torch"] == torch.__version__
    assert config["recipe"]["lr_source"] == "preset, scaled to batch 16" and config["run_id"] == run.name
    for record in run.glob("*.json"):  # portable: no path of this machine (data, registry, home)
        text = record.read_text()
        assert not any(str(place) in text for place in (tiny_data, tiny_registry, Path.home())), record

    metrics = read_csv(run / "metrics.csv")
    assert [int(r["epoch"]) for r in metrics] == [1, 2]
    assert {
        "train_loss",
        "train_acc",
        "test_loss",
        "test_acc",
        "lr",
        "epoch_seconds",
        "train_images_per_s",
        "train_samples",
    } <= set(metrics[0])
    assert all(int(r["train_samples"]) == 4 * 24 for r in metrics)  # every training image once per epoch

    grads = read_csv(run / "gradnorms.csv")
    from archbench.gradients import weight_layers
    from archbench.registry import build_model

    layers = [name for name, _, _ in weight_layers(build_model("tiny_resnet", registry=tiny_registry))]
    assert len(grads) == 5 * len(layers)
    assert [g["layer"] for g in grads[: len(layers)]] == layers
    assert sorted({int(g["step"]) for g in grads}) == list(range(5))
    assert {int(g["layer_index"]) for g in grads} == set(range(len(layers)))
    norms = {(int(g["step"]), g["layer"]): float(g["grad_norm"]) for g in grads}
    assert all(0 <= v < float("inf") for v in norms.values())
    assert norms[(0, layers[0])] > 0 and norms[(0, layers[-1])] > 0
    # zero-initialised last BN gamma: no gradient reaches a block's second conv on the first step
    assert norms[(0, "layer1.0.conv2")] == 0 and norms[(1, "layer1.0.conv2")] > 0

    saved = json.loads((run / "summary.json").read_text())
    assert saved == summary and saved["status"] == "completed" and saved["epochs_completed"] == 2
    assert saved["final_test_acc"] == pytest.approx(float(metrics[-1]["test_acc"]))
    assert saved["parameters"] > 0 and saved["gflops"]["at_224"] > saved["gflops"]["at_image_size"] > 0
    assert not (run / "checkpoint.pt").exists()  # a finished run leaves nothing to resume


def test_a_small_model_learns(tiny_registry, tmp_path):
    (summary,) = run_models(
        RunRequest(
            models=["tiny_resnet"],
            data="synthetic",
            preset="smoke",
            epochs=4,
            image_size=32,
            device="cpu",
            out=tmp_path,
            quiet=True,
            registry=tiny_registry,
        )
    )
    chance = 1 / 10
    assert summary["best_test_acc"] > 2 * chance, summary


def test_rerunning_skips_a_recorded_run_and_fresh_starts_another(tiny_registry, tiny_data, tmp_path):
    req = request(tiny_registry, tiny_data, tmp_path, epochs=1)
    (first,) = run_models(req)
    (again,) = run_models(req)
    assert again["run_id"] == first["run_id"] and len(run_dirs(tmp_path, "tiny_resnet")) == 1
    req.fresh = True
    (fresh,) = run_models(req)
    assert fresh["run_id"] != first["run_id"] and len(run_dirs(tmp_path, "tiny_resnet")) == 2


def test_divergence_is_recorded_and_the_next_model_still_runs(tiny_registry, tiny_data, tmp_path):
    diverged, completed = run_models(
        request(tiny_registry, tiny_data, tmp_path, models=("tiny_vgg", "tiny_resnet"), lr=1e6, clip_grad_norm=0)
    )
    assert diverged["status"] == "diverged" and diverged["model"] == "tiny_vgg"
    assert 0 <= diverged["diverged_at_step"] < 2 * 6
    assert completed["model"] == "tiny_resnet" and completed["run_id"] != diverged["run_id"]
    (run,) = run_dirs(tmp_path, "tiny_vgg")
    assert json.loads((run / "summary.json").read_text())["status"] == "diverged"
    assert (run / "metrics.csv").read_text().startswith("epoch,train_loss,train_acc,test_loss,test_acc,lr,")


def test_gradient_clipping_bounds_the_step(tiny_registry, tiny_data, tmp_path):
    # lr 1e3 diverges unclipped; clipped to 1e-9 every gradient step is tiny (weight decay, applied by
    # SGD after clipping, then only shrinks the weights by half a step's worth: lr x wd = 0.5).
    runs = {
        clip: run_models(
            request(tiny_registry, tiny_data, tmp_path / str(clip), models=("tiny_vgg",), lr=1e3, clip_grad_norm=clip)
        )[0]["status"]
        for clip in (0, 1e-9)
    }
    assert runs == {0: "diverged", 1e-9: "completed"}
    (run,) = run_dirs(tmp_path / "1e-09", "tiny_vgg")
    assert json.loads((run / "config.json").read_text())["recipe"]["clip_grad_norm"] == 1e-9


def test_registry_lr_scale_is_applied_and_recorded(tiny_registry, tiny_data, tmp_path):
    run_models(request(tiny_registry, tiny_data, tmp_path, models=("tiny_vgg",), epochs=1))
    (run,) = run_dirs(tmp_path, "tiny_vgg")
    recipe = json.loads((run / "config.json").read_text())["recipe"]
    base = PRESETS["smoke"].recipe
    assert recipe["lr"] == pytest.approx(base.lr * 16 / base.batch_size * 0.1)
    assert "lr_scale" in recipe["lr_source"]


def test_bf16_and_channels_last_run_the_same_loop(tiny_registry, tiny_data, tmp_path):
    (summary,) = run_models(request(tiny_registry, tiny_data, tmp_path, epochs=1, precision="bf16", channels_last=True))
    (run,) = run_dirs(tmp_path, "tiny_resnet")
    config = json.loads((run / "config.json").read_text())
    assert config["precision"] == "bf16" and config["channels_last"] is True
    assert summary["status"] == "completed" and 0 <= summary["final_test_acc"] <= 1


def _cli(tiny_registry, tiny_data, out, *extra) -> list[str]:
    return [
        sys.executable,
        "-m",
        "archbench",
        "run",
        "tiny_resnet",
        "--data",
        str(tiny_data),
        "--preset",
        "smoke",
        "--epochs",
        "4",
        "--batch-size",
        "8",
        "--image-size",
        "32",
        "--device",
        "cpu",
        "--deterministic",
        "--quiet",
        "--registry",
        str(tiny_registry),
        "--out",
        str(out),
        *extra,
    ]


def _comparable(run: Path) -> tuple[list, list]:
    metrics = [{k: v for k, v in row.items() if k not in TIMING_COLUMNS} for row in read_csv(run / "metrics.csv")]
    return metrics, read_csv(run / "gradnorms.csv")


def test_a_killed_run_resumes_and_matches_an_uninterrupted_one(tiny_registry, tiny_data, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(_cli(tiny_registry, tiny_data, tmp_path / "straight"), check=True, env=env, capture_output=True)

    out = tmp_path / "killed"
    proc = subprocess.Popen(
        _cli(tiny_registry, tiny_data, out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    while not list(out.glob("tiny_resnet/*/checkpoint.pt")):  # the first epoch is done
        assert proc.poll() is None and time.monotonic() < deadline, "run ended before it could be killed"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (run,) = run_dirs(out, "tiny_resnet")
    assert json.loads((run / "summary.json").read_text())["status"] == "interrupted"
    killed_at = torch.load(run / "checkpoint.pt", weights_only=True)["epoch"]  # the record may be one ahead
    assert 1 <= killed_at < 4

    resumed = subprocess.run(_cli(tiny_registry, tiny_data, out), env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming after step {killed_at * 12}" in resumed.stdout  # 96 images / batch 8
    assert run_dirs(out, "tiny_resnet") == [run]
    assert json.loads((run / "summary.json").read_text())["status"] == "completed"
    (straight,) = run_dirs(tmp_path / "straight", "tiny_resnet")
    assert _comparable(run) == _comparable(straight)


def test_a_second_process_beside_a_running_one_gets_a_run_of_its_own(tiny_registry, tiny_data, tmp_path):
    """The same command twice into one folder, the second while the first is inside its run: the first is
    stopped (SIGSTOP, so it holds its run's lock but cannot finish) after its first checkpoint, the second
    runs to the end, then the first continues. The second must neither resume nor touch the first's run."""
    cmd = _cli(tiny_registry, tiny_data, tmp_path)
    cmd[cmd.index("--epochs") + 1] = "3"
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob("tiny_resnet/*/checkpoint.pt")):
        assert first.poll() is None and time.monotonic() < deadline, "the first run ended before it could be paused"
        time.sleep(0.02)
    first.send_signal(signal.SIGSTOP)
    try:
        (running,) = run_dirs(tmp_path, "tiny_resnet")
        assert json.loads((running / "summary.json").read_text())["status"] == "interrupted"
        second = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
        assert second.returncode == 0, second.stderr
        assert "resuming" not in second.stdout
        assert json.loads((running / "summary.json").read_text())["status"] == "interrupted"  # untouched
    finally:
        first.send_signal(signal.SIGCONT)
    _, err = first.communicate(timeout=180)
    assert first.returncode == 0, err.decode()
    runs = run_dirs(tmp_path, "tiny_resnet")
    assert len(runs) == 2 and running in runs
    for run in runs:
        assert json.loads((run / "summary.json").read_text())["status"] == "completed"
        assert json.loads((run / "config.json").read_text())["run_id"] == run.name
        assert [int(row["epoch"]) for row in read_csv(run / "metrics.csv")] == [1, 2, 3]


@pytest.mark.parametrize(
    "args, expected",
    [
        (["resnt18"], "unknown model 'resnt18'"),
        (["tiny_resnet", "--data", "/nonexistent/tiny-imagenet"], "archbench data prepare"),
        (["tiny_resnet", "--preset", "huge"], "unknown preset"),
        (["tiny_resnet", "--data", "synthetic", "--device", "tpu"], "unknown device"),
        (["tiny_resnet", "--data", "synthetic", "--precision", "fp8"], "unknown precision"),
    ],
)
def test_bad_arguments_give_one_line(tiny_registry, tmp_path, args, expected):
    result = runner.invoke(app, ["run", *args, "--registry", str(tiny_registry), "--out", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert expected in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) <= 2  # one sentence (Rich may wrap it once)


def test_missing_data_names_both_ways_forward(tiny_registry, tmp_path):
    result = runner.invoke(
        app, ["run", "tiny_resnet", "--data", str(tmp_path / "nope"), "--registry", str(tiny_registry)]
    )
    assert result.exit_code == 2
    assert "--data synthetic" in result.output and str(tmp_path / "nope") in result.output.replace("\n", "")


def test_bench_reports_model_only_and_end_to_end(tiny_registry, tiny_data, tmp_path):
    out = tmp_path / "bench"
    result = runner.invoke(
        app,
        [
            "bench",
            "tiny_resnet",
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
            "--data",
            str(tiny_data),
            "--registry",
            str(tiny_registry),
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    (written,) = out.glob("bench-*.json")
    (row,) = json.loads(written.read_text())["results"]
    for mode in ("train", "inference"):
        assert row[mode]["model_only"] > 0 and row[mode]["end_to_end"] > 0


def test_bench_end_to_end_pays_for_the_input_pipeline_and_model_only_does_not(tiny_registry, tiny_data, monkeypatch):
    """A loader that takes 50 ms more per batch: end-to-end images/s can then be at most batch / 50 ms (each
    timed step waits for one batch), and falls below half of model-only, which is fed one fixed batch and
    steps a tiny model in a few ms. An end-to-end stream that skipped the loader, or a model-only one that
    used it, fails."""
    delay, batch = 0.05, 8

    class SlowLoader(bench.DeviceLoader):
        def __iter__(self):
            for item in super().__iter__():
                time.sleep(delay)
                yield item

    monkeypatch.setattr("archbench.train.DeviceLoader", SlowLoader)  # the loader the bench's training is built with
    row = bench.measure(
        "tiny_resnet",
        BenchRequest(
            models=["tiny_resnet"],
            device="cpu",
            image_size=32,
            batch_size=batch,
            steps=2,
            num_classes=4,
            precision="fp32",
            channels_last=False,
            data=str(tiny_data),
            registry=tiny_registry,
        ),
    )
    for mode in ("train", "inference"):
        assert row[mode]["end_to_end"] <= batch / delay, (mode, row[mode])
        assert row[mode]["end_to_end"] < 0.5 * row[mode]["model_only"], (mode, row[mode])


def test_the_same_data_by_another_path_is_the_same_run(tiny_registry, tiny_data, tmp_path, monkeypatch):
    (first,) = run_models(request(tiny_registry, tiny_data, tmp_path / "runs", epochs=1))
    monkeypatch.chdir(tiny_data.parent)
    (again,) = run_models(request(tiny_registry, Path(tiny_data.name), tmp_path / "runs", epochs=1))
    assert again["run_id"] == first["run_id"]  # recorded already: skipped, not trained again


def test_a_damaged_checkpoint_is_one_line_pointing_at_fresh(tiny_registry, tiny_data, tmp_path):
    req = request(tiny_registry, tiny_data, tmp_path, epochs=1, keep_checkpoint=True)
    run_models(req)
    (run,) = run_dirs(tmp_path, "tiny_resnet")
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, "status": "interrupted"}))
    (run / "checkpoint.pt").write_bytes(b"not a checkpoint")
    result = runner.invoke(
        app,
        [
            "run",
            "tiny_resnet",
            "--data",
            str(tiny_data),
            "--preset",
            "smoke",
            "--epochs",
            "1",
            "--batch-size",
            "16",
            "--image-size",
            "32",
            "--device",
            "cpu",
            "--quiet",
            "--registry",
            str(tiny_registry),
            "--out",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 2 and "--fresh" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize(
    "option", [["--epochs", "0"], ["--batch-size", "0"], ["--threshold", "50"], ["--image-size", "4"]]
)
def test_out_of_range_options_are_refused(tiny_registry, tmp_path, option):
    result = runner.invoke(
        app, ["run", "tiny_resnet", *option, "--registry", str(tiny_registry), "--out", str(tmp_path)]
    )
    assert result.exit_code == 2 and "Traceback" not in result.output
