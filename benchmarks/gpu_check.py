"""One model's GPU measurements, for benchmarks/gpu.sh (each model in its own process, so allocator state and
dynamo caches never carry from one model to the next).

1. The real training loop, end to end: `archbench.train.run_models` for two epochs (compiled, bf16,
   channels_last, 224 on a GPU), recording a normal run; the number is epoch 2's training images/s (epoch 1
   holds the compilation, and its first step is timed apart as compile_seconds).
2. Model-only throughput in the same process: the loop's own `build_training` and `optimiser_step` on one
   fixed batch already on the device (the inductor cache from step 1 makes the recompile quick), and the
   same compiled model's inference (eval mode, inference_mode) on that batch; warm-up excluded, each
   window timed with CUDA events and one synchronise at its end.
3. The batch transform against the forward, in the same process: seconds of the loader's work for one
   batch (the gather of its uint8 images and `transform_batch`, writing the training dtype and memory
   format in one pass) over seconds of the model's training forward on that batch.

Writes <out>/<model>.json. `--cpu-check` runs the same steps on the CPU at a tiny size.

usage: python benchmarks/gpu_check.py MODEL --data DIR --out DIR [--cpu-check]
       python benchmarks/gpu_check.py --collect DIR   (gathers the per-model files, and the forward latency
                                                       of DIR/forward_latency.json, into DIR/gpu-results.json)
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import math
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

from archbench import runs
from archbench.config import RunRequest
from archbench.data import resolve
from archbench.data.loader import transform_batch
from archbench.devices import synchronize
from archbench.distributed import DistContext
from archbench.registry import get_entry
from archbench.train import build_training, optimiser_step, plan_runs, run_models

# steps and warmup: the model-only windows; gradnorm_steps: the loop's early gradient records, as in a study run
# on a GPU, and two on the CPU check (at VGG's 134M parameters each record costs about a step there).
GPU = {
    "image_size": 224,
    "batch_size": 256,
    "precision": "bf16",
    "device": "cuda",
    "steps": 50,
    "warmup": 10,
    "gradnorm_steps": 20,
}
CPU_CHECK = {
    "image_size": 32,
    "batch_size": 16,
    "precision": "fp32",
    "device": "cpu",
    "steps": 1,
    "warmup": 1,
    "gradnorm_steps": 2,
}


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
        gradnorm_steps=settings["gradnorm_steps"],
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


def seconds_per_call(fn: Callable[[], object], device: torch.device, warmup: int, calls: int) -> float:
    """Mean seconds of `fn` over `calls` calls after `warmup` untimed ones; on CUDA timed by two events with
    one synchronise at the end of the window, on the CPU by the wall clock."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000 / calls
    began = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - began) / calls


def model_only(request: RunRequest, settings: dict) -> dict:
    """Images/s of the loop's step and of inference on one fixed batch (the ceilings the input pipeline is
    measured against), and the batch transform's seconds over the training forward's on that batch."""
    device = torch.device(settings["device"])
    data = resolve(request.data)
    (plan,) = plan_runs(request, data, None, device, world_size=1)
    config = replace(plan.config, gradnorm_steps=0)  # the loop records gradients in its first steps only
    model = get_entry(request.models[0]).build(num_classes=data.num_classes)
    training = build_training(model, config, data, None, device, DistContext())
    loader = training.train_loader
    x, y = next(iter(loader))
    warmup, steps = settings["warmup"], settings["steps"]
    step = itertools.count()
    train_s = seconds_per_call(lambda: optimiser_step(training, x, y, next(step)), device, warmup, steps)

    def forward():
        with training.autocast():
            training.forward(x)

    forward_s = seconds_per_call(forward, device, warmup, steps)
    indices, offsets, flips = (t[: loader.batch_size] for t in loader.epoch_plan())  # the first batch's draw

    def transform():
        transform_batch(loader.images[indices], loader.image_size, offsets, flips, loader.channels_last, loader.dtype)

    transform_s = seconds_per_call(transform, device, warmup, steps)
    training.model.eval()
    with torch.inference_mode():
        inference_s = seconds_per_call(forward, device, warmup, steps)
    training.model.train()
    return {
        "model_only_train_images_per_s": len(y) / train_s,
        "model_only_inference_images_per_s": len(y) / inference_s,
        "transform_seconds": transform_s,
        "forward_seconds": forward_s,
        "transform_over_forward": transform_s / forward_s,
    }


# The goals a GPU run is for (one H100/H200, 224, bf16, channels_last, compiled).
GOALS = (
    ("resnet18 training end to end", "resnet18", "epoch2_images_per_s", 15_000),
    ("vgg16_bn training end to end", "vgg16_bn", "epoch2_images_per_s", 3_500),
    ("resnet18 end-to-end / model-only", "resnet18", "end_to_end_over_model_only", 0.97),
    ("vgg16_bn end-to-end / model-only", "vgg16_bn", "end_to_end_over_model_only", 0.97),
)


NOT_MODELS = ("device.json", "gpu-results.json", "forward_latency.json")


def latency_rows(path: Path) -> list[dict]:
    """The forward-latency benchmark's medians (seconds; None where one implementation was not measured)."""
    if not path.exists():
        return []
    from archbench.report.load import load_latency

    rows = load_latency(path).to_dict("records")
    return [{k: None if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()} for row in rows]


def collect(folder: Path) -> dict:
    """gpu-results.json: the device and versions, every model's numbers, each goal met or not, and the
    forward latency measured on the device."""
    info = json.loads((folder / "device.json").read_text())
    models = {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json")) if p.name not in NOT_MODELS}
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
                "inference_images_per_s": m["model_only_inference_images_per_s"],
                "end_to_end_over_model_only": m["end_to_end_over_model_only"],
                "transform_over_forward": m["transform_over_forward"],
            }
            for m in models.values()
        ],
        "goals": goals,
        "latency": latency_rows(folder / "forward_latency.json"),
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
    ceiling = model_only(request, settings)
    result = {
        "model": args.model,
        **{k: settings[k] for k in ("image_size", "batch_size", "precision", "device")},
        "channels_last": True,
        "compile": True,
        **loop,
        **ceiling,
        "end_to_end_over_model_only": (
            loop["epoch2_images_per_s"] / ceiling["model_only_train_images_per_s"]
            if loop["epoch2_images_per_s"]
            else None
        ),
    }
    (args.out / f"{args.model}.json").write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    main()
