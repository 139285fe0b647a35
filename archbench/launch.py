"""Jobs: one (model, seed) run of a request in a child process of its own; and `archbench run --gpus`.

A job reaches its child as a file (`write_job`), which the child runs with `archbench.study.run_job`;
the child names the run folder it opens in a second file (`JobLog`), and the parent follows the run and
takes its summary from that folder, never from the child's output, which it only shows. `--gpus` runs
the jobs on this machine's GPUs, one per GPU at a time (docs/cluster.md).
"""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

import torch
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress

from archbench import distributed, runs, status
from archbench.config import RunRequest
from archbench.data.sources import builtin_names
from archbench.errors import DIVERGED_EXIT, ArchbenchError
from archbench.progress import LogLines, job_progress, results_table

POLL_SECONDS = 0.5  # how often --gpus redraws its bars from the run folders


def jobs_of(requests: list[RunRequest]) -> list[RunRequest]:
    """A job per (model, seed) of `requests`: its request, naming that one model and seed."""
    return [replace(r, models=[m], seeds=[s]) for r in requests for m in r.models for s in r.seeds]


def label(job: RunRequest) -> str:
    lr = f" lr {job.lr}" if job.tuning_trial else ""
    return f"{job.models[0]} s{job.seeds[0]}{lr}"


def write_job(job: RunRequest, path: Path, device: str) -> Path:
    """Write `job` to `path` as its child reads it: the request it runs there (on `device`, quiet, without
    --gpus, --launcher or --wait; paths absolute, as a child may start in another folder), and `opened_file`."""
    request = replace(job, device=device, gpus=None, launcher=None, wait=False, quiet=True)
    fields = {name: str(v.resolve()) if isinstance(v, Path) else v for name, v in asdict(request).items()}
    if job.data not in (None, *builtin_names()) and Path(job.data).exists():
        fields["data"] = str(Path(job.data).resolve())
    runs.write_json(path, {"request": fields, "opened": str(opened_file(path))})
    return path


def opened_file(job_file: Path) -> Path:
    """Where the child of `job_file` names the run folder it opens (`JobLog`)."""
    return job_file.with_suffix(".run.json")


def job_command(job_file: Path, processes: int = 1) -> list[str]:
    """`python -m archbench.study JOB`, under `torchrun --standalone` when a job has several GPUs."""
    torchrun = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes)]
    return [sys.executable, *(torchrun if processes > 1 else []), "-m", "archbench.study", str(job_file)]


class JobLog(LogLines):
    """A child's reporter: log lines, and the run folder it starts (with its first step) or skips named in
    `opened`, for the parent."""

    def __init__(self, console: Console, out: Path, opened: Path):
        super().__init__(console)
        self.out, self.opened = out, opened

    def start(self, label, epochs, steps_per_epoch, done_steps, run_path=None):
        runs.write_json(self.opened, {"run": str(Path(run_path).resolve()), "step": done_steps})
        super().start(label, epochs, steps_per_epoch, done_steps, run_path)

    def skip(self, label, summary):
        runs.write_json(self.opened, {"run": str((self.out / summary["model"] / summary["run_id"]).resolve())})
        super().skip(label, summary)


def opened_run(opened: Path) -> dict | None:
    """What a child wrote to `opened` (`JobLog`): its run folder and the step it started from; None before."""
    try:
        return runs.read_json(opened)
    except (OSError, ValueError):
        return None


def recorded_summary(opened: Path) -> dict | None:
    """The summary of the run a child named in `opened`, or None where it opened or recorded none."""
    try:
        return runs.read_json(Path(opened_run(opened)["run"]) / runs.SUMMARY)
    except (OSError, ValueError, TypeError):
        return None


