"""`archbench report`: REPORT.md, its figures and CSVs from the recorded runs. `SECTIONS` is the one list of
the report's numbered sections, in order; how the report is built is in docs/report.md."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from archbench import runs as records
from archbench.config import BENCH_DIR, GPU_RESULTS_FILE, LATENCY_FILE, REPORT_FILE, RUNS_DIR
from archbench.report import figures
from archbench.report.claims import build_claims
from archbench.report.depth import depth_section
from archbench.report.discussion import discussion_section
from archbench.report.gradient_measures import early_window
from archbench.report.load import reset_schema_notes
from archbench.report.sections import (
    accuracy_section,
    architectures_section,
    convergence_section,
    early_training_section,
    figures_section,
    header_section,
    methods_section,
    notes_section,
    provenance_section,
    run_records_section,
)
from archbench.report.sensitivity import sensitivity_section
from archbench.report.study import FigureFiles, Inputs, Study, load_study, results_table
from archbench.report.summary import summary_section
from archbench.report.text import wrap_prose


def _summary_then_notes(study: Study) -> str:
    """The first screen, then the notes on the records and the regenerate command (kept off the first screen)."""
    return f"{summary_section(study)}\n\n{notes_section(study)}"


# (title, section): each section returns its markdown without the heading, or None to leave itself out.
SECTIONS = (
    ("Summary", _summary_then_notes),
    ("Methods", methods_section),
    ("Provenance", provenance_section),
    ("Architectures", architectures_section),
    ("Accuracy", accuracy_section),
    ("Depth: plain against residual", depth_section),
    ("Convergence", convergence_section),
    ("Learning-rate sensitivity", sensitivity_section),
    ("Early training", early_training_section),
    ("Figures", figures_section),
    ("Discussion", discussion_section),
    ("Run records", run_records_section),
)


# the figures' file names after the report's stem, in the order of `FigureFiles`
FIGURES = (
    "training-curves",
    "gradnorm-depth",
    "gradient-cosine",
    "lr-sensitivity",
    "accuracy-cost",
    "performance-profile",
)


def render(study: Study) -> str:
    """The report's markdown: the header, then every section that has something to say, numbered."""
    parts = [header_section(study)]
    bodies = [(title, section(study)) for title, section in SECTIONS]
    for number, (title, body) in enumerate(((t, b) for t, b in bodies if b is not None), start=1):
        parts.append(f"## {number}. {title}\n\n{body}")
    return wrap_prose("\n\n".join(parts)) + "\n"


def write_table(path: Path, table) -> None:
    """A CSV beside the report, numbers at a fixed precision so the same runs give the same bytes."""
    records.write_text(path, table.to_csv(index=False, float_format="%.6g", lineterminator="\n"))


def _command(paths: dict[str, Path], labels: dict[str, str]) -> str:
    """`archbench report` as run from the report's folder, with every option whose path differs from its
    default (RUNS_DIR there; the others in the runs folder's project, as the CLI defaults them)."""
    project = paths["--runs"].resolve().parent
    defaults = {
        "--report": project / REPORT_FILE,
        "--benchmarks": project / LATENCY_FILE,
        "--bench-results": project / BENCH_DIR,
        "--gpu-results": project / GPU_RESULTS_FILE,
    }
    options = [f"--runs {labels['--runs']}"] if labels["--runs"] != RUNS_DIR.as_posix() else []
    options += [f"{flag} {labels[flag]}" for flag, default in defaults.items() if paths[flag].resolve() != default]
    return " ".join(["archbench report", *options])


def write_report(
    runs_dir: Path,
    out: Path,
    benchmarks: Path = LATENCY_FILE,
    bench_results: Path = BENCH_DIR,
    gpu_results: Path = GPU_RESULTS_FILE,
) -> Path:
    """Write REPORT.md (and its PNG figures beside it) from the run records under `runs_dir`, the forward
    latency in `benchmarks`, the `archbench bench` results in the folder `bench_results` and the GPU
    results file `gpu_results` (each optional: the report says what was not measured)."""
    out = Path(out)
    base = out.parent

    def relative(path: Path) -> str:
        return Path(os.path.relpath(Path(path).resolve(), base.resolve())).as_posix()

    paths = {
        "--runs": Path(runs_dir),
        "--report": out,
        "--benchmarks": Path(benchmarks),
        "--bench-results": Path(bench_results),
        "--gpu-results": Path(gpu_results),
    }
    labels = {flag: relative(path) for flag, path in paths.items()}
    read = ("--runs", "--benchmarks", "--bench-results", "--gpu-results")  # in the order of `Inputs`' fields
    inputs = Inputs(
        *(paths[flag] for flag in read),
        *(labels[flag] for flag in read),
        command=_command(paths, labels),
        relative=relative,
    )
    files = FigureFiles(*(f"{out.stem}-{name}.png" for name in FIGURES))
    reset_schema_notes()
    study = load_study(inputs, files)
    study = dataclasses.replace(study, claims=build_claims(study))
    results = results_table(study.runs, study.identical)
    base.mkdir(parents=True, exist_ok=True)
    write_table(base / f"{out.stem}-claims.csv", study.claims)
    write_table(base / f"{out.stem}-results.csv", results)
    window = early_window(study.gradients.steps)
    counted_results = results[results["label"].isin(study.labels)]
    figures.plot_training_curves(study.curves, study.labels, base / files.curves)
    figures.plot_accuracy_vs_cost(counted_results, study.labels, base / files.accuracy_cost)
    figures.plot_performance_profile(counted_results, study.labels, study.main_threshold, base / files.profile)
    figures.plot_gradient_size_by_depth(study.gradients.by_depth, study.labels, window, base / files.gradients)
    figures.plot_cosine_by_depth(study.gradients.by_depth, study.labels, window, base / files.cosines)
    if study.sensitivity is not None:
        figures.plot_lr_sensitivity(study.sensitivity, base / files.lr_sensitivity, study.labels)
    out.write_text(render(study), encoding="utf-8", newline="\n")
    return out
