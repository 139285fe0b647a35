"""`archbench run ... --launcher submitit`: every (model, seed) of a study as a cluster job of its own, whose
child runs its job file as a --gpus sweep's does (`archbench.launch`), so resuming, skipping finished runs and
the records are the training loop's (docs/cluster.md: job arrays, preemption, time limits, --gpus-per-job).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import signal
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import Progress

from archbench import distributed, launch
from archbench.config import CLUSTERS, LAUNCHERS, RunRequest
from archbench.errors import DIVERGED_EXIT, ArchbenchError, not_installed
from archbench.progress import job_progress, results_table

MAX_TIMEOUTS = 10  # requeues after reaching the time limit (preemptions do not count)
LOG_FOLDER = ".submitit"  # under --out: submitit's pickles, each job's stdout and stderr, and the job files
POLL_SECONDS = {"slurm": 15.0, "local": 1.0}
NOT_SHARED = ("/tmp", "/var/tmp", "/dev/shm")
LOCAL_FILESYSTEMS = {"tmpfs", "ramfs", "devtmpfs", "overlay", "ext2", "ext3", "ext4", "xfs", "btrfs", "f2fs", "zfs"}


@dataclass
class TrainingJob:
    """What one cluster job runs: the child of one job file, as a callable submitit pickles. `checkpoint`
    makes it requeueable: the requeued job runs the same job file, which resumes the run."""

    label: str
    command: list[str]
    env: dict[str, str]
    opened: str  # where the child names its run folder
    log: str  # the child's output alone, which --wait shows (submitit's lines are in the job's own log)

    def __call__(self) -> dict | None:
        """Run the child, its output copied to `log`; the summary of its run, or None if none was recorded."""
        with open(self.log, "a", encoding="utf-8") as log:

            def show(line: str) -> None:
                print(line, flush=True)
                print(line, file=log, flush=True)

            code, last = launch.run_child(self.command, {**os.environ, **self.env}, show, preexec_fn=ignore_stop)
        if code not in (0, DIVERGED_EXIT):  # a divergence is a result, which its record says
            raise RuntimeError(f"the run exited with code {code}: {last}")
        return launch.recorded_summary(Path(self.opened))

    def checkpoint(self, *args, **kwargs):
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, *args, **kwargs)


def ignore_stop() -> None:
    """In the child: SLURM signals every process of a job step, before a preemption or the time limit
    (submitit's SUBMITIT_PREEMPT_SIGNAL, default USR2) and when it stops the job (TERM). The job's wrapper
    decides: it requeues the job first and then kills it."""
    preemption = getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"))
    for signum in (preemption, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)


def _submitit():
    try:
        import submitit
    except ImportError:
        raise not_installed("--launcher submitit", "submitit", "slurm") from None
    return submitit


def check_request(request: RunRequest) -> None:
    """The launcher options that are wrong whatever the cluster says."""
    if request.launcher not in LAUNCHERS:
        raise ArchbenchError(f"unknown launcher '{request.launcher}'; use --launcher {' or '.join(LAUNCHERS)}.")
    if request.cluster not in CLUSTERS:
        raise ArchbenchError(f"unknown cluster '{request.cluster}'; use --cluster {' or '.join(CLUSTERS)}.")
    if request.gpus:
        raise ArchbenchError("--gpus runs a sweep on this machine and --launcher submits jobs; use one of them.")
    if distributed.torchrun_world_size() > 1:
        raise ArchbenchError(
            "--launcher submits jobs and returns; run it without torchrun "
            "(--gpus-per-job N runs torchrun inside each job)."
        )
    if request.fresh:
        raise ArchbenchError(
            "--fresh cannot be used with --launcher: a preempted job reruns its command to resume "
            "its run, and --fresh would start it over; use a new --out folder instead."
        )
    slurm_parameters(request.slurm_param)


def slurm_parameters(params: list[str] | None) -> dict[str, str]:
    """--slurm-param KEY=VALUE options as sbatch options (key without the leading dashes)."""
    out = {}
    for param in params or ():
        key, sep, value = param.partition("=")
        key = key.strip().lstrip("-")
        if not sep or not key:
            raise ArchbenchError(f"--slurm-param takes KEY=VALUE (e.g. account=myproj), not '{param}'.")
        out[key] = value.strip()
    return out


def filesystem_type(path: Path) -> str | None:
    """The type of the filesystem `path` is on, from /proc/self/mounts (None where that is not readable)."""
    try:
        mounts = [line.split() for line in Path("/proc/self/mounts").read_text().splitlines()]
    except OSError:
        return None
    best, kind = "", None
    for point, fstype in (fields[1:3] for fields in mounts if len(fields) >= 3):
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), point)  # "\040" is a space
        if (str(path) == point or str(path).startswith(point.rstrip("/") + "/")) and len(point) >= len(best):
            best, kind = point, fstype
    return kind


def shared_folder_warning(out: Path) -> str | None:
    """Why `out` does not look like a folder every node of a cluster writes to, or None."""
    path = out.resolve()
    if any(path == Path(p) or Path(p) in path.parents for p in NOT_SHARED):
        return f"--out {out} is under a temporary folder of this machine"
    kind = filesystem_type(path)
    return f"--out {out} is on a local {kind} filesystem" if kind in LOCAL_FILESYSTEMS else None


@dataclass
class Submitted:
    """A submitted job: where its child names its run folder, its child's log and how far it has been shown."""

    job: object  # a submitit Job
    label: str
    opened: Path
    log: Path
    log_offset: int = 0

    @property
    def job_id(self) -> str:
        return str(self.job.job_id)


def make_executor(request: RunRequest, folder: Path):
    submitit = _submitit()
    try:
        executor = submitit.AutoExecutor(
            folder=folder / "%j",
            cluster=request.cluster,
            slurm_max_num_timeout=MAX_TIMEOUTS,
            local_max_num_timeout=MAX_TIMEOUTS,
        )
    except RuntimeError:  # submitit found no srun
        raise ArchbenchError(
            "--cluster slurm needs SLURM (sbatch and srun), which this machine does not have: "
            "submit from a login node of the cluster, or use --cluster local."
        ) from None
    params = {
        "name": "archbench",
        "timeout_min": request.time_limit,
        "tasks_per_node": 1,  # one task: torchrun inside it starts the ranks (docs/cluster.md)
        "nodes": 1,
        "cpus_per_task": request.cpus_per_job,
    }
    if request.gpus_per_job or request.cluster == "local":  # local: no GPUs at all is CUDA_VISIBLE_DEVICES=""
        params["gpus_per_node"] = request.gpus_per_job
    if request.cluster == "slurm":
        if request.partition:
            params["slurm_partition"] = request.partition
        if extra := slurm_parameters(request.slurm_param):
            params["slurm_additional_parameters"] = extra
    try:
        executor.update_parameters(**params)
    except (ValueError, NameError, AssertionError) as e:
        raise ArchbenchError(f"submitit refused the job parameters: {sbatch_error(str(e))}") from None
    return executor


def sbatch_error(text: str) -> str:
    """What a refused submission's error output says, on one line: sbatch's "error:" lines, or its first."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [re.sub(r"^(sbatch|srun|slurm): error: ", "", line) for line in lines if "error:" in line.lower()]
    return "; ".join(errors) if errors else lines[0] if lines else "no reason given"


def _warn(console: Console, text: str) -> None:
    console.print(f"[yellow]warning:[/] {text}", highlight=False, soft_wrap=True)


def submit(jobs: list[RunRequest], request: RunRequest, console: Console) -> list[Submitted]:
    """Submit every job (a job array on SLURM) and print their ids; returns them as submitted."""
    check_request(request)
    if request.cluster == "slurm" and (problem := shared_folder_warning(request.out)):
        _warn(
            console,
            f"{escape(problem)}; jobs on other nodes cannot write there. Give --out a folder on the cluster's "
            "shared filesystem.",
        )
    if request.cluster == "local" and len(jobs) > 1 and request.gpus_per_job and request.device != "cpu":
        _warn(
            console,
            f"--cluster local starts all {len(jobs)} jobs at once, each on GPUs 0-{request.gpus_per_job - 1} "
            "of this machine; --gpus runs one job per GPU at a time.",
        )
    folder = request.out.resolve() / LOG_FOLDER  # a job may start in another folder than this command
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ArchbenchError(f"cannot make the --out folder {request.out}: {e.strerror or e}") from None
    executor = make_executor(request, folder)
    env = {"PYTHONUNBUFFERED": "1"}
    if request.cluster == "slurm" and "OMP_NUM_THREADS" not in os.environ:
        env["OMP_NUM_THREADS"] = str(max(1, request.cpus_per_job // max(1, request.gpus_per_job)))
    job_files = Path(tempfile.mkdtemp(prefix="jobs-", dir=folder))  # read on whichever node runs the job
    callables = []
    for index, job in enumerate(jobs):
        job_file = launch.write_job(job, job_files / f"{index}.json", request.device)
        command = launch.job_command(job_file, request.gpus_per_job)
        opened, log = launch.opened_file(job_file), job_file.with_suffix(".log")
        callables.append(TrainingJob(launch.label(job), command, env, str(opened), str(log)))
    submitted = []
    stderr = io.StringIO()  # submitit prints sbatch's whole error output: the one line below says it
    errors = _submitit().core.utils
    try:
        with contextlib.redirect_stderr(stderr), executor.batch():
            for fn in callables:
                submitted.append(Submitted(executor.submit(fn), fn.label, Path(fn.opened), Path(fn.log)))
    except (errors.FailedJobError, errors.FailedSubmissionError, OSError) as e:  # sbatch refused, or is missing
        raise ArchbenchError(
            f"{request.cluster} refused the jobs: {sbatch_error(str(e) or stderr.getvalue())}"
        ) from None
    partition = f" partition {request.partition}" if request.partition else ""
    where = f"SLURM{partition}" if request.cluster == "slurm" else "this machine (--cluster local)"
    console.print(
        f"submitted {len(submitted)} job{'s' * (len(submitted) != 1)} to {where}: {request.time_limit} min, "
        f"{request.gpus_per_job} GPU(s) and {request.cpus_per_job} CPUs each; logs in {escape(str(folder))}",
        highlight=False,
        soft_wrap=True,
    )
    for s in submitted:
        console.print(f"  {s.label}: job {s.job_id}", highlight=False, soft_wrap=True)
    return submitted


def read_new_lines(s: Submitted) -> list[str]:
    """The complete lines the child's log gained since the last call."""
    try:
        with open(s.log, "rb") as f:
            f.seek(s.log_offset)
            chunk = f.read()
    except OSError:
        return []
    complete = chunk[: chunk.rfind(b"\n") + 1]
    s.log_offset += len(complete)
    return complete.decode(errors="replace").splitlines()


def wait(submitted: list[Submitted], request: RunRequest, console: Console) -> list[dict]:
    """Show every job's progress and log until all have ended; their runs' summaries, in the order submitted."""
    progress = job_progress(console)
    tasks = {
        s.job_id: progress.add_task(f"{s.label} [dim]{s.job_id}[/]", total=None, state="queued") for s in submitted
    }
    outcomes: dict[str, dict | None] = {}
    failures: list[str] = []
    pending = list(submitted)
    try:
        with progress:
            while pending:
                for s in list(pending):
                    follow(s, progress, tasks[s.job_id])
                    if not s.job.done():
                        continue
                    follow(s, progress, tasks[s.job_id])  # the lines written just before it ended
                    pending.remove(s)
                    summary, problem = outcome(s)
                    outcomes[s.job_id] = summary
                    progress.update(tasks[s.job_id], state=summary["status"] if summary else "[red]failed")
                    if problem:
                        failures.append(f"{s.label} (job {s.job_id}): {problem}")
                if pending:
                    time.sleep(POLL_SECONDS[request.cluster])
    except KeyboardInterrupt:
        console.print(
            f"stopped waiting; the jobs go on. `archbench status --runs {request.out}` shows where they are.",
            highlight=False,
            soft_wrap=True,
        )
        raise
    results = [summary for s in submitted if (summary := outcomes.get(s.job_id)) is not None]
    if results:
        console.print(results_table(results))
    if failures:
        raise ArchbenchError(
            f"{len(failures)} job(s) failed: {'; '.join(failures)}; their logs are in "
            f"{request.out.resolve() / LOG_FOLDER}."
        )
    return results


def follow(s: Submitted, progress: Progress, task) -> None:
    """Show the lines the child's log gained, and draw its bar from its run folder (its state before then)."""
    for line in read_new_lines(s):
        if line.strip():
            progress.console.print(f"[dim]{s.job_id}[/] {escape(line)}", highlight=False, soft_wrap=True)
    if not launch.show_job(progress, task, s.opened):
        progress.update(task, state=str(getattr(s.job, "state", "")).lower() or "queued")


def outcome(s: Submitted) -> tuple[dict | None, str | None]:
    """An ended job's run summary, or why there is none."""
    if (error := s.job.exception()) is not None:
        return None, failure_reason(str(error))
    summary = s.job.result()
    return summary, (None if summary is not None else "it ended without a run record")


def failure_reason(text: str) -> str:
    """One line of a failed job's error: the exception its traceback ends with, else the error's first line."""
    parts = text.split("-" * 22)
    lines = [line.strip() for line in (parts[1] if len(parts) >= 3 else text).splitlines() if line.strip()]
    if len(parts) >= 3 and lines:  # submitit puts the job's traceback between two dashed lines
        return re.sub(r"^[\w.]*(Error|Exception): ", "", lines[-1])
    return lines[0] if lines else "no reason given"


def submit_runs(jobs: list[RunRequest], request: RunRequest, console: Console | None = None) -> list[dict]:
    """`archbench run --launcher submitit`: submit `jobs` (every model x seed, or every tuning trial); with
    --wait, return their runs' summaries like `archbench.study.run_models`, else [] at once."""
    console = console or Console()
    submitted = submit(jobs, request, console)
    if not request.wait:
        console.print(f"follow them with `archbench status --runs {request.out}`", highlight=False, soft_wrap=True)
        return []
    return wait(submitted, request, console)
