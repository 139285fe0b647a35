"""Tiny-ImageNet-200 (real or synthetic) as packed arrays, and the device-resident loader that feeds them.

`resolve` is what the training and benchmark commands call with their ``--data`` value.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from archbench.data.tinyimagenet import PackedData, load_packed

__all__ = ["PackedData", "load_packed", "resolve"]


def resolve(spec: str | Path = "synthetic", console: Console | None = None) -> PackedData:
    """``"synthetic"``: the default synthetic set (generated once, cached); otherwise a prepared folder.

    Either way the data is verified against its manifest before it is returned (see `load_packed`).
    """
    if str(spec) == "synthetic":
        from archbench.data.synthetic import default_synthetic

        return load_packed(default_synthetic(console))
    return load_packed(Path(spec))
