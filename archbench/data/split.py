"""A validation split carved from the training images, so nothing is chosen by looking at the test set.

Tiny-ImageNet's val set is the study's test set. Choosing an epoch or a learning rate by it is test-set
selection; `holdout` sets aside ``per_class`` training images of every class instead. The choice
depends only on the labels and the split's own seed (never the training seed), so every model and every
seed of a study holds out the same images, and the fingerprint of the chosen indices says so.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from archbench.errors import ArchbenchError


@dataclass(frozen=True)
class Holdout:
    """Indices into the training split: what trains and what validates (both sorted)."""

    train: np.ndarray
    val: np.ndarray
    per_class: int
    seed: int

    @property
    def fingerprint(self) -> str:
        """sha256 of the held-out indices (int64, little-endian): equal fingerprints, equal splits."""
        return hashlib.sha256(self.val.astype("<i8").tobytes()).hexdigest()

    def record(self) -> dict:
        return {
            "per_class": self.per_class,
            "seed": self.seed,
            "size": int(len(self.val)),
            "fingerprint": self.fingerprint,
        }


def holdout(labels: np.ndarray, per_class: int, seed: int) -> Holdout:
    """Hold out `per_class` images of each class, drawn by a generator of `seed` alone."""
    labels = np.asarray(labels)
    classes, counts = np.unique(labels, return_counts=True)
    smallest = int(counts.min())
    if per_class < 1 or per_class >= smallest:
        raise ArchbenchError(
            f"--holdout-per-class {per_class} must be at least 1 and leave at least one training image per class "
            f"(the smallest class has {smallest} images): use 1 to {smallest - 1}."
        )
    rng = np.random.default_rng([seed, 0x5A11])
    chosen = [rng.choice(np.flatnonzero(labels == c), size=per_class, replace=False) for c in classes]
    val = np.sort(np.concatenate(chosen))
    train = np.setdiff1d(np.arange(len(labels)), val, assume_unique=True)
    return Holdout(train=train, val=val, per_class=per_class, seed=seed)
