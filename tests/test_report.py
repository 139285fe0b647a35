"""`archbench report` on small run records written here, in the agreed run-record format."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
from typer.testing import CliRunner

from archbench.cli import app
from archbench.errors import ArchbenchError
from archbench.report import write_report

THRESHOLDS = [0.3, 0.4]
ENTRIES = {
    "resnet18": {"builder": "resnet", "residual": True, "batch_norm": True, "depth": 18, "layers": 21},
    "resnet18_plain": {"builder": "resnet", "residual": False, "batch_norm": True, "depth": 18, "layers": 21},
    "vgg11": {"builder": "vgg", "residual": False, "batch_norm": False, "depth": 11, "layers": 11},
}
SECTIONS = [
    "# archbench report",
    "## 1. Provenance",
    "## 2. Architectures",
    "## 3. Accuracy",
    "## 4. Convergence",
    "## 5. Early training",
    "## 6. Figures",
    "## 7. Discussion",
    "## 8. Run records",
]


def grad_norm(model: str, seed: int, step: int, depth: int) -> float:
    """Residual models keep the first layer's gradient near the last one's; the others lose it."""
    n = ENTRIES[model]["layers"]
    decay = 0.95 if ENTRIES[model]["residual"] else 0.7
    return (1.0 + 0.1 * seed + 0.05 * step) * decay ** (n - 1 - depth)


def write_run(
    root: Path,
    model: str,
    seed: int,
    test_acc: list[float],
    *,
    status: str | None = "completed",
    started_at: str = "2025-01-01T00:00:00Z",
    synthetic: bool = False,
    diverged_at_step: int | None = None,
    gradnorm_steps: int = 3,
    lr_source: str = "preset",
) -> Path:
    """One run folder as archbench/train.py writes it; status None leaves out summary.json."""
    run_id = f"{started_at.replace('-', '').replace(':', '')[:15]}-s{seed}-abc123-{len(test_acc):04x}"
    run_dir = root / model / run_id
    run_dir.mkdir(parents=True)
    entry = ENTRIES[model]
    config = {
        "run_id": run_id,
        "model": model,
        "entry": {
            "builder": entry["builder"], "args": {}, "description": model, "lr_scale": 0.1 if model == "vgg11" else None,
            "path": f"registry/{model}.toml", "residual": entry["residual"], "batch_norm": entry["batch_norm"],
            "depth": entry["depth"],
        },
        "preset": "smoke",
        "recipe": {
            "epochs": 4, "batch_size": 32, "global_batch_size": 32, "lr": 0.01 if model == "vgg11" else 0.1,
            "lr_source": lr_source, "momentum": 0.9, "weight_decay": 1e-4, "nesterov": False,
            "schedule": "cosine", "warmup_epochs": 0, "label_smoothing": 0.0,
        },
        "image_size": 32,
        "seed": seed,
        "thresholds": THRESHOLDS,
        "gradnorm_steps": gradnorm_steps,
        "device": "cpu",
        "precision": "fp32",
        "compile": False,
        "channels_last": False,
        "deterministic": True,
        "world_size": 1,
        "data": {
            "spec": "synthetic" if synthetic else "data", "root": "data", "fingerprint": "f" * 64 if synthetic else "a" * 64,
            "num_classes": 10, "train_size": 1000, "val_size": 200, "synthetic": synthetic,
        },
        "provenance": {
            "archbench_version": "0.1.0", "git_commit": "0123456789abcdef", "git_dirty": False, "torch": "2.14.1",
            "torchvision": "0.29.1", "cuda": None, "cudnn": None, "device_name": "x86_64 (2 threads)",
            "python": "3.11.2", "platform": "Linux", "started_at": started_at,
        },
        "config_hash": "abc123",
    }
    (run_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    train_acc = [min(1.0, a + 0.1) for a in test_acc]
    rows = ["epoch,train_loss,train_acc,test_loss,test_acc,lr,epoch_seconds,train_images_per_s,train_samples"]
    for e, (tr, te) in enumerate(zip(train_acc, test_acc), start=1):
        rows.append(f"{e},{2.5 / e},{tr},{2.6 / e},{te},0.1,1.5,600.0,1000")
    (run_dir / "metrics.csv").write_text("\n".join(rows if test_acc else ["epoch"]) + "\n")  # train.py: bare header
    grads = ["step,layer,depth,kind,grad_norm"]
    for step in range(gradnorm_steps):
        for d in range(entry["layers"]):
            kind = "linear" if d == entry["layers"] - 1 else "conv"
            grads.append(f"{step},layer{d},{d},{kind},{grad_norm(model, seed, step, d)!r}")
    (run_dir / "gradnorms.csv").write_text("\n".join(grads) + "\n")
    if status is not None:
        summary = {
            "run_id": run_id, "model": model, "status": status, "diverged_at_step": diverged_at_step,
            "epochs_completed": len(test_acc),
            "final_train_acc": train_acc[-1] if test_acc else None,
            "final_test_acc": test_acc[-1] if test_acc else None,
            "best_test_acc": max(test_acc) if test_acc else None,
            "best_epoch": test_acc.index(max(test_acc)) + 1 if test_acc else None,
            "epochs_to_threshold": {
                str(t): next((e for e, a in enumerate(test_acc, start=1) if a >= t), None) for t in THRESHOLDS
            },
            "parameters": 11_279_112 if model.startswith("resnet") else 129_585_736,
            "gflops": {"image_size": 32, "at_image_size": 0.04, "at_224": 1.8187 if model.startswith("resnet") else 7.6058},
            "mean_train_images_per_s": 600.0, "wall_seconds": 6.0, "synthetic": synthetic,
            "finished_at": started_at.replace("00:00Z", "09:00Z"),
        }
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
    return run_dir


# Final test accuracies per (model, seed) of the completed runs below.
CURVES = {
    ("resnet18", 0): [0.20, 0.35, 0.42, 0.46],
    ("resnet18", 1): [0.25, 0.31, 0.38, 0.40],
    ("resnet18_plain", 0): [0.10, 0.22, 0.33, 0.36],
    ("resnet18_plain", 1): [0.12, 0.28, 0.31, 0.35],
    ("vgg11", 0): [0.05, 0.12, 0.26, 0.31],
}


def write_study(root: Path, synthetic_run: bool = False, curves: dict | None = None) -> Path:
    """Three models, two seeds; vgg11 seed 1 diverged; an interrupted rerun of resnet18 seed 0."""
    for (model, seed), acc in (curves or CURVES).items():
        write_run(root, model, seed, acc, synthetic=synthetic_run and model == "vgg11",
                  lr_source="preset x registry lr_scale" if model == "vgg11" else "preset")
    write_run(root, "vgg11", 1, [0.02], status="diverged", diverged_at_step=7, lr_source="preset x registry lr_scale")
    write_run(root, "resnet18", 0, [0.21], status=None, started_at="2025-01-02T00:00:00Z")  # killed, no summary
    # an older completed run of the same seed, superseded by the newer one above
    write_run(root, "resnet18_plain", 0, [0.5, 0.6, 0.7], started_at="2024-12-31T00:00:00Z")
    return root


def generate(tmp_path: Path, runs: Path, benchmarks: Path | None = None, name: str = "REPORT.md") -> str:
    out = write_report(runs_dir=runs, out=tmp_path / name, benchmarks=benchmarks or tmp_path / "absent.json")
    return out.read_text(encoding="utf-8")


def section(text: str, heading: str) -> str:
    start = text.index(heading)
    end = text.find("\n## ", start + len(heading))
    return text[start:] if end < 0 else text[start:end]


def table_rows(text: str) -> list[dict[str, str]]:
    """The first markdown table in `text`, as dicts keyed by header."""
    lines = [ln for ln in text.splitlines() if ln.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = []
    for ln in lines[2:]:
        if not ln.startswith("|"):
            break
        rows.append(dict(zip(header, (c.strip() for c in ln.strip("|").split("|")))))
    return rows


def row_for(text: str, model: str) -> dict[str, str]:
    return next(r for r in table_rows(text) if r["model"] == model)


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> tuple[Path, str]:
    tmp = tmp_path_factory.mktemp("study")
    runs = write_study(tmp / "runs")
    return tmp, generate(tmp, runs)


def test_every_section_present_with_figures(study):
    tmp, text = study
    positions = [text.index(s) for s in SECTIONS]
    assert positions == sorted(positions)
    for png in ("REPORT-training-curves.png", "REPORT-gradnorm-depth.png"):
        assert f"]({png})" in text
        assert (tmp / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "fvcore counts one fused multiply-add as one flop" in text
    assert "*reference: resnet18*" in text and "85.46" in text and "54.72" in text


def test_mean_and_std_over_seeds(study):
    _, text = study
    acc = section(text, "## 3. Accuracy")
    finals = [CURVES[("resnet18", s)][-1] * 100 for s in (0, 1)]
    expected = f"{statistics.mean(finals):.2f} ± {statistics.stdev(finals):.2f}"
    row = row_for(acc, "resnet18")
    assert row["final test acc (%)"] == expected
    assert row["n"] == "2"
    trains = [min(1.0, CURVES[("resnet18", s)][-1] + 0.1) * 100 for s in (0, 1)]
    assert row["final train acc (%)"] == f"{statistics.mean(trains):.2f} ± {statistics.stdev(trains):.2f}"
    # one completed seed: no std, and the diverged seed is named
    vgg = row_for(acc, "vgg11")
    assert vgg["final test acc (%)"] == f"{100 * CURVES[('vgg11', 0)][-1]:.2f}"
    assert vgg["n"] == "1"
    assert "seed 1 diverged" in vgg["status"]

    conv = row_for(section(text, "## 4. Convergence"), "resnet18")
    to_30 = [2, 2]  # both resnet18 seeds pass 30% at epoch 2
    to_40 = [3, 4]
    assert conv["epochs to 30%"] == f"{statistics.mean(to_30):.1f} ± {statistics.stdev(to_30):.1f}"
    assert conv["epochs to 40%"] == f"{statistics.mean(to_40):.1f} ± {statistics.stdev(to_40):.1f}"
    plain = row_for(section(text, "## 4. Convergence"), "resnet18_plain")
    assert plain["epochs to 40%"] == "—"
    vgg_conv = row_for(section(text, "## 4. Convergence"), "vgg11")
    assert vgg_conv["epochs to 30%"] == "4"


def test_early_gradient_ratio(study):
    _, text = study
    early = section(text, "## 5. Early training")
    n = ENTRIES["vgg11"]["layers"]
    # vgg11 counts its completed seed 0 only; first/last averaged over the 3 recorded steps
    first = statistics.mean(grad_norm("vgg11", 0, s, 0) for s in range(3))
    last = statistics.mean(grad_norm("vgg11", 0, s, n - 1) for s in range(3))
    row = row_for(early, "vgg11")
    assert row["first / last"] == f"{first / last:.3g}"
    assert row["first-layer norm"] == f"{first:.3e}"
    assert row["steps"] == "3"
    assert "5 groups" in early


def test_diverged_and_interrupted_runs_are_listed(study):
    _, text = study
    records = section(text, "## 8. Run records")
    not_completed = records[records.index("Runs that did not complete"):]
    rows = table_rows(not_completed)
    statuses = sorted((r["model"], r["status"]) for r in rows)
    assert statuses == [("resnet18", "interrupted"), ("vgg11", "diverged")]
    diverged = next(r for r in rows if r["status"] == "diverged")
    assert diverged["diverged at step"] == "7"
    assert diverged["in the tables"].startswith("yes")
    interrupted = next(r for r in rows if r["status"] == "interrupted")
    assert interrupted["in the tables"].startswith("no")
    assert "superseded" in records and "resnet18_plain/20241231T000000" in records
    assert "vgg11: 1 of 2 run(s) diverged (seed 1 at step 7" in section(text, "## 7. Discussion")


def test_a_model_without_a_completed_run_shows_with_its_status(tmp_path):
    runs = tmp_path / "runs"
    write_run(runs, "vgg11", 0, [], status="diverged", diverged_at_step=3)
    text = generate(tmp_path, runs)
    row = row_for(section(text, "## 3. Accuracy"), "vgg11")
    assert row["status"] == "seed 0 diverged"
    assert row["final test acc (%)"] == "—"
    assert row_for(section(text, "## 4. Convergence"), "vgg11")["epochs to 30%"] == "—"
    discussion = section(text, "## 7. Discussion")
    assert "No run completed" in discussion
    assert "vgg11: 1 of 1 run(s) diverged (seed 0 at step 3 after 0 epoch(s))" in discussion


def test_synthetic_warning_exactly_when_a_run_used_synthetic_data(tmp_path):
    real = generate(tmp_path / "a", write_study(tmp_path / "a" / "runs"))
    assert "SYNTHETIC" not in real
    mixed = generate(tmp_path / "b", write_study(tmp_path / "b" / "runs", synthetic_run=True))
    top = mixed.splitlines()[:3]
    assert top[0] == "# archbench report"
    assert top[2].startswith("> **WARNING: SYNTHETIC DATA.**")
    assert "No number in this report is a Tiny-ImageNet result" in top[2]


def test_same_runs_give_identical_bytes(tmp_path):
    runs = write_study(tmp_path / "runs")
    first = generate(tmp_path / "one", runs).encode()
    pngs = [(tmp_path / "one" / n).read_bytes() for n in ("REPORT-training-curves.png", "REPORT-gradnorm-depth.png")]
    second = generate(tmp_path / "one", runs).encode()
    assert first == second
    assert pngs == [(tmp_path / "one" / n).read_bytes() for n in ("REPORT-training-curves.png", "REPORT-gradnorm-depth.png")]
    # another folder beside it: the same relative paths, so the same bytes
    assert generate(tmp_path / "two", runs).encode() == first


def test_discussion_follows_the_numbers(tmp_path):
    text = generate(tmp_path / "a", write_study(tmp_path / "a" / "runs"))
    discussion = section(text, "## 7. Discussion")
    assert "resnet18 reached 30% test accuracy first (epoch 2), 1.0 epochs before resnet18_plain (epoch 3)" in discussion
    assert "never reached by resnet18_plain and vgg11" in discussion  # 40%
    assert "one seed only" in discussion and "vgg11" in discussion
    assert "With residual connections, resnet18's first layer gets" in discussion
    assert "in line with the claim that residual connections keep early gradients alive" in discussion

    faster_vgg = dict(CURVES)
    faster_vgg[("vgg11", 0)] = [0.32, 0.41, 0.45, 0.5]
    text = generate(tmp_path / "b", write_study(tmp_path / "b" / "runs", curves=faster_vgg))
    discussion = section(text, "## 7. Discussion")
    assert "vgg11 reached 30% test accuracy first (epoch 1)" in discussion
    assert "vgg11 reached 40% test accuracy first (epoch 2)" in discussion
    assert "the opposite direction to the reference's" in discussion


LATENCY = {
    "machine_info": {"node": "host", "processor": "x86_64", "machine": "x86_64", "python_implementation": "CPython",
                     "python_version": "3.11.2", "release": "6.1", "system": "Linux", "cpu": {"count": 2}},
    "commit_info": {"id": "0123456789abcdef", "dirty": False, "branch": "main"},
    "benchmarks": [],
    "datetime": "2025-01-03T00:00:00.000000+00:00",
    "version": "5.1.0",
}


def _bench(model: str, impl: str, batch: int, median: float) -> dict:
    name = f"test_forward_latency[{model}-b{batch}-{impl}]"
    return {
        "group": f"{model}-b{batch}", "name": name, "fullname": f"benchmarks/test_forward_latency.py::{name}",
        "params": {"name": model, "batch": batch, "impl": impl}, "param": f"{model}-b{batch}-{impl}",
        "extra_info": {"model": model, "impl": impl, "batch": batch, "image_size": 64, "device": "cpu",
                       "memory_format": "channels_last", "threads": 1},
        "options": {"disable_gc": False, "timer": "perf_counter", "min_rounds": 5, "max_time": 1.0,
                    "min_time": 5e-06, "precision": None, "confidence": None, "warmup": False},
        "stats": {"min": median * 0.9, "max": median * 1.2, "mean": median * 1.01, "stddev": median * 0.05,
                  "rounds": 10, "median": median, "iqr": median * 0.04, "q1": median * 0.98, "q3": median * 1.02,
                  "iqr_outliers": 0, "stddev_outliers": 1, "outliers": "1;0", "ld15iqr": median * 0.9,
                  "hd15iqr": median * 1.2, "ops": 1 / median, "total": median * 10, "iterations": 1,
                  "data": [median * f for f in (0.9, 0.98, 1.0, 1.0, 1.0, 1.0, 1.0, 1.02, 1.1, 1.2)]},
    }


def test_latency_table_reads_pytest_benchmark_json(tmp_path):
    runs = write_study(tmp_path / "runs")
    assert "not measured" in row_for(section(generate(tmp_path, runs), "## 2. Architectures"), "resnet18")["latency b1 (ms)"]

    bench = tmp_path / "forward_latency.json"
    data = dict(LATENCY, benchmarks=[
        _bench("resnet18", "archbench", 1, 0.002), _bench("resnet18", "torchvision", 1, 0.0025),
        _bench("resnet18", "archbench", 32, 0.040), _bench("resnet18", "torchvision", 32, 0.032),
        _bench("resnet18_plain", "archbench", 1, 0.0019),
        _bench("vgg11", "archbench", 1, 0.030), _bench("vgg11", "torchvision", 1, 0.030),
    ])
    bench.write_text(json.dumps(data))
    text = generate(tmp_path, runs, benchmarks=bench)
    arch = section(text, "## 2. Architectures")
    assert row_for(arch, "resnet18")["latency b1 (ms)"] == "2.00"
    assert row_for(arch, "resnet18")["latency b32 (ms)"] == "40.00"
    assert row_for(arch, "vgg11")["latency b32 (ms)"] == "not measured"
    detail = table_rows(arch[arch.index("Forward latency from"):])
    ratios = {(r["model"], r["batch"]): r["archbench / torchvision"] for r in detail}
    assert ratios[("resnet18", "1")] == "0.800"
    assert ratios[("resnet18", "32")] == "1.250"
    assert ratios[("vgg11", "1")] == "1.000"
    assert ratios[("resnet18_plain", "1")] == "no torchvision twin"
    assert all(r["memory format"] == "channels_last" and r["threads"] == "1" for r in detail)


def test_malformed_run_file_names_the_file(tmp_path):
    runs = write_study(tmp_path / "runs")
    broken = sorted((runs / "vgg11").iterdir())[0] / "summary.json"
    broken.write_text("{not json")
    with pytest.raises(ArchbenchError, match="summary.json is not valid JSON"):
        generate(tmp_path, runs)
    broken.unlink()  # now it counts as interrupted
    metrics = broken.parent / "metrics.csv"
    metrics.write_text("epoch,train_loss\n1,2.0\n")
    with pytest.raises(ArchbenchError, match=r"metrics\.csv lacks the column\(s\) train_acc"):
        generate(tmp_path, runs)


@pytest.mark.parametrize("make", [lambda p: p.mkdir(), lambda p: None], ids=["empty", "missing"])
def test_no_runs_is_one_line_from_the_cli(tmp_path, make):
    runs = tmp_path / "EMPTY"
    make(runs)
    result = CliRunner().invoke(app, ["report", "--runs", str(runs), "--out", str(tmp_path / "R.md")])
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1
    assert f"no runs found under {runs}/" in lines[0]
    assert not (tmp_path / "R.md").exists()
