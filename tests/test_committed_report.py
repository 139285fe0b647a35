"""REPORT.md and its figures are what `archbench report` makes of the committed runs/, byte for byte."""

from __future__ import annotations

import shutil
from pathlib import Path

from archbench.report import write_report

ROOT = Path(__file__).resolve().parent.parent


def test_the_committed_report_regenerates_byte_for_byte(tmp_path):
    shutil.copytree(ROOT / "runs", tmp_path / "runs")
    shutil.copytree(ROOT / "benchmarks", tmp_path / "benchmarks")
    write_report(
        runs_dir=tmp_path / "runs",
        out=tmp_path / "REPORT.md",
        benchmarks=tmp_path / "benchmarks" / "forward_latency.json",
        bench_results=tmp_path / "benchmarks" / "results",
        gpu_results=tmp_path / "benchmarks" / "gpu" / "gpu-results.json",
    )
    made = sorted(p.name for p in tmp_path.glob("REPORT*"))
    assert made == sorted(p.name for p in ROOT.glob("REPORT*"))
    for name in made:
        assert (tmp_path / name).read_bytes() == (ROOT / name).read_bytes(), f"{name} differs: rerun `archbench report`"


def test_the_committed_runs_hold_no_path_of_the_machine_that_made_them():
    """A run record means the same on any machine: entries by name and hash, data by fingerprint."""
    for record in sorted((ROOT / "runs").rglob("*.json")):
        text = record.read_text()
        assert not any(f'"{top}' in text for top in ("/work/", "/root/", "/home/", "/tmp/", "/Users/")), record
