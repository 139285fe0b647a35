"""Learning-rate sensitivity from the tuning trials and tuning files: validation accuracy against the rate
per model, the chosen and default rates, and DeepOBS's tuneability (docs/report.md)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import pandas as pd

from archbench.config import RunRequest, resolve_lr
from archbench.errors import ArchbenchError
from archbench.report.load import TuningFile
from archbench.report.text import DASH, md, pct
from archbench.tuning import ALL_DIVERGED, CHOSEN, TIE, Trial, choose

if TYPE_CHECKING:
    from archbench.report.study import Study

RECORDS = "the recorded trials"


class RatePoint(NamedTuple):
    """One rate of one model's grid."""

    lr: float
    val_accs: list[float]  # per completed seed, at the epoch chosen on validation
    seeds: int
    unscored: list[str]  # the status of every seed that did not complete (a rate with one scores nothing)

    @property
    def scored(self) -> bool:
        return not self.unscored and bool(self.val_accs)

    @property
    def mean(self) -> float:
        return float(np.mean(self.val_accs)) if self.scored else math.nan


class DefaultRate(NamedTuple):
    lr: float | None
    source: str  # where the default comes from, in words


class ModelSensitivity(NamedTuple):
    model: str
    points: list[RatePoint]  # by rate
    status: str  # CHOSEN, TIE or ALL_DIVERGED (archbench.tuning)
    chosen: float | None
    tied: list[float]
    chosen_by: str  # a tuning file's name, or RECORDS
    default: DefaultRate

    def point_at(self, lr: float | None) -> RatePoint | None:
        return next((p for p in self.points if lr is not None and math.isclose(p.lr, lr, rel_tol=1e-6)), None)

    @property
    def best(self) -> RatePoint | None:
        scored = [p for p in self.points if p.scored]
        return max(scored, key=lambda p: (p.mean, -p.lr)) if scored else None


class Sensitivity(NamedTuple):
    models: list[ModelSensitivity]
    files: list[str]  # the tuning files read, as the report names them
    recorded_trials: int  # trials read from run records


def _num(value) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def trials_from_records(trials: pd.DataFrame) -> list[Trial]:
    return [
        Trial(
            model=r.model,
            lr=float(r.lr),
            seed=int(r.seed),
            run_id=r.run_id,
            status=r.status,
            val_acc=_num(r.best_holdout_acc) if r.status == "completed" else None,
            val_loss=_num(r.holdout_loss_at_best_epoch) if r.status == "completed" else None,
            test_acc=_num(r.test_acc_at_best_epoch),
        )
        for r in trials.itertuples()
    ]


def trials_from_file(file: TuningFile) -> list[Trial]:
    try:
        return [Trial(**t) for t in file.content.get("trials", [])]
    except TypeError:
        raise ArchbenchError(f"{file.label} has a malformed trial list; rerun `archbench tune`") from None


def _points(trials: list[Trial]) -> list[RatePoint]:
    points = []
    for lr in sorted({t.lr for t in trials}):
        at = [t for t in trials if t.lr == lr]
        done = [t.val_acc for t in at if t.status == "completed" and t.val_acc is not None]
        unscored = sorted(t.status for t in at if t.status != "completed" or t.val_acc is None)
        points.append(RatePoint(lr, done, len(at), unscored))
    return points


def default_rate(model: str, runs: pd.DataFrame, trials: pd.DataFrame) -> DefaultRate:
    """The rate the preset gives `model`: as a study run on the preset's rate recorded it, at the trials'
    batch; else as `archbench.config.resolve_lr` derives it for the trials' preset and batch."""
    own = trials[trials["model"] == model]
    batches = set(own["global_batch_size"])
    study = runs[(runs["model"] == model) & runs["lr_source"].astype(str).str.startswith("preset")]
    if batches:
        study = study[study["global_batch_size"].isin(batches)]
    if len(study):
        first = study.sort_values(["started_at", "run_id"]).iloc[0]
        return DefaultRate(float(first["lr"]), f"recorded by the study runs ({first['lr_source']})")
    if len(own):
        first = own.sort_values(["started_at", "run_id"]).iloc[0]
        scale = _num(first["lr_scale"])
        lr, source = resolve_lr(
            RunRequest(models=[model], preset=first["preset"]), scale, int(first["global_batch_size"])
        )
        return DefaultRate(lr, f"the {first['preset']} preset's rate at the trials' batch ({source})")
    return DefaultRate(None, "unknown: no study run on the preset's rate and no trial record")


