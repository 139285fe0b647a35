"""Study files (`--config`, `--print-config`), Ctrl-C and resuming, and TensorBoard, through the command line."""

from __future__ import annotations

import re
import shlex
import signal
import subprocess
import sys
import time

import pytest
import tomllib
from conftest import invoke

from archbench import train


def tiny_args(registry, data, out, *extra) -> list[str]:
    return [
        *["--data", str(data), "--registry", str(registry), "--preset", "smoke", "--epochs", "2"],
        *["--batch-size", "16", "--image-size", "32", "--device", "cpu", "--quiet", "--runs", str(out), *extra],
    ]


# ------------------------------------------------------------------------------------------ study files


def test_a_study_file_sets_options_by_their_command_line_names_and_the_command_line_wins(tmp_path):
    study = tmp_path / "study.toml"
    study.write_text(
        'models = ["resnet18", "vgg11"]\nseed = [0, 1, 2]\npreset = "smoke"\nbatch-size = 64\n'
        f'runs = "{tmp_path / "study-runs"}"\nlr = 0.05\nnesterov = true\nholdout_per_class = 5\n'
    )
    code, output = invoke("run", "--config", study, "--print-config", "--batch-size", "8", "--seed", "4")
    assert code == 0, output
    resolved = tomllib.loads(output)
    assert resolved["models"] == ["resnet18", "vgg11"]
    assert resolved["preset"] == "smoke" and resolved["lr"] == "0.05" and resolved["nesterov"] is True
    assert resolved["holdout-per-class"] == 5  # a key may be written with underscores too
    assert resolved["batch-size"] == 8 and resolved["seed"] == [4]  # the command line overrides the file
    assert resolved["runs"] == str(tmp_path / "study-runs")
    assert resolved["device"] == "auto"  # an option neither gave keeps its default
    # the printed study is itself a study file that resolves to the same study
    again = tmp_path / "again.toml"
    again.write_text(output)
    assert invoke("run", "--config", again, "--print-config")[1] == output
    assert not (tmp_path / "study-runs").exists()  # --print-config runs nothing


@pytest.mark.parametrize(
    "text, problem",
    [
        ("bogus = 1\n", "unknown option 'bogus'"),
        ('epochs = "ten"\n', "epochs must be an integer, not 'ten'"),
        ("epochs = 2.5\n", "epochs must be an integer"),
        ("compile = 1\n", "compile must be true or false"),
        ('seed = [0, "a"]\n', "seed must be an integer or a list of them"),
        ("epochs = 0\n", "epochs: Input should be greater than or equal to 1"),
        ('preset = "smokey"\n', "preset: "),
        ("lr = [0.1\n", ": not valid TOML"),
    ],
)
def test_a_bad_study_file_is_one_line_naming_the_file_and_the_key(tmp_path, text, problem):
    study = tmp_path / "study.toml"
    study.write_text(text)
    code, output = invoke("run", "resnet18", "--config", study, "--runs", tmp_path / "runs")
    assert code == 2, output
    lines = output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {study}"), output
    assert problem in output
    assert not (tmp_path / "runs").exists()


def test_tune_takes_a_study_file_with_its_grid(tmp_path):
    study = tmp_path / "study.toml"
    study.write_text('models = ["resnet18"]\nlr = [0.01, 0.1]\nholdout-per-class = 3\n')
    code, output = invoke("tune", "--config", study, "--print-config")
    assert code == 0, output
    resolved = tomllib.loads(output)
    assert resolved["lr"] == [0.01, 0.1] and resolved["holdout-per-class"] == 3


def test_a_study_run_from_a_file_is_recorded_in_its_runs_folder(tiny_registry, tiny_data, tmp_path):
    out = tmp_path / "runs"
    study = tmp_path / "study.toml"
    study.write_text('models = ["tiny_resnet"]\nepochs = 1\n')
    args = [*tiny_args(tiny_registry, tiny_data, out), "--config", study]
    args[args.index("--epochs") + 1] = "1"
    _, printed = invoke("run", *args, "--print-config")
    code, output = invoke("run", *args)
    assert code == 0, output
    assert (out / "study-run.toml").read_text() == printed


