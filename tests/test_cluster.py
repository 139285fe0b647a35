"""`archbench run --launcher submitit`: jobs on submitit's local executor (processes on this machine), and
on a stand-in SLURM whose sbatch only records what it was given."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest
from conftest import tiny_run_request
from rich.console import Console
from typer.testing import CliRunner

from archbench import cluster, launch
from archbench.cli import app
from archbench.config import RunRequest
from archbench.errors import ArchbenchError
from archbench.study import run_requests

try:
    import submitit
except ImportError:  # the launcher's own checks are tested without it
    submitit = None
needs_submitit = pytest.mark.skipif(submitit is None, reason="needs submitit: pip install 'archbench[slurm]'")
runner = CliRunner()


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the jobs share two cores


def request(tiny_registry, tiny_data, out, models=("tiny_resnet",), **kw) -> RunRequest:
    """A tiny run as jobs on submitit's local executor, without GPUs."""
    launcher = {"launcher": "submitit", "cluster": "local", "gpus_per_job": 0}
    return tiny_run_request(tiny_registry, tiny_data, out, models, **{**launcher, **kw})


def submit_runs(req: RunRequest, console: Console | None = None) -> list[dict]:
    return cluster.submit_runs(launch.jobs_of([req]), req, console or Console(quiet=True))


def run_dirs(out: Path, model: str) -> list[Path]:
    return sorted(p for p in (out / model).iterdir() if p.is_dir())


def epochs(run: Path) -> list[int]:
    with open(run / "metrics.csv") as f:
        return [int(row["epoch"]) for row in csv.DictReader(f)]


def wait_for_checkpoint(out: Path, model: str, job, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not list(out.glob(f"{model}/*/checkpoint.pt")):  # the first epoch is done
        assert not job.done() and time.monotonic() < deadline, "the job ended before it could be stopped"
        time.sleep(0.02)


@needs_submitit
def test_two_jobs_run_to_completion_into_one_folder(tiny_registry, tiny_data, tmp_path):
    console = Console(record=True, width=200)
    results = submit_runs(
        request(tiny_registry, tiny_data, tmp_path, models=("tiny_resnet", "tiny_plain"), wait=True), console
    )
    assert [(r["model"], r["seed"], r["status"]) for r in results] == [
        ("tiny_resnet", 0, "completed"),
        ("tiny_plain", 0, "completed"),
    ]
    for summary in results:
        (run,) = run_dirs(tmp_path, summary["model"])
        assert run.name == summary["run_id"] and epochs(run) == [1, 2]
        assert json.loads((run / "summary.json").read_text()) == summary
    text = console.export_text()
    jobs = [
        line.split("job ")[-1].strip()
        for line in text.splitlines()
        if line.strip().startswith("tiny_") and ": job " in line
    ]
    assert len(jobs) == 2 and all(j.isdigit() for j in jobs)  # the job ids are printed
    assert "tiny_plain s0 epoch 2/2" in text  # the children's output, shown
    assert "submitit" not in text.replace(f"{tmp_path}/.submitit", "")  # without submitit's own log lines


@needs_submitit
def test_waiting_for_a_diverging_job_exits_as_run_does(tiny_registry, tiny_data, tmp_path):
    result = runner.invoke(
        app,
        [
            "run",
            "tiny_vgg",
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
            "--lr",
            "1e6",
            "--clip-grad-norm",
            "0",
            "--registry",
            str(tiny_registry),
            "--out",
            str(tmp_path),
            "--launcher",
            "submitit",
            "--cluster",
            "local",
            "--gpus-per-job",
            "0",
            "--wait",
        ],
    )
    assert result.exit_code == 3, result.output  # recorded, and diverged: as `archbench run` without a launcher
    (run,) = run_dirs(tmp_path, "tiny_vgg")
    assert json.loads((run / "summary.json").read_text())["status"] == "diverged"
    assert "diverged" in result.output


@needs_submitit
def test_a_failing_job_is_one_line_naming_it_and_its_logs(tiny_registry, tiny_data, tmp_path):
    req = request(tiny_registry, tmp_path / "no-data", tmp_path / "runs", wait=True)
    with pytest.raises(ArchbenchError) as failed:
        submit_runs(req)
    message = failed.value.message
    assert message.startswith("1 job(s) failed: tiny_resnet s0 (job ") and "exited with code 2" in message
    assert "no prepared data" in message and str(tmp_path / "runs" / cluster.LOG_FOLDER) in message
    assert "\n" not in message


@needs_submitit
def test_a_preempted_job_is_requeued_and_resumes_its_run(tiny_registry, tiny_data, tmp_path):
    req = request(tiny_registry, tiny_data, tmp_path, epochs=12, batch_size=4)
    (submitted,) = cluster.submit(launch.jobs_of([req]), req, Console(quiet=True))
    job = submitted.job
    wait_for_checkpoint(tmp_path, "tiny_resnet", job)
    for pid in process_tree(int(submitted.job_id))[1:]:  # as SLURM does before a preemption or the time limit:
        os.kill(pid, signal.SIGUSR2)  # submitit's signal to every process of the job step (not the local controller)
    summary = job.result()
    assert summary["status"] == "completed"
    (run,) = run_dirs(tmp_path, "tiny_resnet")  # the same run, resumed
    assert run.name == summary["run_id"] and epochs(run) == list(range(1, 13))  # every epoch once
    log = submitted.log.read_text()
    assert log.count("tiny_resnet s0: 12 epochs x 24 steps") == 2 and "(resuming after step" in log


@needs_submitit
def test_a_killed_job_resubmitted_resumes_its_run(tiny_registry, tiny_data, tmp_path):
    req = request(tiny_registry, tiny_data, tmp_path, epochs=12, batch_size=4)
    (first,) = cluster.submit(launch.jobs_of([req]), req, Console(quiet=True))
    wait_for_checkpoint(tmp_path, "tiny_resnet", first.job)
    for pid in reversed(process_tree(int(first.job_id))):  # the job's controller, its task and the run
        os.kill(pid, signal.SIGKILL)
    (run,) = run_dirs(tmp_path, "tiny_resnet")
    assert json.loads((run / "summary.json").read_text())["status"] == "interrupted"

    (summary,) = submit_runs(dataclasses.replace(req, wait=True))
    assert summary["status"] == "completed" and summary["run_id"] == run.name
    assert run_dirs(tmp_path, "tiny_resnet") == [run] and epochs(run) == list(range(1, 13))


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(children.get(p, []))
    return tree


# ------------------------------------------------------------------------------------------ stand-in SLURM


FAKE_SBATCH = """#!{python}
import re, sys
from pathlib import Path
script = Path(sys.argv[-1]).read_text()
Path({record!r}).write_text(script)
if "--partition=nope" in script:
    sys.exit("sbatch: error: invalid partition specified: nope\\nsbatch: error: Batch job submission failed: "
             "Invalid partition name specified")
if int(re.search(r"--time=(\\d+)", script)[1]) > 10000:
    sys.exit("sbatch: error: Batch job submission failed: Requested time limit is invalid (missing or exceeds "
             "some limit)")
print("Submitted batch job 4242")
"""


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch) -> Path:
    """sbatch and srun on PATH; sbatch writes the script it was given to the returned path."""
    bin_dir, record = tmp_path / "bin", tmp_path / "sbatch-script"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(FAKE_SBATCH.format(python=sys.executable, record=str(record)))
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    for tool in ("sbatch", "srun"):
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return record


