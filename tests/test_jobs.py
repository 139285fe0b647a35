"""The loop below the study: `archbench.train` imports nothing that dispatches runs; a job reaches its child as a
file (`archbench.launch.write_job`, `archbench.study.run_job`) and comes back through its run folder, never
through the child's output."""

from __future__ import annotations

import ast
import json
from pathlib import Path

from conftest import tiny_run_request
from rich.console import Console
from rich.progress import Progress

from archbench import launch, runs, study, train
from archbench.errors import DIVERGED_EXIT

ABOVE_THE_LOOP = {"cluster", "launch", "tuning", "tune", "study", "report"}


def archbench_modules(source: str) -> set[str]:
    """The archbench modules `source` imports, anywhere in it: `from archbench import x` and
    `from archbench.x import y` both name x."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {name.split(".")[1] for name in names if name.startswith("archbench.")}


def test_the_loop_imports_nothing_that_launches_sweeps_tunes_or_reports():
    assert archbench_modules("from archbench import tuning\nfrom archbench.report.x import y") == {"tuning", "report"}
    assert not archbench_modules(Path(train.__file__).read_text()) & ABOVE_THE_LOOP


def job_file(tiny_registry, tiny_data, tmp_path, **settings) -> Path:
    (job,) = launch.jobs_of([tiny_run_request(tiny_registry, tiny_data, tmp_path / "runs", **settings)])
    return launch.write_job(job, tmp_path / "jobs" / "0.json", "cpu")


def test_a_job_comes_back_through_its_run_folder_never_its_output(tiny_registry, tiny_data, tmp_path, capsys):
    path = job_file(tiny_registry, tiny_data, tmp_path, epochs=1)
    opened = launch.opened_file(path)
    progress = Progress(console=Console(quiet=True))
    task = progress.add_task("job", total=None, state="starting")
    assert not launch.show_job(progress, task, opened)  # the child has opened no run yet

    (first,) = study.run_job(path)  # what it prints is not read: it went to capsys
    (run,) = (tmp_path / "runs" / "tiny_resnet").iterdir()
    summary = launch.recorded_summary(opened)
    assert summary == json.loads((run / "summary.json").read_text()) == first and summary["status"] == "completed"
    assert launch.show_job(progress, task, opened)
    bar = progress.tasks[0]
    assert (bar.completed, bar.total, bar.fields["state"]) == (1, 1, "training")  # from metrics.csv and config.json

    opened.unlink()
    assert study.run_job(path) == [summary] and launch.recorded_summary(opened) == summary  # skipped, and named


def test_a_run_that_picks_up_a_checkpoint_is_shown_resumed(tmp_path):
    run = tmp_path / "runs" / "m" / "run"
    run.mkdir(parents=True)
    config = {"model": "m", "seed": 0, "recipe": {"epochs": 4, "lr": 0.1}}
    (run / "config.json").write_text(
        json.dumps({**config, "config_hash": runs.config_hash(config), "schema_version": runs.SCHEMA_VERSION})
    )
    row = {c: 1 for c in runs.METRICS_COLUMNS} | {"schema_version": runs.SCHEMA_VERSION}
    runs.write_csv(run / runs.METRICS, runs.METRICS_COLUMNS, [row])
    opened = tmp_path / "0.run.json"
    launch.JobLog(Console(quiet=True), tmp_path / "runs", opened).start("m s0", 4, 6, 6, run_path=run)
    progress = Progress(console=Console(quiet=True))
    task = progress.add_task("job", total=None, state="starting")
    assert launch.show_job(progress, task, opened)
    bar = progress.tasks[0]
    assert (bar.completed, bar.total, bar.fields["state"]) == (1, 4, "resumed")


def test_a_job_exits_as_archbench_run_does(tiny_registry, tiny_data, tmp_path, capsys):
    diverging = job_file(tiny_registry, tiny_data, tmp_path, models=("tiny_vgg",), lr="1e6", clip_grad_norm=0, epochs=1)
    assert study.main(str(diverging)) == DIVERGED_EXIT
    missing = job_file(tiny_registry, tmp_path / "no-data", tmp_path)
    assert study.main(str(missing)) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: ") and "no prepared data" in line
