"""Jobs: one (model, seed) run of a request in a child process of its own; and `archbench run --gpus`.

A job reaches its child as a file, never as a command line: `write_job` writes the job's request (its
one model and seed, the child's device, the options that dispatch jobs reset) as JSON, and the child
runs it with `archbench.study.run_job` (`job_command`). The child names the run folder it opens in a
second file the job names (`JobLog`); the parent follows the run in that folder (`archbench.status`)
and takes its summary from there, never from the child's output, which it only shows.

`--gpus 0,1,...`: a sweep on one machine, one job per GPU at a time. Each child is pinned to one GPU
(CUDA_VISIBLE_DEVICES) and writes its own run record exactly as a single run would, so crash recovery
and skipping of finished runs work the same. Jobs are queued: a GPU that finishes takes the next one.
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

from archbench import runs, status
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


# ------------------------------------------------------------------------------------------ the job file


def write_job(job: RunRequest, path: Path, device: str) -> Path:
    """Write `job` to `path` as its child reads it: the request it runs there (on `device`, quiet, without
    --gpus, --launcher or --wait), its paths absolute strings (a child may start in another folder), and the
    file where the child names its run folder."""
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
    """The child's command: `python -m archbench.study JOB`, under `torchrun --standalone` with one process
    per GPU when a job has several."""
    torchrun = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes)]
    return [sys.executable, *(torchrun if processes > 1 else []), "-m", "archbench.study", str(job_file)]


class JobLog(LogLines):
    """A child's reporter: log lines (for people), and the run folder of the run it starts or skips named in
    `opened`, with the step it starts from (for the parent)."""

    def __init__(self, console: Console, out: Path, opened: Path):
        super().__init__(console)
        self.out, self.opened = out, opened

    def start(self, label, epochs, steps_per_epoch, done_steps, run_path=None):
        runs.write_json(self.opened, {"run": str(Path(run_path).resolve()), "step": done_steps})
        super().start(label, epochs, steps_per_epoch, done_steps, run_path)

    def skip(self, label, summary):
        runs.write_json(self.opened, {"run": str((self.out / summary["model"] / summary["run_id"]).resolve())})
        super().skip(label, summary)


# ------------------------------------------------------------------------------------------ following a job


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
    """Draw a job's bar from the run folder its child named in `opened`: epochs recorded of the recipe's, and
    whether the run resumed; False, drawing nothing, before the child has opened a run."""
    note = opened_run(opened)
    if note is None:
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


# ------------------------------------------------------------------------------------------ --gpus


def gpu_slot(gpu: str) -> tuple[dict[str, str], str]:
    """The environment and `--device` for a child on GPU `gpu` (the one place a CUDA device is chosen).

    `gpu` indexes the GPUs this process sees, so under a scheduler that set CUDA_VISIBLE_DEVICES=4,5,
    `--gpus 0,1` means physical GPUs 4 and 5.
    """
    count = torch.cuda.device_count()
    if not gpu.isdigit() or int(gpu) >= count:
        raise ArchbenchError(f"--gpus names GPU '{gpu}' but this machine has {count} visible CUDA device(s).")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    physical = visible.split(",")[int(gpu)].strip() if visible else gpu
    return {"CUDA_VISIBLE_DEVICES": physical}, "cuda"


def run_on_gpus(jobs: list[RunRequest], gpus: str, console: Console) -> list[dict]:
    """Run every job as its own child process, one per GPU at a time, and return their summaries."""
    slots_wanted = [g.strip() for g in gpus.split(",") if g.strip()]
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ArchbenchError("--gpus starts its own processes; use it without torchrun.")
    if len(set(slots_wanted)) != len(slots_wanted):
        raise ArchbenchError(f"--gpus {gpus} names a GPU twice; give each GPU once.")
    slots = {gpu: gpu_slot(gpu) for gpu in slots_wanted}
    queued: queue.Queue = queue.Queue()
    for index, job in enumerate(jobs):
        queued.put((index, job))

    progress = job_progress(console)
    failures: list[str] = []
    results: dict[int, dict] = {}
    following: dict = {}  # bar -> the opened file of its running job
    drawing = threading.Lock()

    def worker(gpu: str, folder: Path) -> None:
        env, device = slots[gpu]

        def show(line: str) -> None:
            progress.console.print(f"[dim]gpu {gpu}[/] {escape(line)}", highlight=False)

        while True:
            try:
                index, job = queued.get_nowait()
            except queue.Empty:
                return
            job_file = write_job(job, folder / f"{index}.json", device)
            task = progress.add_task(f"gpu {gpu}: {label(job)}", total=None, state="starting")
            following[task] = opened_file(job_file)
            code, _ = run_child(job_command(job_file), {**os.environ, **env}, show)
            with drawing:
                del following[task]
            show_job(progress, task, opened_file(job_file))
            progress.update(task, state="done" if code == 0 else f"[red]exit {code}")
            if code not in (0, DIVERGED_EXIT):  # a divergence is a result, which its record says
                failures.append(f"{label(job)} on gpu {gpu} (exit {code})")
            elif (summary := recorded_summary(opened_file(job_file))) is not None:
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
