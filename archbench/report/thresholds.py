"""Times to a test-accuracy threshold, with failures counted: a seed that never reached a threshold (it
diverged, or the epochs ran out) has an infinite time to it, as AlgoPerf counts it, never a dropped seed."""

from __future__ import annotations

import math

import pandas as pd


def thresholds_of(runs: pd.DataFrame) -> list[float]:
    """Every threshold the runs were given, in order."""
    return sorted({t for ts in runs["thresholds"] for t in ts})


def main_threshold(selected: pd.DataFrame, thresholds: list[float]) -> float | None:
    """The highest threshold that at least half of the groups reach in most of their seeds (so a time to it
    means something for most models); the lowest threshold when none is; None without thresholds."""
    if not thresholds:
        return None
    for t in sorted(thresholds, reverse=True):
        reached = pd.Series([e.get(t) is not None for e in selected["epochs_to_threshold"]], index=selected.index)
        most = reached.groupby(selected["label"]).mean() > 0.5  # per group: reached in most of its seeds
        if most.sum() * 2 >= len(most):
            return t
    return min(thresholds)


def epochs_to(rows: pd.DataFrame, t: float, key: str = "epochs_to_threshold") -> dict[int, float]:
    """{seed: epochs (or, by `key`, seconds or images) to threshold `t`}, infinite for a seed that never
    reached it (diverged or too slow)."""
    out = {}
    for r in rows.itertuples():
        e = getattr(r, key).get(t)
        out[int(r.seed)] = math.inf if e is None else float(e)
    return out
