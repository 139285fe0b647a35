"""The comparisons the discussion tests, found by the models' traits (never by their names).

- residual twins: same builder and depth, same BN, one with residual connections and one without;
- BN twins: same builder and depth, same residual flag, one with BN and one without;
- ResNet against VGG: every residual ResNet against every VGG. The run records carry no family trait,
  so "a ResNet" and "a VGG" are read from the registry builder (`resnet`, `vgg`); that the ResNet side is
  residual is read from its traits.

Pairs are formed within one learning-rate arm (registry default rates, or tuned), so a tuned model is compared
with tuned models only, and within one data set (by fingerprint): numbers from different data do not compare.
"""

from __future__ import annotations

from typing import NamedTuple

import pandas as pd

RESIDUAL, BN, RESNET_VGG = "residual connections", "BN", "ResNet against VGG"


class Pair(NamedTuple):
    """Two labels compared: `a` has the feature (or is the ResNet), `b` lacks it (or is the VGG)."""

    kind: str  # RESIDUAL, BN or RESNET_VGG
    a: str
    b: str
    arm: str


def _twin(kinds: pd.DataFrame, x: str, y: str, differ: str, same: str) -> bool:
    kx, ky = kinds.loc[x], kinds.loc[y]
    return (
        kx["builder"] == ky["builder"]
        and kx["depth"] == ky["depth"]
        and kx["arm"] == ky["arm"]
        and kx["fingerprint"] == ky["fingerprint"]
        and kx[same] == ky[same]
        and bool(kx[differ]) != bool(ky[differ])
    )


def resnets_and_vggs(kinds: pd.DataFrame) -> tuple[list[str], list[str]]:
    """The labels of `kinds` that are residual ResNets, and those that are VGGs (with BN or without)."""
    labels = sorted(kinds.index)
    resnets = [m for m in labels if kinds.loc[m, "builder"] == "resnet" and bool(kinds.loc[m, "residual"])]
    return resnets, [m for m in labels if kinds.loc[m, "builder"] == "vgg"]


def pairs(kinds: pd.DataFrame) -> list[Pair]:
    """Every tested pair among the labels of `kinds` (see `study.traits`), in a fixed order."""
    labels = sorted(kinds.index)
    out = []
    for kind, differ, same in ((RESIDUAL, "residual", "batch_norm"), (BN, "batch_norm", "residual")):
        for i, x in enumerate(labels):
            for y in labels[i + 1 :]:
                if _twin(kinds, x, y, differ, same):
                    with_, without = (x, y) if kinds.loc[x, differ] else (y, x)
                    out.append(Pair(kind, with_, without, kinds.loc[x, "arm"]))
    resnets, vggs = resnets_and_vggs(kinds)
    out += [
        Pair(RESNET_VGG, r, v, kinds.loc[r, "arm"])
        for r in resnets
        for v in vggs
        if kinds.loc[r, ["arm", "fingerprint"]].equals(kinds.loc[v, ["arm", "fingerprint"]])
    ]
    return out


def by_seed(rows: pd.DataFrame, column: str, scale: float = 1.0) -> dict[int, float]:
    """{seed: value} of one label's counted runs."""
    return {int(s): scale * float(v) for s, v in zip(rows["seed"], rows[column])}
