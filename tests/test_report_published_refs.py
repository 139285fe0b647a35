"""The published Tiny-ImageNet and ImageNet references stand beside Tiny-ImageNet runs only."""

from __future__ import annotations

import pytest
from test_report import generate, write_run

PUBLISHED_TABLE = "Published references under other protocols"


@pytest.mark.parametrize(
    ("data_name", "shown"),
    [
        ("digits", False),
        pytest.param(None, True, marks=pytest.mark.slow),  # the runs' default: Tiny-ImageNet
        pytest.param("cifar10", False, marks=pytest.mark.slow),
    ],
)
def test_published_references_only_for_tiny_imagenet_runs(tmp_path, data_name, shown):
    kw = {} if data_name is None else {"data_name": data_name}
    for model, final in (("resnet18", 0.5), ("resnet18_plain", 0.4)):
        for seed in range(2):
            write_run(tmp_path / "runs", model, seed, [0.5 * final, final + 0.01 * seed], **kw)
    text = generate(tmp_path, tmp_path / "runs")
    assert (PUBLISHED_TABLE in text) is shown
    assert ("giung2-jax" in text) is shown