@needs_submitit
def test_slurm_gets_one_job_array_with_the_requested_resources(tiny_registry, tiny_data, tmp_path, fake_slurm):
    out = tmp_path / "runs"
    req = request(
        tiny_registry,
        tiny_data,
        out,
        seeds=[0, 1],
        cluster="slurm",
        partition="gpu",
        time_limit=90,
        gpus_per_job=2,
        cpus_per_job=16,
        slurm_param=["account=proj", "qos=high"],
    )
    console = Console(record=True, width=300)
    assert submit_runs(req, console) == []  # without --wait: submitted, not waited for
    text = console.export_text()
    assert "tiny_resnet s0: job 4242_0" in text and "tiny_resnet s1: job 4242_1" in text
    assert "warning:" in text and "temporary folder" in text  # tmp_path is not a shared folder

    script = fake_slurm.read_text()
    for option in (
        "--array=0-1%2",
        "--partition=gpu",
        "--time=90",
        "--gpus-per-node=2",
        "--cpus-per-task=16",
        "--ntasks-per-node=1",
        "--account=proj",
        "--qos=high",
        "--signal=USR2@",
    ):
        assert f"#SBATCH {option}" in script, option
    pickles = sorted((out / cluster.LOG_FOLDER).glob("4242_*/4242_*_submitted.pkl"))
    assert len(pickles) == 2
    delayed = submitit.core.utils.DelayedSubmission.load(pickles[1])
    job = delayed.function
    command = job.command
    assert command[:6] == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    assert command[6:8] == ["-m", "archbench.study"]
    job_file = json.loads(Path(command[8]).read_text())  # the request, not a command line
    assert job_file["opened"] == job.opened and Path(job.opened).parent == Path(command[8]).parent
    sent = job_file["request"]
    assert (sent["models"], sent["seeds"], sent["out"]) == (["tiny_resnet"], [1], str(out.resolve()))
    assert (sent["launcher"], sent["gpus"], sent["wait"], sent["quiet"]) == (None, None, False, True)
    assert Path(command[8]).is_relative_to(out.resolve() / cluster.LOG_FOLDER)  # where every node reads it
    # Requeueable: on preemption submitit resubmits what checkpoint() returns, the same job.
    again = job.checkpoint()
    assert isinstance(again, submitit.helpers.DelayedSubmission) and again.function is job


