"""`archbench run ... --launcher submitit`: every (model, seed) of a study as a cluster job of its own.

Each job runs the ordinary `archbench run MODEL --seed S ...` command of its (model, seed), built by
`archbench.launch` like a --gpus sweep's, so it writes the ordinary run record into the shared --out
folder: resuming, skipping finished runs and the records themselves are the training loop's, not this
module's. Several jobs go to SLURM as one job array (`executor.batch()`).

Preemption and time limits: SLURM signals a job (USR2) 90 s before its time limit, and before a
preemption where the cluster sets SlurmctldParameters=preempt_send_user_signal. submitit then calls the
job's `checkpoint()`, which hands back the same job, and requeues it; the requeued job runs the same
command again, which resumes the run from its last epoch checkpoint (at most one epoch is redone). The
`archbench run` process itself ignores that signal and SIGTERM, so it is stopped by this job's wrapper
alone, after submitit has recorded the requeue. A job that times out more than `MAX_TIMEOUTS` times is
left stopped: rerun the same `archbench run` command to continue it.

GPUs: with --gpus-per-job N > 1 the job is one SLURM task that starts `torchrun --standalone
--nproc-per-node N`, so each GPU is a DistributedDataParallel rank and the run is recorded once, as
under a hand-started torchrun (--batch-size is per GPU). One task rather than N tasks keeps torchrun in
charge of the ranks: a rank that fails ends the others, and the resume path is the one torchrun runs
already use.

`--cluster local` runs the jobs as processes on this machine (submitit's LocalExecutor): every job
starts at once, so it is for trying a setup and for tests; a one-machine sweep is `--gpus`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import Progress

from archbench import launch, runs
from archbench.config import CLUSTERS, LAUNCHERS, RunRequest
from archbench.errors import DIVERGED_EXIT, ArchbenchError
from archbench.progress import job_progress, results_table
from archbench.provenance import utc_now

MAX_TIMEOUTS = 10  # requeues after reaching the time limit (preemptions do not count)
LOG_FOLDER = ".submitit"  # under --out: submitit's pickles and each job's stdout and stderr
POLL_SECONDS = {"slurm": 15.0, "local": 1.0}
NOT_SHARED = ("/tmp", "/var/tmp", "/dev/shm")
LOCAL_FILESYSTEMS = {"tmpfs", "ramfs", "devtmpfs", "overlay", "ext2", "ext3", "ext4", "xfs", "btrfs", "f2fs", "zfs"}
INSTALL = "pip install 'archbench[slurm]'"


# ------------------------------------------------------------------------------------------ the job


@dataclass
class TrainingJob:
    """What one cluster job runs: the `archbench run` command of one (model, seed), as a callable submitit
    pickles. `checkpoint` makes it requeueable (submitit calls it on preemption and near the time limit):
    the requeued job runs the same command, which resumes the run."""

    label: str
    model: str
    seed: int
    out: str
    command: list[str]
    env: dict[str, str]
    started_at: str | None = None  # when the job first ran (kept across requeues)

    def __call__(self) -> dict | None:
        """Run the command; the run's summary (its run id is in the output), or None if none was recorded."""
        self.started_at = self.started_at or utc_now()
        code, output = run_command(self.command, {**os.environ, **self.env})
        if code not in (0, DIVERGED_EXIT):  # a divergence is a result, which its record says
            last = next((line for line in reversed(output) if line.strip()), "")
            raise RuntimeError(f"`archbench run` exited with code {code}: {last.strip()}")
        return launch.recorded_summary(Path(self.out), self.model, "\n".join(output)) or newest_summary(
            Path(self.out), self.model, self.seed, self.started_at
        )

    def checkpoint(self, *args, **kwargs):
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, *args, **kwargs)


def preemption_signal() -> int:
    """The signal submitit handles as "checkpoint and requeue" (SUBMITIT_PREEMPT_SIGNAL, default USR2)."""
    return getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"))


def _ignore_stop_signals() -> None:
    # SLURM signals every process of a job step, before a preemption or the time limit (USR2) and when it
    # stops the job (TERM). The run leaves the decision to this job's wrapper, which requeues the job first.
    for signum in (preemption_signal(), signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)


