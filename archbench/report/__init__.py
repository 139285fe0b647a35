"""`archbench report`: REPORT.md from the recorded runs, with its figures and a discussion from the numbers.

`load` reads the run records and result files, `study` groups the runs and derives the tables every
section shares (`gradient_measures`, `sensitivity`), `stats` holds the statistics, `comparisons` the
pairs the discussion tests, `sections`, `speed`, `depth`, `sensitivity` and `discussion` write the
markdown, `figures` the PNGs. `SECTIONS` is the one list of the report's numbered sections, in order; a
section that returns None is left out and the numbers close up. The same runs give byte-identical output:
no generation time, sorted rows, fixed float formats.
"""

from __future__ import annotations

import os
from pathlib import Path

from archbench.config import BENCH_DIR, GPU_RESULTS_FILE, LATENCY_FILE, REPORT_FILE, RUNS_DIR
from archbench.report import figures
from archbench.report.depth import depth_section
from archbench.report.discussion import discussion_section
from archbench.report.gradient_measures import early_window
from archbench.report.sections import (
    accuracy_section,
    architectures_section,
    convergence_section,
    early_training_section,
    figures_section,
    header_section,
    provenance_section,
    run_records_section,
)
from archbench.report.sensitivity import sensitivity_section
from archbench.report.study import FigureFiles, Inputs, Study, load_study

# (title, section): each section returns its markdown without the heading, or None to leave itself out.
SECTIONS = (
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


def _relative(path: Path, start: Path) -> str:
    return Path(os.path.relpath(Path(path).resolve(), start.resolve())).as_posix()


def render(study: Study) -> str:
    """The report's markdown: the header, then every section that has something to say, numbered."""
    parts = [header_section(study)]
    bodies = [(title, section(study)) for title, section in SECTIONS]
    for number, (title, body) in enumerate(((t, b) for t, b in bodies if b is not None), start=1):
        parts.append(f"## {number}. {title}\n\n{body}")
    return "\n\n".join(parts) + "\n"


def _command(out: Path, labels: dict[str, str]) -> str:
    """`archbench report` with every option that differs from its default (paths relative to the report)."""
    defaults = {
        "--runs": RUNS_DIR.as_posix(),
        "--benchmarks": LATENCY_FILE.as_posix(),
        "--bench-results": BENCH_DIR.as_posix(),
        "--gpu-results": GPU_RESULTS_FILE.as_posix(),
    }
    options = [f"{flag} {labels[flag]}" for flag in defaults if labels[flag] != defaults[flag]]
    if out.name != REPORT_FILE.name:
        options.insert(1 if labels["--runs"] != defaults["--runs"] else 0, f"--out {out.name}")
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
        return _relative(Path(path), base)

    labels = {
        "--runs": relative(runs_dir),
        "--benchmarks": relative(benchmarks),
        "--bench-results": relative(bench_results),
        "--gpu-results": relative(gpu_results),
    }
    inputs = Inputs(
        runs_dir=Path(runs_dir),
        latency=Path(benchmarks),
        bench_results=Path(bench_results),
        gpu_results=Path(gpu_results),
        runs_label=labels["--runs"],
        latency_label=labels["--benchmarks"],
        bench_label=labels["--bench-results"],
        gpu_label=labels["--gpu-results"],
        command=_command(out, labels),
        relative=relative,
    )
    files = FigureFiles(
        *(
            f"{out.stem}-{name}.png"
            for name in ("training-curves", "gradnorm-depth", "gradient-cosine", "lr-sensitivity")
        )
    )
    study = load_study(inputs, files)
    base.mkdir(parents=True, exist_ok=True)
    window = early_window(study.gradients.steps)
    figures.plot_training_curves(study.curves, study.labels, base / files.curves)
    figures.plot_gradient_size_by_depth(study.gradients.by_depth, study.labels, window, base / files.gradients)
    figures.plot_cosine_by_depth(study.gradients.by_depth, study.labels, window, base / files.cosines)
    if study.sensitivity is not None:
        figures.plot_lr_sensitivity(study.sensitivity, base / files.lr_sensitivity)
    out.write_text(render(study), encoding="utf-8", newline="\n")
    return out