def show_job(progress: Progress, task, opened: Path) -> bool:
    """Draw a job's bar from the run folder its child named in `opened`; False before it has named one."""
    if (note := opened_run(opened)) is None:
        return False
    row = status.run_status(Path(note["run"]))
    state = "resumed" if note.get("step") else "training"
    progress.update(task, completed=row.epochs_done, total=row.epochs_total, state=state)
    return True


def run_child(command: list[str], env: dict[str, str], show: Callable[[str], object], **popen) -> tuple[int, str]:
    """Run `command`, handing each non-empty line of its output to `show`; its exit code and its last such
    line (for an error message). If this process leaves first, the child is killed."""
    proc = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1, **popen
    )
    last = ""
    try:
        for line in proc.stdout:
            if line.strip():
                show(last := line.rstrip())
        return proc.wait(), last
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def gpu_slot(gpu: str) -> tuple[dict[str, str], str]:
    """The environment and `--device` for a child on GPU `gpu`, which indexes the GPUs this process sees
    (under CUDA_VISIBLE_DEVICES=4,5, `--gpus 0,1` means physical GPUs 4 and 5)."""
    count = torch.cuda.device_count()
    if not gpu.isdigit() or int(gpu) >= count:
        raise ArchbenchError(f"--gpus names GPU '{gpu}' but this machine has {count} visible CUDA device(s).")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    physical = visible.split(",")[int(gpu)].strip() if visible else gpu
    return {"CUDA_VISIBLE_DEVICES": physical}, "cuda"


def run_on_gpus(jobs: list[RunRequest], gpus: str, console: Console) -> list[dict]:
    """Run every job as its own child process, one per GPU at a time, and return their summaries."""
    slots_wanted = [g.strip() for g in gpus.split(",") if g.strip()]
    if distributed.torchrun_world_size() > 1:
        raise ArchbenchError("--gpus starts its own processes; use it without torchrun.")
    if len(set(slots_wanted)) != len(slots_wanted):
        raise ArchbenchError(f"--gpus {gpus} names a GPU twice; give each GPU once.")
    slots = {gpu: gpu_slot(gpu) for gpu in slots_wanted}
    queued: queue.SimpleQueue = queue.SimpleQueue()
    for item in [*enumerate(jobs), *[None] * len(slots_wanted)]:  # then one "stop" per worker
        queued.put(item)

    progress = job_progress(console)
    failures: list[str] = []
    results: dict[int, dict] = {}
    following: dict = {}  # bar -> the opened file of its running job
    drawing = threading.Lock()

    def worker(gpu: str, folder: Path) -> None:
        env, device = slots[gpu]

        def show(line: str) -> None:
            progress.console.print(f"[dim]gpu {gpu}[/] {escape(line)}", highlight=False)

        for index, job in iter(queued.get, None):
            job_file = write_job(job, folder / f"{index}.json", device)
            task = progress.add_task(f"gpu {gpu}: {label(job)}", total=None, state="starting")
            following[task] = opened = opened_file(job_file)
            code, _ = run_child(job_command(job_file), {**os.environ, **env}, show)
            with drawing:
                del following[task]
            show_job(progress, task, opened)
            progress.update(task, state="done" if code == 0 else f"[red]exit {code}")
            if code not in (0, DIVERGED_EXIT):  # a divergence is a result, which its record says
                failures.append(f"{label(job)} on gpu {gpu} (exit {code})")
            elif (summary := recorded_summary(opened)) is not None:
                results[index] = summary

    with tempfile.TemporaryDirectory(prefix="archbench-jobs-") as folder, progress:
        threads = [threading.Thread(target=worker, args=(gpu, Path(folder)), daemon=True) for gpu in slots_wanted]
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            with drawing:
                for task, opened in list(following.items()):
                    show_job(progress, task, opened)
            time.sleep(POLL_SECONDS)
    if failures:
        raise ArchbenchError(f"{len(failures)} job(s) failed: {'; '.join(failures)}; their output is above.")
    ordered = [results[i] for i in sorted(results)]
    console.print(results_table(ordered))
    return ordered