def run_command(command: list[str], env: dict[str, str]) -> tuple[int, list[str]]:
    """Run `command`, passing its output on (to this job's log) and keeping it. If this wrapper exits first
    (submitit's requeue exits through here), the command is killed: its run resumes from the checkpoint
    of its last epoch, which like every record file is replaced atomically."""
    proc = subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
        preexec_fn=_ignore_stop_signals,
    )
    output = []
    try:
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            output.append(line.rstrip("\n"))
        return proc.wait(), output
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def newest_summary(out: Path, model: str, seed: int, since: str) -> dict | None:
    """The summary of (model, seed) recorded at or after `since`, else the newest one (a skipped run)."""
    found = []
    for path in (out / model).glob(f"*/{runs.SUMMARY}"):
        try:
            if runs.read_json(path.parent / runs.CONFIG).get("seed") == seed:
                found.append(runs.read_json(path))
        except (OSError, ValueError, AttributeError):
            continue
    fresh = [s for s in found if s.get("finished_at", "") >= since]
    return max(fresh or found, key=lambda s: s.get("finished_at", ""), default=None)


# ------------------------------------------------------------------------------------------ checks


def _submitit():
    try:
        import submitit
    except ImportError:
        raise ArchbenchError(f"--launcher submitit needs submitit, which is not installed: {INSTALL}") from None
    return submitit


def check_request(request: RunRequest) -> None:
    """The launcher options that are wrong whatever the cluster says."""
    if request.launcher not in LAUNCHERS:
        raise ArchbenchError(f"unknown launcher '{request.launcher}'; use --launcher {' or '.join(LAUNCHERS)}.")
    if request.cluster not in CLUSTERS:
        raise ArchbenchError(f"unknown cluster '{request.cluster}'; use --cluster {' or '.join(CLUSTERS)}.")
    if request.gpus:
        raise ArchbenchError("--gpus runs a sweep on this machine and --launcher submits jobs; use one of them.")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
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
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return None
    best, kind = "", None
    for line in mounts:
        fields = line.split()
        if len(fields) < 3:
            continue
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), fields[1])  # "\040" is a space
        if (str(path) == point or str(path).startswith(point.rstrip("/") + "/")) and len(point) >= len(best):
            best, kind = point, fields[2]
    return kind


def shared_folder_warning(out: Path) -> str | None:
    """Why `out` does not look like a folder every node of a cluster writes to, or None."""
    path = out.resolve()
    if any(path == Path(p) or Path(p) in path.parents for p in NOT_SHARED):
        return f"--out {out} is under a temporary folder of this machine"
    kind = filesystem_type(path)
    if kind in LOCAL_FILESYSTEMS:
        return f"--out {out} is on a local {kind} filesystem"
    return None


# ------------------------------------------------------------------------------------------ submitting


@dataclass
class Submitted:
    """A submitted job, with where its log is and how far its log has been read."""

    job: object  # a submitit Job
    label: str
    model: str
    log_offset: int = 0
    epochs: tuple[int, int] | None = None
    resumed: bool = False

    @property
    def job_id(self) -> str:
        return str(self.job.job_id)

    @property
    def log(self) -> Path:
        return Path(self.job.paths.stdout)


