"""Shared fixtures: a tiny registry and tiny synthetic datasets, built once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

TINY_MODELS = {
    "tiny_resnet": """
description = "A 4-block ResNet at widths 8-32, for tests"
builder = "resnet"
[args]
layers = [1, 1, 1, 1]
widths = [8, 16, 16, 32]
residual = true
""",
    "tiny_plain": """
description = "tiny_resnet without shortcuts, for tests"
builder = "resnet"
[args]
layers = [1, 1, 1, 1]
widths = [8, 16, 16, 32]
residual = false
""",
    "tiny_vgg": """
description = "A 3-conv VGG without BN and a small classifier, for tests"
builder = "vgg"
[args]
config = [8, "M", 16, "M", 16, "M"]
batch_norm = false
hidden = 32
pool_size = 1
[recipe]
lr_scale = 0.1
""",
}


def pytest_configure(config):
    # Keep the default synthetic set (and anything else cached) out of the user's home.
    if "ARCHBENCH_CACHE" not in os.environ:
        import tempfile

        os.environ["ARCHBENCH_CACHE"] = tempfile.mkdtemp(prefix="archbench-cache-")


@pytest.fixture(scope="session")
def tiny_registry(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("registry")
    for name, text in TINY_MODELS.items():
        (folder / f"{name}.toml").write_text(text.lstrip())
    return folder


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """4 classes, 24 train and 8 val images each, in the Tiny-ImageNet layout, prepared."""
    from archbench.data.synthetic import make_synthetic

    root = tmp_path_factory.mktemp("tiny-data")
    make_synthetic(root=root, classes=4, train_per_class=24, val_per_class=8, seed=0)
    return root
