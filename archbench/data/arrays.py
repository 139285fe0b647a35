"""What every data source hands to the packer: a data set's splits as in-memory arrays (`SourceArrays`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class SourceArrays:
    """A data set's train and test splits: uint8 images N x H x W x 3 and int64 labels in [0, len(classes))."""

    classes: list[str]  # class identifiers in label order
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    names: dict[str, str] = field(default_factory=dict)  # class identifier -> readable name, where the source has one
    extra: dict = field(default_factory=dict)  # source-specific facts recorded in the manifest (e.g. coarse labels)
    # images left out or changed on the way, as `write_manifest` takes them (e.g. {"skipped_files": [...]})
    repairs: dict = field(default_factory=dict)