def job_environment(request: RunRequest) -> dict[str, str]:
    env = {"PYTHONUNBUFFERED": "1"}
    if request.cluster == "slurm" and "OMP_NUM_THREADS" not in os.environ:
        env["OMP_NUM_THREADS"] = str(max(1, request.cpus_per_job // max(1, request.gpus_per_job)))
    return env


def job_command(job: launch.Job, request: RunRequest) -> list[str]:
    """The job's `archbench run` command; under torchrun when the job has more than one GPU."""
    command = job.command(request.device)
    if request.gpus_per_job > 1:  # [python, -m, archbench, run, ...] -> [python, -m, torch.distributed.run, ...]
        command = [
            command[0],
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            str(request.gpus_per_job),
            *command[1:],
        ]
    return command


def absolute(request: RunRequest) -> RunRequest:
    """`request` with its paths made absolute: a job may start in another folder than this command."""
    paths = {
        f.name: value.resolve()
        for f in dataclasses.fields(request)
        if isinstance(value := getattr(request, f.name), Path)
    }
    from archbench.data.sources import builtin_names

    if request.data not in (None, *builtin_names()) and Path(request.data).exists():
        paths["data"] = str(Path(request.data).resolve())
    return dataclasses.replace(request, **paths)


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
        "tasks_per_node": 1,
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


def submit(jobs: list[launch.Job], request: RunRequest, console: Console) -> list[Submitted]:
    """Submit every job (a job array on SLURM) and print their ids; returns them as submitted."""
    check_request(request)
    if request.cluster == "slurm" and (problem := shared_folder_warning(request.out)):
        console.print(
            f"[yellow]warning:[/] {escape(problem)}; jobs on other nodes cannot write there. Give --out a "
            "folder on the cluster's shared filesystem.",
            highlight=False,
            soft_wrap=True,
        )
    if request.cluster == "local" and len(jobs) > 1 and request.gpus_per_job and request.device != "cpu":
        console.print(
            f"[yellow]warning:[/] --cluster local starts all {len(jobs)} jobs at once, each on GPUs "
            f"0-{request.gpus_per_job - 1} of this machine; --gpus runs one job per GPU at a time.",
            highlight=False,
            soft_wrap=True,
        )
    request = absolute(request)
    try:
        request.out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ArchbenchError(f"cannot make the --out folder {request.out}: {e.strerror or e}") from None
    folder = request.out / LOG_FOLDER
    executor = make_executor(request, folder)
    env = job_environment(request)
    callables = []
    for job in jobs:
        job = dataclasses.replace(job, request=absolute(job.request))
        callables.append(
            TrainingJob(
                label=job.label,
                model=job.model,
                seed=job.seed,
                out=str(job.request.out),
                command=job_command(job, request),
                env=env,
            )
        )
    submitted = []
    stderr = io.StringIO()  # submitit prints sbatch's whole error output: the one line below says it
    errors = _submitit().core.utils
    try:
        with contextlib.redirect_stderr(stderr), executor.batch():
            for fn in callables:
                submitted.append(Submitted(executor.submit(fn), fn.label, fn.model))
    except (errors.FailedJobError, errors.FailedSubmissionError, OSError) as e:  # sbatch refused, or is missing
        reason = sbatch_error(str(e) or stderr.getvalue())
        raise ArchbenchError(f"{request.cluster} refused the jobs: {reason}") from None
    where = (
        f"SLURM{f' partition {request.partition}' if request.partition else ''}"
        if request.cluster == "slurm"
        else "this machine (--cluster local)"
    )
    console.print(
        f"submitted {len(submitted)} job{'s' * (len(submitted) != 1)} to {where}: {request.time_limit} min, "
        f"{request.gpus_per_job} GPU(s) and {request.cpus_per_job} CPUs each; logs in {escape(str(folder))}",
        highlight=False,
        soft_wrap=True,
    )
    for s in submitted:
        console.print(f"  {s.label}: job {s.job_id}", highlight=False, soft_wrap=True)
    return submitted


# ------------------------------------------------------------------------------------------ waiting


def read_new_lines(s: Submitted) -> list[str]:
    """The complete lines the job's log gained since the last call."""
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
    """Show every job's progress (from the epoch lines of its log) until all have ended; returns the
    summaries of their runs, in the order submitted, as `archbench run` does."""
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
                    state = summary["status"] if summary else "[red]failed"
                    progress.update(tasks[s.job_id], state=state)
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
    for line in read_new_lines(s):
        if not line.startswith(f"{s.model} s"):  # the run's own lines (epochs, resume, end), not its tables
            continue
        if match := launch.EPOCH_LINE.search(line):
            s.epochs = (int(match[1]), int(match[2]))
        s.resumed = s.resumed or "resuming after step" in line
        progress.console.print(f"[dim]{s.job_id}[/] {escape(line)}", highlight=False, soft_wrap=True)
    state = "resumed" if s.resumed else "running" if s.log_offset else str(getattr(s.job, "state", "")).lower()
    if s.epochs:
        progress.update(task, completed=s.epochs[0], total=s.epochs[1], state=state)
    else:
        progress.update(task, state=state or "queued")


def outcome(s: Submitted) -> tuple[dict | None, str | None]:
    """An ended job's run summary, or why there is none."""
    error = s.job.exception()
    if error is not None:
        return None, failure_reason(str(error))
    summary = s.job.result()
    if summary is None:
        return None, "it ended without a run record"
    return summary, None


def failure_reason(text: str) -> str:
    """One line of a failed job's error: the exception its traceback ends with, else the error's first line."""
    parts = text.split("-" * 22)
    lines = [line.strip() for line in (parts[1] if len(parts) >= 3 else text).splitlines() if line.strip()]
    if len(parts) >= 3 and lines:  # submitit puts the job's traceback between two dashed lines
        return re.sub(r"^[\w.]*(Error|Exception): ", "", lines[-1])
    return lines[0] if lines else "no reason given"


def submit_runs(jobs: list[launch.Job], request: RunRequest, console: Console | None = None) -> list[dict]:
    """`archbench run --launcher submitit`: submit `jobs` (every model x seed; `archbench tune`: every trial)
    as cluster jobs and print their ids. With --wait, show their progress and return their runs' summaries
    like `archbench.train.run_models`; without, return [] at once."""
    console = console or Console()
    submitted = submit(jobs, request, console)
    if not request.wait:
        console.print(f"follow them with `archbench status --runs {request.out}`", highlight=False, soft_wrap=True)
        return []
    return wait(submitted, request, console)
