"""Shared fixtures: a tiny registry and tiny synthetic datasets, built once per test session; the RNG and
determinism state each test starts from; `tiny_run_request`, the `run` request the loop's tests share; and
`invoke` with `run_args`, the CLI as the failure tests call it."""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from archbench.cli import app
from archbench.config import RunRequest, TuneRequest

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


TINY_SET = {"classes": 3, "train_per_class": 4, "val_per_class": 2, "seed": 0}  # the data tests' smallest set


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    """The smallest synthetic set (`TINY_SET`), prepared once: tests that change files work on copies."""
    from archbench.data.synthetic import make_synthetic

    root = tmp_path_factory.mktemp("tiny")
    make_synthetic(root, **TINY_SET)
    return root


@pytest.fixture
def layout(tiny_root, tmp_path) -> Path:
    """A private copy of the smallest set's JPEG layout, for tests that damage it."""
    from archbench.data.synthetic import LAYOUT_DIR

    return Path(shutil.copytree(tiny_root / LAYOUT_DIR, tmp_path / "src"))


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """4 classes, 24 train and 8 val images each, in the Tiny-ImageNet layout, prepared."""
    from archbench.data.synthetic import make_synthetic

    root = tmp_path_factory.mktemp("tiny-data")
    make_synthetic(root=root, classes=4, train_per_class=24, val_per_class=8, seed=0)
    return root


@pytest.fixture(autouse=True)
def torch_globals_restored():
    """The loop seeds the global RNGs and sets torch's determinism and cuDNN flags for the process it trains
    in; an in-process run in a test must leave the next test the state it would have found alone."""
    flags = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark
    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        yield
    torch.use_deterministic_algorithms(flags[0])
    torch.backends.cudnn.benchmark = flags[1]
    random.setstate(python_state)
    np.random.set_state(numpy_state)


def tiny_run_request(registry, data, out, models=("tiny_resnet",), request_type=RunRequest, **overrides) -> RunRequest:
    """`archbench run` of tiny models on tiny data: the smoke preset, 2 epochs at 32x32, batch 16, CPU, quiet."""
    settings = dict(
        models=list(models),
        data=str(data),
        preset="smoke",
        epochs=2,
        batch_size=16,
        image_size=32,
        device="cpu",
        out=out,
        quiet=True,
        registry=registry,
    )
    return request_type(**{**settings, **overrides})


def tiny_tune_request(registry, data, out, models=("tiny_resnet",), **overrides) -> TuneRequest:
    """`archbench tune` of tiny models on tiny data: `tiny_run_request`'s settings, rates 0.01 and 0.1 for one epoch
    each, 4 images per class held out."""
    settings = dict(lrs=[0.01, 0.1], epochs=1, holdout_per_class=4)
    return tiny_run_request(registry, data, out, models, TuneRequest, **{**settings, **overrides})


def invoke(*args) -> tuple[int, str]:
    """`archbench ARGS` in this process: its exit code and output; a traceback fails the test."""
    result = CliRunner().invoke(app, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"a traceback for {args}: {result.exception!r}") from result.exception
    return result.exit_code, result.output


def run_args(registry, data, out, *extra, model="tiny_resnet") -> list:
    """`archbench run MODEL` on tiny data: the smoke preset, 1 epoch at 32x32, batch 16, CPU, quiet, into `out`."""
    return [
        "run",
        model,
        *["--data", data, "--preset", "smoke", "--epochs", 1, "--batch-size", 16, "--image-size", 32],
        *["--device", "cpu", "--quiet", "--registry", registry, "--out", out, *extra],
    ]