def load_sensitivity(trials: pd.DataFrame, files: list[TuningFile], runs: pd.DataFrame) -> Sensitivity | None:
    """Every tuned model's grid, choice and default rate; None when there are no trials and no tuning file."""
    if trials.empty and not files:
        return None
    recorded = trials_from_records(trials)
    seen = {t.run_id for t in recorded}
    merged = list(recorded)
    for file in files:
        extra = [t for t in trials_from_file(file) if t.run_id not in seen]
        merged += extra
        seen |= {t.run_id for t in extra}
    models = sorted({t.model for t in merged} | {m for f in files for m in f.content["models"]})
    out = []
    for model in models:
        own = [t for t in merged if t.model == model]
        decided = next(((f.label, f.content["models"][model]) for f in files if model in f.content["models"]), None)
        chosen_by, choice = decided if decided else (RECORDS, choose(own))
        points = _points(own) or [
            RatePoint(
                float(g["lr"]),
                [] if g["val_acc"] is None else [float(g["val_acc"])],
                int(g["seeds"]),
                ["diverged"] if g["diverged"] else [],
            )
            for g in choice["grid"]
        ]
        out.append(
            ModelSensitivity(
                model=model,
                points=points,
                status=choice["status"],
                chosen=_num(choice["lr"]),
                tied=[float(x) for x in choice.get("tied", [])],
                chosen_by=chosen_by,
                default=default_rate(model, runs, trials),
            )
        )
    return Sensitivity(out, [f.label for f in files], len(recorded))


def choice_text(m: ModelSensitivity) -> str:
    if m.status == CHOSEN:
        return f"{m.chosen:g}"
    if m.status == TIE:
        return "none: " + " and ".join(f"{lr:g}" for lr in m.tied) + " tie"
    if m.status == ALL_DIVERGED:
        return "none: every rate diverged"
    return m.status


def _pct(value: float) -> str:
    return f"{100 * value:.2f}" if math.isfinite(value) else DASH


def _default_text(m: ModelSensitivity) -> str:
    if m.default.lr is None:
        return "unknown"
    return f"{m.default.lr:g}" + ("" if m.point_at(m.default.lr) is not None else " (not in the grid)")


def tuneability(m: ModelSensitivity) -> str:
    """Best minus default rate's validation accuracy, in points, or why there is none."""
    best, default = m.best, m.point_at(m.default.lr)
    if m.default.lr is None:
        return "default rate unknown"
    if default is None:
        return f"default rate {m.default.lr:g} not in the grid"
    if best is None:
        return "no rate scored"
    if not default.scored:
        return f"the default rate scored nothing ({', '.join(default.unscored)})"
    return f"{100 * (best.mean - default.mean):+.2f}"


def _summary_rows(s: Sensitivity) -> pd.DataFrame:
    rows = []
    for m in s.models:
        best, default = m.best, m.point_at(m.default.lr)
        rows.append(
            {
                "model": m.model,
                "rates tried": str(len(m.points)),
                "chosen lr": choice_text(m),
                "chosen by": m.chosen_by,
                "best lr": DASH if best is None else f"{best.lr:g}",
                "default lr": _default_text(m),
                "val acc at best (%)": DASH if best is None else _pct(best.mean),
                "val acc at default (%)": DASH if default is None else _pct(default.mean),  # NaN: scored nothing
                "best - default (points)": tuneability(m),
            }
        )
    return pd.DataFrame(rows)


def _grid_rows(s: Sensitivity) -> pd.DataFrame:
    rows = []
    for m in s.models:
        for p in m.points:
            marks = [word for word, lr in (("chosen", m.chosen), ("default", m.default.lr)) if m.point_at(lr) is p]
            if p.unscored:
                marks.append(f"scored nothing: {', '.join(p.unscored)}")
            rows.append(
                {
                    "model": m.model,
                    "lr": f"{p.lr:g}",
                    "seeds": str(p.seeds),
                    "val acc (%)": pct(p.val_accs) if p.scored else DASH,
                    "note": "; ".join(marks) or DASH,
                }
            )
    return pd.DataFrame(rows)


def sensitivity_section(study: Study) -> str | None:
    s = study.sensitivity
    if s is None:
        return None
    sources = []
    if s.recorded_trials:
        sources.append(f"{s.recorded_trials} tuning trial(s) recorded under `{study.inputs.runs_label}/`")
    if s.files:
        sources.append("the tuning file(s) " + ", ".join(f"`{f}`" for f in s.files))
    defaults = sorted({f"{m.model}: {m.default.source}" for m in s.models})
    return "\n\n".join(
        [
            f"From {' and '.join(sources)}. Tuning trials are short runs on a validation split held out of the "
            "training images; they are never in the other sections' tables. Each rate is scored by the validation "
            "accuracy at the epoch chosen on validation, mean over seeds; the chosen rate is the highest mean "
            "validation accuracy (ties broken by the lower validation loss; a rate where a seed diverged scores "
            "nothing). The test set plays no part in the choice. Best - default is DeepOBS's tuneability: how far "
            "a model's validation accuracy moves between its best rate and its default one, the rate the preset "
            "gives it (the preset's lr, scaled to the batch, times the registry entry's `lr_scale`).",
            md(_summary_rows(s)),
            "Default rates: " + "; ".join(defaults) + ".",
            "Every rate tried (validation accuracy: mean ± 95% interval over seeds):",
            md(_grid_rows(s)),
            f"![Validation accuracy against learning rate, log scale]({study.figures.lr_sensitivity})",
        ]
    )
