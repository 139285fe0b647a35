"""Data sets as packed, verified arrays (any source, one form), and the device-resident loader that feeds them.

`resolve` is what the training and benchmark commands call with their ``--data`` value; `prepare` is
`archbench data prepare DATASET`; `SOURCES` names the data sets (`archbench.data.sources`).
"""

from __future__ import annotations

from archbench.data.packed import PackedData, load_packed
from archbench.data.sources import SOURCES, prepare, resolve

__all__ = ["SOURCES", "PackedData", "load_packed", "prepare", "resolve"]
