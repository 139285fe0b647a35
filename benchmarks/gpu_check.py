"""One model's GPU measurements, for benchmarks/gpu.sh (each model in its own process, so allocator state and
dynamo caches never carry from one model to the next).

1. The real training loop, end to end: `archbench.train.run_models` for two epochs (compiled, bf16,
   channels_last, 224 on a GPU), recording a normal run; the number is epoch 2's training images/s (epoch 1
   holds the compilation, and its first step is timed apart as compile_seconds).
2. Model-only throughput in the same process: the loop's own `build_training` and `optimiser_step` on one
   fixed batch already on the device (the inductor cache from step 1 makes the recompile quick), warm-up
   excluded, timed with CUDA events and one synchronise at the end of the window.

Writes <out>/<model>.json. `--cpu-check` runs the same steps on the CPU at a tiny size.

usage: python benchmarks/gpu_check.py MODEL --data DIR --out DIR [--cpu-check]
       python benchmarks/gpu_check.py --collect DIR   (gathers the per-model files into DIR/gpu-results.json)
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from archbench import runs
from archbench.config import RunRequest
from archbench.data import resolve
from archbench.devices import synchronize
from archbench.distributed import DistContext
from archbench.registry import get_entry
from archbench.train import build_training, optimiser_step, plan_runs, run_models

GPU = {"image_size": 224, "batch_size": 256, "precision": "bf16", "device": "cuda", "steps": 50, "warmup": 10}
CPU_CHECK = {"image_size": 32, "batch_size": 16, "precision": "fp32", "device": "cpu", "steps": 3, "warmup": 1}


def loop_throughput(model: str, data: str, out: Path, settings: dict) -> dict:
    request = RunRequest(
        models=[model],
        data=data,
        preset="paper",
        epochs=2,
        batch_size=settings["batch_size"],
        image_size=settings["image_size"],
        device=settings["device"],
        precision=settings["precision"],
        compile=True,
        channels_last=True,
        gradnorm_steps=20,
        out=out / "runs",
        fresh=True,
        quiet=True,
    )
    (summary,) = run_models(request)
    with open(out / "runs" / model / summary["run_id"] / runs.METRICS, encoding="utf-8") as f:
        epochs = list(csv.DictReader(f))
    return {
        "run_id": summary["run_id"],
        "status": summary["status"],
        "epoch2_images_per_s": float(epochs[-1]["train_images_per_s"]) if len(epochs) == 2 else None,
        "compile_seconds": summary["compile_seconds"],
        "peak_memory_mb": summary["peak_memory_mb"],
        "request": request,
    }


def model_only_throughput(request: RunRequest, settings: dict) -> float:
    """Images/s of the loop's step on one fixed batch: the ceiling the input pipeline is measured against."""
    device = torch.device(settings["device"])
    data = resolve(request.data)
    (plan,) = plan_runs(request, data, None, device, world_size=1)
    config = replace(plan.config, gradnorm_steps=0)  # the loop records gradients in its first steps only
    model = get_entry(request.models[0]).build(num_classes=data.num_classes)
    training = build_training(model, config, data, None, device, DistContext())
    x, y = next(iter(training.train_loader))
    for step in range(settings["warmup"]):
        optimiser_step(training, x, y, step)
    synchronize(device)
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for step in range(settings["steps"]):
            optimiser_step(training, x, y, step)
        end.record()
        torch.cuda.synchronize(device)
        seconds = start.elapsed_time(end) / 1000
    else:
        began = time.perf_counter()
        for step in range(settings["steps"]):
            optimiser_step(training, x, y, step)
        seconds = time.perf_counter() - began
    return settings["steps"] * len(y) / seconds


# The goals a GPU run is for (one H100/H200, 224, bf16, channels_last, compiled).
GOALS = (
    ("resnet18 training end to end", "resnet18", "epoch2_images_per_s", 15_000),
    ("vgg16_bn training end to end", "vgg16_bn", "epoch2_images_per_s", 3_500),
    ("resnet18 end-to-end / model-only", "resnet18", "end_to_end_over_model_only", 0.97),
    ("vgg16_bn end-to-end / model-only", "vgg16_bn", "end_to_end_over_model_only", 0.97),
)


def collect(folder: Path) -> dict:
    """gpu-results.json: the device and versions, every model's numbers, and each goal met or not."""
    info = json.loads((folder / "device.json").read_text())
    models = {
        p.stem: json.loads(p.read_text())
        for p in sorted(folder.glob("*.json"))
        if p.name not in ("device.json", "gpu-results.json")
    }
    goals = []
    for goal, model, key, target in GOALS:
        value = models.get(model, {}).get(key)
        goals.append({"goal": goal, "target": target, "value": value, "met": value is not None and value >= target})
    result = {
        **info,
        "loop": [
            {
                k: m.get(k)
                for k in (
                    "model",
                    "image_size",
                    "batch_size",
                    "precision",
                    "channels_last",
                    "compile",
                    "epoch2_images_per_s",
                    "compile_seconds",
                    "peak_memory_mb",
                    "status",
                )
            }
            for m in models.values()
        ],
        "model_only": [
            {
                "model": m["model"],
                "train_images_per_s": m["model_only_train_images_per_s"],
                "end_to_end_over_model_only": m["end_to_end_over_model_only"],
            }
            for m in models.values()
        ],
        "goals": goals,
    }
    (folder / "gpu-results.json").write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", nargs="?")
    parser.add_argument("--data")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--cpu-check", action="store_true")
    parser.add_argument("--collect", type=Path)
    args = parser.parse_args()
    if args.collect:
        for goal in collect(args.collect)["goals"]:
            print(f"{'met' if goal['met'] else 'NOT MET'}: {goal['goal']} = {goal['value']} (target {goal['target']})")
        return
    settings = CPU_CHECK if args.cpu_check else GPU
    args.out.mkdir(parents=True, exist_ok=True)
    loop = loop_throughput(args.model, args.data, args.out, settings)
    request = loop.pop("request")
    model_only = model_only_throughput(request, settings)
    result = {
        "model": args.model,
        **{k: settings[k] for k in ("image_size", "batch_size", "precision", "device")},
        "channels_last": True,
        "compile": True,
        **loop,
        "model_only_train_images_per_s": model_only,
        "end_to_end_over_model_only": (
            loop["epoch2_images_per_s"] / model_only if loop["epoch2_images_per_s"] else None
        ),
    }
    (args.out / f"{args.model}.json").write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    main()