# ------------------------------------------------------------------------------------------ Ctrl-C


def test_ctrl_c_says_what_was_saved_and_the_command_that_resumes(tiny_registry, tiny_data, tmp_path, monkeypatch):
    out = tmp_path / "runs"
    real = train.record_epoch

    def stop_after_first_epoch(*args, **kwargs):
        real(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "record_epoch", stop_after_first_epoch)
    code, output = invoke("run", "tiny_resnet", *tiny_args(tiny_registry, tiny_data, out, "--fresh", "--seed", "3"))
    assert code == 130, output
    (line,) = [line for line in output.splitlines() if line.startswith("interrupted:")]
    (run_dir,) = (out / "tiny_resnet").iterdir()
    assert f"tiny_resnet s3: 1 of 2 epochs saved in {run_dir}; resume with: " in line
    command = shlex.split(line.split("resume with: ")[1])
    # every option given, and no --fresh (which would start the run over)
    expected = ["archbench", "run", *tiny_args(tiny_registry, tiny_data, out, "--seed", "3")]
    assert command[:3] == ["archbench", "run", "tiny_resnet"] and "--fresh" not in command
    assert sorted(command[3:]) == sorted(expected[2:])


@pytest.mark.slow
def test_ctrl_c_in_a_real_process_then_the_printed_command_resumes(tiny_registry, tiny_data, tmp_path):
    """SIGINT to `archbench run` once its first epoch is checkpointed; the command it prints continues the run."""
    out = tmp_path / "runs"
    args = ["run", "tiny_resnet", *tiny_args(tiny_registry, tiny_data, out)]
    args[args.index("--epochs") + 1] = "4"
    process = subprocess.Popen(
        [sys.executable, "-m", "archbench", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.monotonic() + 120
    while not list(out.glob("tiny_resnet/*/checkpoint.pt")) and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 130, output
    (line,) = [line for line in output.splitlines() if line.startswith("interrupted:")]
    assert re.search(r"tiny_resnet s0: \d+ of 4 epochs saved in ", line), line
    command = shlex.split(line.split("resume with: ")[1])
    resumed = subprocess.run(
        [sys.executable, "-m", "archbench", *command[1:]], capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resuming after step" in resumed.stdout
    assert len(list((out / "tiny_resnet").iterdir())) == 1  # the same run, continued


# ------------------------------------------------------------------------------------------ TensorBoard


def test_tensorboard_gets_step_epoch_and_gradient_scalars_in_each_run_folder(
    tiny_registry, tiny_data, tmp_path, monkeypatch
):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "runs"
    monkeypatch.setenv("ARCHBENCH_TENSORBOARD", "1")
    code, output = invoke("run", "tiny_resnet", *tiny_args(tiny_registry, tiny_data, out, "--gradnorm-steps", "3"))
    assert code == 0, output
    (run_dir,) = (out / "tiny_resnet").iterdir()
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/accuracy", "train/lr", "train/images_per_s"} <= tags
    assert {"epoch/test_acc", "epoch/train_acc", "epoch/train_images_per_s"} <= tags
    assert any(t.startswith("gradients/") and t.endswith("/grad_norm") for t in tags)
    test_acc = [e.value for e in events.Scalars("epoch/test_acc")]
    recorded = [float(r.split(",")[4]) for r in (run_dir / "metrics.csv").read_text().splitlines()[1:]]
    header = (run_dir / "metrics.csv").read_text().splitlines()[0].split(",")
    assert header[4] == "test_acc" and test_acc == pytest.approx(recorded)
    # 6 steps per epoch (96 images, batch 16): one logged point at the end of each epoch
    assert [e.step for e in events.Scalars("train/lr")] == [6, 12]


def test_tensorboard_missing_is_one_line_before_anything_runs(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    code, output = invoke("run", "resnet18", "--tensorboard", "--runs", tmp_path / "runs")
    assert code == 2
    assert output.strip() == (
        "error: --tensorboard needs the tensorboard package, which is not installed: pip install "
        "'archbench[tensorboard]'"
    )
    assert not (tmp_path / "runs").exists()
