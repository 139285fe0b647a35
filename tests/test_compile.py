"""torch.compile through the same loop (slow: inductor compiles C++ kernels on the CPU)."""

from __future__ import annotations

import json

import pytest

from archbench.config import RunRequest
from archbench.study import run_models


@pytest.mark.slow
def test_compiled_model_trains_and_flops_count_the_uncompiled_one(tiny_registry, tiny_data, tmp_path):
    runs = {}
    for compile in (False, True):
        (summary,) = run_models(
            RunRequest(
                models=["tiny_resnet"],
                data=str(tiny_data),
                preset="smoke",
                epochs=1,
                batch_size=16,
                image_size=32,
                device="cpu",
                compile=compile,
                deterministic=False,
                out=tmp_path / str(compile),
                quiet=True,
                registry=tiny_registry,
            )
        )
        runs[compile] = summary
    assert runs[True]["status"] == "completed"
    assert runs[True]["gflops"] == runs[False]["gflops"] and runs[True]["parameters"] == runs[False]["parameters"]
    (run,) = (tmp_path / "True" / "tiny_resnet").iterdir()
    assert json.loads((run / "config.json").read_text())["compile"] is True
    # Same seed, same batches: the compiled step computes the same function up to kernel rounding.
    assert runs[True]["final_train_acc"] == pytest.approx(runs[False]["final_train_acc"], abs=0.05)
