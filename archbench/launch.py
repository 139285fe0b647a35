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
from dataclasses import fields
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from archbench import runs
from archbench.errors import DIVERGED_EXIT, ArchbenchError
from archbench.provenance import utc_now

EPOCH_LINE = re.compile(r" epoch (\d+)/(\d+):")
# RunRequest fields that are not passed through to a child as they are.
NOT_PASSED = {"models", "seeds", "gpus", "device", "quiet"}


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


def child_args(request, model: str, seed: int, device: str) -> list[str]:
    """The `archbench run` command line that does one job of `request`."""
    args = [sys.executable, "-m", "archbench", "run", model, "--seed", str(seed), "--device", device, "--quiet"]
    for f in fields(request):
        value = getattr(request, f.name)
        flag = "--" + f.name.replace("_", "-")
        if f.name in NOT_PASSED or value is None:
            continue
        if f.name == "channels_last":
            args.append("--channels-last" if value else "--no-channels-last")
        elif value is False:
            continue
        elif f.name == "thresholds":
            for t in value:
                args += ["--threshold", str(t)]
        elif value is True:
            args.append(flag)
        else:
            args += [flag, str(value)]
    return args


def _newest_summary(out: Path, model: str, seed: int, since: str) -> dict | None:
    """The summary of this sweep's job for (model, seed): one finished at or after `since`, else (the
    job found its run already recorded and skipped it) the newest one."""
    found = []
    for summary in (out / model).glob("*/summary.json"):
        if runs.read_json(summary.parent / "config.json").get("seed") == seed:
            found.append(runs.read_json(summary))
    fresh = [s for s in found if s.get("finished_at", "") >= since]
    return max(fresh or found, key=lambda s: s["finished_at"], default=None)


def run_on_gpus(request, console: Console) -> list[dict]:

    gpus = [g.strip() for g in request.gpus.split(",") if g.strip()]
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ArchbenchError("--gpus starts its own processes; use it without torchrun.")
    if len(set(gpus)) != len(gpus):
        raise ArchbenchError(f"--gpus {request.gpus} names a GPU twice; give each GPU once.")
    since = utc_now()
    slots = {gpu: gpu_slot(gpu) for gpu in gpus}
    jobs: queue.Queue = queue.Queue()
    for model in request.models:
        for seed in request.seeds:
            jobs.put((model, seed))

    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[state]}"), TimeElapsedColumn(), console=console)
    failures: list[str] = []

    def worker(gpu: str) -> None:
        env, device = slots[gpu]
        while True:
            try:
                model, seed = jobs.get_nowait()
            except queue.Empty:
                return
            task = progress.add_task(f"gpu {gpu}: {model} s{seed}", total=None, state="starting")
            proc = subprocess.Popen(child_args(request, model, seed, device), env={**os.environ, **env},
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
            for line in proc.stdout:
                line = line.rstrip()
                if match := EPOCH_LINE.search(line):
                    progress.update(task, completed=int(match[1]), total=int(match[2]), state="training")
                if line:
                    progress.console.print(f"[dim]gpu {gpu}[/] {line}", highlight=False)
            code = proc.wait()
            progress.update(task, state="done" if code == 0 else f"[red]exit {code}")
            if code not in (0, DIVERGED_EXIT):  # a divergence is a result, which its record says
                failures.append(f"{model} s{seed} on gpu {gpu} (exit {code})")

    threads = [threading.Thread(target=worker, args=(gpu,), daemon=True) for gpu in gpus]
    with progress:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    results = [s for model in request.models for seed in request.seeds
               if (s := _newest_summary(request.out, model, seed, since)) is not None]
    if failures:
        raise ArchbenchError(f"{len(failures)} job(s) failed: {'; '.join(failures)}; their output is above.")
    from archbench.train import results_table

    console.print(results_table(results))
    return results
