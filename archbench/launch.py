"""`archbench run MODEL... --gpus 0,1,...`: a sweep on one machine, one model-and-seed per GPU at a time.

Each job is its own `archbench run` process pinned to one GPU (CUDA_VISIBLE_DEVICES), writing its own
run record exactly as a single run would, so crash recovery and skipping of finished runs work the
same. Jobs are queued: a GPU that finishes takes the next one. The parent draws one progress bar per
job from the children's epoch lines and prints those lines above the bars.
"""

from __future__ import annotations

import os
import queue
import re
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console

from archbench import runs
from archbench.config import RunRequest, cli_fields, flag
from archbench.errors import DIVERGED_EXIT, ArchbenchError
from archbench.progress import job_progress, results_table

EPOCH_LINE = re.compile(r" epoch (\d+)/(\d+):")
# RunRequest fields that are not passed through to a child as they are.
NOT_PASSED = {
    "models",
    "seeds",
    "gpus",
    "device",
    "quiet",
    "launcher",
    "cluster",
    "partition",
    "time_limit",
    "gpus_per_job",
    "cpus_per_job",
    "slurm_param",
    "wait",
}


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


def child_args(request: RunRequest, model: str, seed: int, device: str) -> list[str]:
    """The `archbench run` command line that does one job of `request`: every option it was given."""
    args = [sys.executable, "-m", "archbench", "run", model, "--seed", str(seed), "--device", device, "--quiet"]
    for f in cli_fields(RunRequest):
        value = getattr(request, f.name)
        if f.name in NOT_PASSED or f.metadata["argument"] or value is None:
            continue
        names = f.metadata["flags"][0].split("/") if f.metadata["flags"] else [flag(f)]
        if isinstance(value, bool):
            if len(names) == 2:  # --x/--no-x
                args.append(names[0] if value else names[1])
            elif value:
                args.append(names[0])
        elif isinstance(value, list):
            for item in value:
                args += [names[0], str(item)]
        else:
            args += [names[0], str(value)]
    return args


@dataclass(frozen=True)
class Job:
    """One (model, seed) run of a request: what a GPU slot or a cluster job runs as `archbench run`."""

    request: RunRequest
    model: str
    seed: int

    @property
    def label(self) -> str:
        lr = f" lr {self.request.lr}" if self.request.tuning_trial else ""
        return f"{self.model} s{self.seed}{lr}"

    def command(self, device: str) -> list[str]:
        return child_args(self.request, self.model, self.seed, device)


def jobs_of(requests: list[RunRequest]) -> list[Job]:
    return [Job(r, model, seed) for r in requests for model in r.models for seed in r.seeds]


def recorded_summary(out: Path, model: str, output: str) -> dict | None:
    """The summary of the run a child `archbench run --quiet` reported in `output` (its last run id)."""
    ids = runs.RUN_ID.findall(output)
    if not ids:
        return None
    try:
        return runs.read_json(out / model / ids[-1] / runs.SUMMARY)
    except (OSError, ValueError):
        return None


def run_on_gpus(jobs: list[Job], gpus: str, out: Path, console: Console) -> list[dict]:
    """Run every job as its own `archbench run` process, one per GPU at a time, and return their summaries."""
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

    def worker(gpu: str) -> None:
        env, device = slots[gpu]
        while True:
            try:
                index, job = queued.get_nowait()
            except queue.Empty:
                return
            task = progress.add_task(f"gpu {gpu}: {job.label}", total=None, state="starting")
            proc = subprocess.Popen(
                job.command(device),
                env={**os.environ, **env},
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                bufsize=1,
            )
            output = []
            for line in proc.stdout:
                line = line.rstrip()
                output.append(line)
                if match := EPOCH_LINE.search(line):
                    progress.update(task, completed=int(match[1]), total=int(match[2]), state="training")
                if line:
                    progress.console.print(f"[dim]gpu {gpu}[/] {line}", highlight=False)
            code = proc.wait()
            progress.update(task, state="done" if code == 0 else f"[red]exit {code}")
            if code not in (0, DIVERGED_EXIT):  # a divergence is a result, which its record says
                failures.append(f"{job.label} on gpu {gpu} (exit {code})")
            elif (summary := recorded_summary(job.request.out, job.model, "\n".join(output))) is not None:
                results[index] = summary

    threads = [threading.Thread(target=worker, args=(gpu,), daemon=True) for gpu in slots_wanted]
    with progress:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    if failures:
        raise ArchbenchError(f"{len(failures)} job(s) failed: {'; '.join(failures)}; their output is above.")
    ordered = [results[i] for i in sorted(results)]
    console.print(results_table(ordered))
    return ordered
