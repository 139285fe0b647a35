"""A torchvision model and a network of the user's own train through the shared loop beside the baselines."""

from __future__ import annotations

import json

import torchvision

from archbench.catalogue import python_code_sha256
from archbench.config import RunRequest
from archbench.study import run_models

MOBILENET = (
    'description = "MobileNetV3-Small, torchvision\'s"\nbuilder = "torchvision"\n[args]\nname = "mobilenet_v3_small"\n'
)
MY_NET = """
from torch import nn


def make_net(num_classes: int, width: int = 8) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes),
    )
"""


def test_one_epoch_of_a_torchvision_model_and_a_users_network(tiny_data, tmp_path):
    registry = tmp_path / "registry"
    registry.mkdir()
    (registry / "mobilenet.toml").write_text(MOBILENET)
    (registry / "mynet.py").write_text(MY_NET)
    (registry / "mine.toml").write_text(
        'description = "mine"\nbuilder = "python"\n[args]\ntarget = "mynet.py:make_net"\nwidth = 6\n'
    )
    out = tmp_path / "runs"
    summaries = run_models(
        RunRequest(
            models=["mobilenet", "mine"],
            data=str(tiny_data),
            preset="smoke",
            epochs=1,
            batch_size=16,
            image_size=32,
            device="cpu",
            out=out,
            quiet=True,
            registry=registry,
        )
    )
    assert [s["status"] for s in summaries] == ["completed", "completed"]
    mobilenet, mine = (json.loads((out / s["model"] / s["run_id"] / "config.json").read_text()) for s in summaries)
    assert mobilenet["entry"]["builder"] == "torchvision" and mobilenet["entry"]["residual"] is True
    reference = torchvision.models.mobilenet_v3_small(num_classes=4)  # the data's four classes
    assert summaries[0]["parameters"] == sum(p.numel() for p in reference.parameters())
    assert mine["entry"]["target"] == "mynet.py:make_net" and mine["entry"]["args"]["width"] == 6
    assert mine["entry"]["source_sha256"] == python_code_sha256("mynet.py:make_net", registry)
    assert (mine["entry"]["residual"], mine["entry"]["batch_norm"], mine["entry"]["depth"]) == (False, True, 2)
    assert summaries[1]["parameters"] == 3 * 6 * 9 + 6 + 2 * 6 + 6 * 4 + 4