@needs_submitit
@pytest.mark.parametrize(
    "option, shown",
    [
        (["--partition", "nope"], "invalid partition specified: nope"),
        (["--time-limit", "99999"], "Requested time limit is invalid"),
    ],
)
def test_slurm_refusing_the_jobs_is_one_line(tiny_registry, tiny_data, tmp_path, fake_slurm, option, shown):
    result = runner.invoke(
        app,
        [
            "run",
            "tiny_resnet",
            "--data",
            str(tiny_data),
            "--preset",
            "smoke",
            "--registry",
            str(tiny_registry),
            "--out",
            str(tmp_path / "runs"),
            "--launcher",
            "submitit",
            *option,
        ],
    )
    assert result.exit_code == 2, result.output
    (line,) = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert shown in line and "slurm refused the jobs" in line and "Traceback" not in result.output


@needs_submitit
def test_slurm_without_sbatch_is_one_line(tiny_registry, tiny_data, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no srun, no sbatch
    with pytest.raises(ArchbenchError, match="needs SLURM"):
        submit_runs(request(tiny_registry, tiny_data, tmp_path, cluster="slurm"))


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"cluster": "kubernetes"}, "unknown cluster 'kubernetes'"),
        ({"launcher": "ray"}, "unknown launcher 'ray'"),
        ({"gpus": "0,1"}, "use one of them"),
        ({"fresh": True}, "--fresh cannot be used with --launcher"),
        ({"slurm_param": ["account"]}, "--slurm-param takes KEY=VALUE"),
    ],
)
def test_bad_launcher_options_are_one_line(tiny_registry, tiny_data, tmp_path, settings, message):
    with pytest.raises(ArchbenchError, match=message):
        submit_runs(request(tiny_registry, tiny_data, tmp_path, **settings))
    assert not (tmp_path / cluster.LOG_FOLDER).exists()  # refused before anything was submitted


@pytest.mark.parametrize(
    "settings, message",
    [({"batch_size": 97}, "larger than the 96 training images"), ({"lr": "tuned"}, "needs a tuning file")],
)
@pytest.mark.parametrize("jobs", [{"launcher": "submitit"}, {"launcher": None, "gpus": "0"}])
def test_a_request_that_cannot_run_fails_before_any_job(tiny_registry, tiny_data, tmp_path, settings, message, jobs):
    """--launcher and --gpus plan every run in the parent first: the error is one line, nothing is queued."""
    out = tmp_path / "runs"
    req = request(tiny_registry, tiny_data, out, **{**settings, **jobs})
    with pytest.raises(ArchbenchError, match=message):
        run_requests([req], Console(quiet=True))
    assert not out.exists()


def test_the_launcher_is_refused_under_torchrun(tiny_registry, tiny_data, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ArchbenchError, match="without torchrun"):
        submit_runs(request(tiny_registry, tiny_data, tmp_path))


def test_without_submitit_the_error_says_how_to_install_it(tiny_registry, tiny_data, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "submitit", None)  # import submitit now fails
    with pytest.raises(ArchbenchError) as refused:
        submit_runs(request(tiny_registry, tiny_data, tmp_path))
    assert "pip install 'archbench[slurm]'" in refused.value.message
    result = runner.invoke(
        app,
        [
            "run",
            "tiny_resnet",
            "--data",
            str(tiny_data),
            "--preset",
            "smoke",
            "--registry",
            str(tiny_registry),
            "--out",
            str(tmp_path),
            "--launcher",
            "submitit",
            "--cluster",
            "local",
        ],
    )
    assert result.exit_code == 2 and "needs submitit" in result.output and "pip install" in result.output
    assert len(result.output.strip().splitlines()) <= 2 and "Traceback" not in result.output


def test_an_out_folder_on_a_local_disk_is_warned_about(monkeypatch, tmp_path):
    monkeypatch.setattr(cluster, "filesystem_type", lambda path: "ext4")
    assert "local ext4 filesystem" in cluster.shared_folder_warning(Path("/home/me/runs"))
    monkeypatch.setattr(cluster, "filesystem_type", lambda path: "nfs4")
    assert cluster.shared_folder_warning(Path("/home/me/runs")) is None
    assert "temporary folder" in cluster.shared_folder_warning(tmp_path)
