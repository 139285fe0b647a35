"""The tuning file: per model, the learning rate chosen on the validation split, and the whole grid behind it.

`archbench tune` writes one per study (JSON, indented, sorted keys); `archbench run --lr tuned` reads it.
A rate is chosen per model as the one whose trials reach the highest validation accuracy (mean over
seeds), ties broken by the lower validation loss; trials that diverged score nothing. An exact tie, or a
model whose every trial diverged, is written down as such and no rate is chosen for it: `--lr tuned`
then says so rather than guess. The file names the data it was made on (its fingerprint) and the
validation split, so a rate is never carried to other data by accident.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from archbench.config import TunedRate
from archbench.errors import ArchbenchError

FORMAT_VERSION = 1
CHOSEN, TIE, ALL_DIVERGED = "chosen", "tie", "all diverged"


@dataclass(frozen=True)
class Trial:
    """One tuning run, as the tuning file lists it."""

    model: str
    lr: float
    seed: int
    run_id: str
    status: str
    val_acc: float | None  # at the epoch chosen on validation
    val_loss: float | None
    test_acc: float | None  # of that epoch; shown for the record, never used to choose


def choose(trials: list[Trial]) -> dict:
    """One model's grid: the score of every rate (mean over its seeds) and the choice, with its status."""
    by_lr: dict[float, list[Trial]] = {}
    for trial in trials:
        by_lr.setdefault(trial.lr, []).append(trial)
    grid = []
    for lr in sorted(by_lr):
        done = [t for t in by_lr[lr] if t.status == "completed" and t.val_acc is not None]
        diverged = len(done) < len(by_lr[lr])
        grid.append(
            {
                "lr": lr,
                "seeds": len(by_lr[lr]),
                "diverged": diverged,
                "val_acc": None if diverged else sum(t.val_acc for t in done) / len(done),
                "val_loss": None if diverged else sum(t.val_loss for t in done) / len(done),
                "test_acc": None if diverged else sum(t.test_acc for t in done) / len(done),
            }
        )
    scored = [g for g in grid if g["val_acc"] is not None and math.isfinite(g["val_loss"])]
    if not scored:
        return {"status": ALL_DIVERGED, "lr": None, "tied": [], "grid": grid}
    best = max(scored, key=lambda g: (g["val_acc"], -g["val_loss"]))
    tied = [g["lr"] for g in scored if (g["val_acc"], g["val_loss"]) == (best["val_acc"], best["val_loss"])]
    if len(tied) > 1:
        return {"status": TIE, "lr": None, "tied": tied, "grid": grid}
    return {"status": CHOSEN, "lr": best["lr"], "tied": [], "grid": grid}


def write_tuning(
    path: Path,
    *,
    trials: list[Trial],
    data: dict,
    validation: dict,
    epochs: int,
    preset: str,
    global_batch: int,
    provenance: dict,
) -> dict:
    """Write the tuning file for `trials` and return its content."""
    models = sorted({t.model for t in trials})
    content = {
        "format_version": FORMAT_VERSION,
        "rule": "highest validation accuracy (mean over seeds), ties broken by lower validation loss; "
        "diverged rates score nothing",
        "preset": preset,
        "epochs": epochs,
        "global_batch_size": global_batch,
        "data": data,
        "validation": validation,
        "models": {m: choose([t for t in trials if t.model == m]) for m in models},
        "trials": [vars(t) for t in sorted(trials, key=lambda t: (t.model, t.lr, t.seed))],
        "provenance": provenance,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return content


@dataclass(frozen=True)
class Tuning:
    """A tuning file, read and checked against the data it is about to be used on."""

    path: Path
    content: dict

    def rate_for(self, model: str) -> TunedRate:
        choice = self.content["models"].get(model)
        if choice is None:
            raise ArchbenchError(
                f"the tuning file {self.path} has no rate for {model} (it tuned "
                f"{', '.join(sorted(self.content['models']))}): run `archbench tune {model}` first."
            )
        if choice["status"] == TIE:
            rates = " and ".join(f"{lr:g}" for lr in choice["tied"])
            raise ArchbenchError(
                f"the tuning file {self.path} has no single rate for {model}: {rates} tie on "
                "validation; tune with more epochs or seeds, or pass --lr."
            )
        if choice["status"] == ALL_DIVERGED:
            raise ArchbenchError(
                f"every rate tried for {model} in {self.path} diverged: tune a lower range (--lr), or pass --lr."
            )
        grid = len(choice["grid"])
        source = (
            f"{self.path.name}: best of {grid} rates on {self.content['validation']['per_class']} validation "
            f"images per class, {self.content['epochs']} epochs"
        )
        return TunedRate(lr=float(choice["lr"]), global_batch=int(self.content["global_batch_size"]), source=source)


def read_tuning(path: Path, data) -> Tuning:
    """The tuning file at `path`, which must have been made on `data`."""
    path = Path(path)
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArchbenchError(
            f"--lr tuned needs a tuning file, and {path} does not exist: run `archbench tune "
            "MODEL...` first, or name the file with --tuning FILE."
        ) from None
    except (OSError, ValueError) as e:
        raise ArchbenchError(f"cannot read the tuning file {path} ({e}); rerun `archbench tune`.") from None
    if not isinstance(content, dict) or content.get("format_version") != FORMAT_VERSION:
        raise ArchbenchError(
            f"{path} is not an archbench tuning file (format {FORMAT_VERSION}); rerun `archbench tune`."
        )
    fingerprint = content.get("data", {}).get("fingerprint")
    if fingerprint != data.fingerprint:
        raise ArchbenchError(
            f"the tuning file {path} was made on other data (fingerprint {str(fingerprint)[:12]}, "
            f"this data {data.fingerprint[:12]}): tune on this data first."
        )
    return Tuning(path, content)
