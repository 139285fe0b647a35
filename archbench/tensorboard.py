"""`archbench run --tensorboard` (or ARCHBENCH_TENSORBOARD=1): a reporter in front of the terminal's that
writes each run's curves as TensorBoard scalars into `RUNS/<model>/<run_id>/tensorboard/` (what it writes:
README.md, "With `--tensorboard`"). Every value is one the loop already reads (no extra host-device sync);
a resumed run drops the events written after its checkpoint (`purge_step`), so the curves never double.
TensorBoard is an optional dependency: `pip install archbench[tensorboard]`.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

from archbench import runs
from archbench.errors import not_installed
from archbench.progress import Reporter

FOLDER = "tensorboard"  # under each run folder
DIAGNOSTICS = ("grad_norm", "grad_to_weight", "cosine_to_previous")  # gradnorms.csv columns written per layer


def require_tensorboard() -> None:
    """One line when the tensorboard package is missing (checked without importing it)."""
    if importlib.util.find_spec("tensorboard") is None:
        raise not_installed("--tensorboard", "the tensorboard package", "tensorboard")


class TensorBoard(Reporter):
    """Writes the run's scalars, then passes every call on to `inner` (the terminal's reporter)."""

    def __init__(self, inner: Reporter):
        require_tensorboard()
        from torch.utils.tensorboard import SummaryWriter

        self.inner, self.writer_type = inner, SummaryWriter
        self.writer, self.global_step, self.steps_per_epoch = None, 0, 0

    def start(self, label, epochs, steps_per_epoch, done_steps, run_path=None):
        super().start(label, epochs, steps_per_epoch, done_steps, run_path)
        self._close_writer()
        if run_path is not None:
            self.writer = self.writer_type(log_dir=str(Path(run_path) / FOLDER), purge_step=done_steps or None)
        self.global_step, self.steps_per_epoch = done_steps, steps_per_epoch
        self.inner.start(label, epochs, steps_per_epoch, done_steps, run_path)

    def step(self, advance, epoch, loss, acc, images_per_s, lr=None):
        self.global_step += advance
        if self.writer is not None:
            scalars = {"train/loss": loss, "train/accuracy": acc, "train/images_per_s": images_per_s, "train/lr": lr}
            for tag, value in scalars.items():
                if value is not None:
                    self.writer.add_scalar(tag, value, self.global_step)
        self.inner.step(advance, epoch, loss, acc, images_per_s, lr)

    def epoch(self, label, row):
        if self.writer is not None:
            for name, value in row.items():
                if name not in ("epoch", "schema_version") and isinstance(value, int | float) and value is not True:
                    self.writer.add_scalar(f"epoch/{name}", value, row["epoch"] * self.steps_per_epoch)
            self.writer.flush()
        self.inner.epoch(label, row)

    def finish(self, label, summary):
        run_path = self.current[1] if self.current else None
        super().finish(label, summary)
        if self.writer is not None and run_path is not None:
            self._gradients(Path(run_path) / runs.GRADNORMS)
        self._close_writer()
        self.inner.finish(label, summary)

    def skip(self, label, summary):
        self.inner.skip(label, summary)

    def close(self):
        self._close_writer()
        self.inner.close()

    def _gradients(self, path: Path) -> None:
        for row in runs.read_rows(path, runs.GradNormRow, needed=())[0]:
            for column in DIAGNOSTICS:
                value = getattr(row, column)
                if value is not None and math.isfinite(value):
                    self.writer.add_scalar(f"gradients/{row.layer}/{column}", value, int(row.step))

    def _close_writer(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
