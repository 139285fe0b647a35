"""What a run shows while it trains: the bar before its first measurement, a resumed run's announcement in
both modes, a diverged run's closing line, and top-5 accuracy for data sets of 100 classes or more."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch
from rich.console import Console

from archbench.distributed import DistContext
from archbench.progress import Bars, LogLines, finish_line
from archbench.train import TOP5_CLASSES, evaluate


def bar_text(bars: Bars) -> str:
    console = Console(record=True, width=200)
    console.print(bars.progress.make_tasks_table(bars.progress.tasks))
    return console.export_text()


def test_the_bar_shows_no_loss_or_speed_before_the_first_measured_step():
    bars = Bars(Console(quiet=True))
    try:
        bars.start("resnet18 s0", epochs=2, steps_per_epoch=10, done_steps=0)
        before = bar_text(bars)
        assert "nan" not in before and "img/s" not in before and "measuring" in before
        bars.step(5, 1, loss=2.5, acc=0.25, images_per_s=123.4, lr=0.1)
        after = bar_text(bars)
        assert "loss 2.500" in after and "25.0%" in after and "123 img/s" in after
    finally:
        bars.close()


@pytest.mark.parametrize("reporter_type", [LogLines, Bars])
def test_a_resumed_run_is_announced_in_both_modes(reporter_type):
    console = Console(record=True, width=200)
    reporter = reporter_type(console)
    try:
        reporter.start("vgg11 s1", epochs=4, steps_per_epoch=10, done_steps=20)
    finally:
        reporter.close()
    assert "vgg11 s1: 4 epochs x 10 steps (resuming after step 20, epoch 2)" in console.export_text()


def test_a_diverged_run_is_said_to_have_gone_non_finite_in_training_or_in_evaluation():
    """The loop ends a run as diverged on a non-finite training loss and on a non-finite evaluation loss or
    accuracy, and records the step alone: the line claims neither cause over the other."""
    line = finish_line("vgg11 s0", {"status": "diverged", "diverged_at_step": 8, "run_id": "r1"})
    assert line == "vgg11 s0: [red]diverged[/] at step 8 (a loss or accuracy went non-finite) (run r1)"


# ------------------------------------------------------------------------------------------ top-5


class Loader(list):
    device = torch.device("cpu")


def top5_oracle(logits: np.ndarray, labels: np.ndarray) -> float:
    """The share of samples whose label is among the five largest logits (numpy's argsort, not torch.topk)."""
    order = np.argsort(-logits, axis=1, kind="stable")[:, :5]
    return float(np.mean([label in row for row, label in zip(order, labels)]))


@pytest.mark.parametrize("classes", [TOP5_CLASSES, 200])
def test_top5_accuracy_is_recorded_for_100_classes_or_more(classes):
    generator = torch.Generator().manual_seed(classes)
    batches = [(torch.randn(13, classes, generator=generator), torch.randint(classes, (13,), generator=generator))]
    batches.append((torch.randn(7, classes, generator=generator), torch.randint(classes, (7,), generator=generator)))
    for x, y in batches:  # make some labels land in the top five, some first
        x[: len(y) // 2, y[: len(y) // 2]] += 3.0
    loss, acc, top5 = evaluate(torch.nn.Identity(), Loader(batches), contextlib.nullcontext, DistContext())
    logits = torch.cat([x for x, _ in batches]).numpy()
    labels = torch.cat([y for _, y in batches]).numpy()
    assert top5 == pytest.approx(top5_oracle(logits, labels))
    assert acc == pytest.approx(float(np.mean(logits.argmax(1) == labels)))
    assert 0 < acc < top5 < 1


def test_top5_is_not_recorded_below_100_classes():
    batches = [(torch.randn(8, TOP5_CLASSES - 1), torch.randint(TOP5_CLASSES - 1, (8,)))]
    assert evaluate(torch.nn.Identity(), Loader(batches), contextlib.nullcontext, DistContext())[2] is None


@pytest.mark.slow
def test_a_run_on_100_classes_records_top5_each_epoch(tiny_registry, tmp_path):
    import csv

    from conftest import tiny_run_request

    from archbench.data.synthetic import make_synthetic
    from archbench.study import run_models

    data = tmp_path / "data"
    make_synthetic(root=data, classes=TOP5_CLASSES, train_per_class=2, val_per_class=1, seed=0)
    (summary,) = run_models(tiny_run_request(tiny_registry, data, tmp_path / "runs", epochs=1))
    rows = list(csv.DictReader(open(tmp_path / "runs" / "tiny_resnet" / summary["run_id"] / "metrics.csv")))
    assert len(rows) == 1 and float(rows[0]["test_acc"]) <= float(rows[0]["test_top5"]) <= 1


def test_the_closing_table_fits_80_columns_without_cutting_a_cell():
    from archbench.progress import results_table

    summary = {
        "model": "resnet34_plain",
        "seed": 12,
        "status": "interrupted",
        "final_train_acc": 0.8123,
        "final_test_acc": 0.9567,
        "epochs_to_threshold": {"0.5": 1, "0.8": 2, "0.9": None},
        "mean_train_images_per_s": 12345.6,
        "wall_seconds": 12345.0,
    }
    console = Console(record=True, width=80)
    console.print(results_table([summary]))
    text = console.export_text()
    assert "…" not in text
    assert all(cell in text for cell in ("resnet34_plain s12", "interrupted", "81.2%", "95.7%", "12346", "12345s"))
