"""TensorBoard's epoch scalars share the optimiser-step axis that a resumed run's purge_step counts in."""

from __future__ import annotations

import pytest

from archbench.progress import Reporter
from archbench.tensorboard import TensorBoard


class Writer:
    made: list[Writer] = []

    def __init__(self, log_dir, purge_step=None):
        self.purge_step, self.scalars = purge_step, []
        Writer.made.append(self)

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, value, step))

    def flush(self): ...

    def close(self): ...


def test_epoch_scalars_are_logged_at_the_step_that_ends_the_epoch(tmp_path):
    pytest.importorskip("tensorboard")
    Writer.made = []
    board = TensorBoard(Reporter())
    board.writer_type = Writer
    board.start("tiny_resnet s0", epochs=3, steps_per_epoch=6, done_steps=6, run_path=tmp_path)  # resumed after 1
    for _ in range(6):
        board.step(1, 1, 1.0, 0.5, 100.0, 0.1)
    board.epoch("tiny_resnet s0", {"epoch": 2, "test_acc": 0.25})
    (writer,) = Writer.made
    assert writer.purge_step == 6
    assert ("epoch/test_acc", 0.25, 12) in writer.scalars
    assert {step for tag, _, step in writer.scalars if tag.startswith("epoch/")} == {12}
    assert max(step for tag, _, step in writer.scalars if tag.startswith("train/")) == 12
