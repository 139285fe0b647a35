"""The steps of benchmarks/gpu.sh, each a subcommand that writes its numbers the moment it has them, and the
collection of whatever the steps left into the folder that comes back from the GPU machine.

    python3 benchmarks/gpu_check.py device WORK [--cpu-check]   device.json: device, versions, the code measured
    python3 benchmarks/gpu_check.py data ROOT --classes C --train-per-class N --test-per-class M
    python3 benchmarks/gpu_check.py loop MODEL --data ROOT --out WORK [--cpu-check]
    python3 benchmarks/gpu_check.py collect WORK --into DIR    gpu-results.json, summary.txt, results.tar.gz

`device` checks that the working tree's code is what runs (archbench imported from the tree, and any
installed non-editable archbench wheel identical to the tree's files: a mismatch is an error) and records
`archbench.__file__`, a hash of the tree's archbench sources and, where the copy has git metadata, the commit
and whether the tree is dirty.

`data` writes the throughput set straight into the packed arrays the loader reads (the synthetic generator's
pictures, no JPEG round trip).

`loop MODEL` (each model in its own process, so allocator state and dynamo caches never carry over):

1. The real training loop, end to end: `archbench.study.run_models` (compiled, bf16, channels_last, 224 on a
   GPU). Epoch 1 holds the compilation; the loop's images/s is the median over the later (steady) epochs,
   with their spread. The run record is written after every epoch, so a step cut short keeps its epochs.
2. In the same process, with the loop's own `Training` (its compiled step, no recompilation): rounds of
   `ROUND_STEPS` optimiser steps on batches the loader made once and kept on the device (model only),
   alternating with rounds of as many steps fed by the loader (the same step, batches made as it goes);
   medians and spreads of both, and of their per-round ratio.
3. The batch transform against the step's first phase, the training forward with its loss
   (`archbench.train.forward_loss`), on one batch (seconds of each, their ratio).

After each part `<WORK>/<MODEL>.json` is rewritten with everything measured so far.
`collect` reads any subset of the steps' files (a missing or failed step is named, never a traceback).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import itertools
import json
import math
import os
import platform
import statistics
import sys
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

TREE = Path(__file__).resolve().parent.parent  # the working tree this script belongs to

# The goals a GPU run is for (one H100/H200, 224, bf16, channels_last, compiled): (goal, model, key, target).
GOALS = (
    ("resnet18 training end to end", "resnet18", "train_images_per_s", 15_000),
    ("vgg16_bn training end to end", "vgg16_bn", "train_images_per_s", 3_500),
    ("resnet18 end-to-end / model-only", "resnet18", "end_to_end_over_model_only", 0.97),
    ("vgg16_bn end-to-end / model-only", "vgg16_bn", "end_to_end_over_model_only", 0.97),
)
MODELS = ("resnet18", "vgg16_bn")
REQUIRED_STEPS = ("device", "data", *(f"loop-{m}" for m in MODELS))
OPTIONAL_STEPS = ("latency", "bench")
STEPS_FILE = "steps.jsonl"  # one line per step from gpu.sh: name, exit code, seconds, timeout, or why skipped
RESULTS = "gpu-results.json"
SUMMARY = "summary.txt"
ARCHIVE = "results.tar.gz"
NOT_ARCHIVED = (".pt", ".pth", ".ckpt", ".npy")  # checkpoints and data arrays never travel

# rounds and round_steps: the model-only / loader-fed rounds; gradnorm_steps: the loop's early gradient records,
# as in a study run on a GPU, and two on the CPU check.
GPU = {
    "image_size": 224,
    "batch_size": 256,
    "precision": "bf16",
    "device": "cuda",
    "epochs": 4,
    "rounds": 3,
    "round_steps": 20,
    "gradnorm_steps": 20,
}
CPU_CHECK = {
    "image_size": 32,
    "batch_size": 16,
    "precision": "fp32",
    "device": "cpu",
    "epochs": 3,
    "rounds": 2,
    "round_steps": 1,
    "gradnorm_steps": 2,
}


def write_json(path: Path, data: dict) -> None:
    """Write `data` whole or not at all (a step killed mid-write leaves the previous version)."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(partial, path)


def spread(values: list[float]) -> dict:
    """Median, min, max and every value: the number and how far the samples behind it lie apart."""
    if not values:
        return {"median": None, "min": None, "max": None, "values": []}
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "values": values}


# ------------------------------------------------------------------------------------------ device


def tree_sources_sha256(tree: Path = TREE) -> str:
    """One hash of every archbench/*.py file of the tree (paths and contents): the code measured, with or
    without git metadata on the machine."""
    digest = hashlib.sha256()
    for path in sorted((tree / "archbench").rglob("*.py")):
        digest.update(path.relative_to(tree).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def wheel_mismatches(tree: Path = TREE) -> tuple[str | None, list[str]]:
    """(where an installed non-editable archbench distribution lives, its archbench/*.py files that differ
    from the tree's): a carried wheel built from other code. (None, []) when only an editable install or
    none is there."""
    import base64
    from importlib import metadata

    try:
        dist = metadata.distribution("archbench")
    except metadata.PackageNotFoundError:
        return None, []
    files = [f for f in dist.files or [] if f.parts[0] == "archbench" and f.suffix == ".py" and f.hash]
    if not files:  # an editable install points at a tree and carries no copies
        return None, []
    differ = []
    for f in files:
        mine = tree / f.as_posix()
        want = f.hash.value
        got = (
            base64.urlsafe_b64encode(hashlib.new(f.hash.mode, mine.read_bytes()).digest()).rstrip(b"=").decode()
            if mine.exists()
            else None
        )
        if got != want:
            differ.append(f.as_posix())
    shipped = {f.as_posix() for f in files}
    differ += sorted(
        p.relative_to(tree).as_posix()
        for p in (tree / "archbench").rglob("*.py")
        if p.relative_to(tree).as_posix() not in shipped
    )
    return str(dist.locate_file("")), sorted(differ)


def device_info(out: Path, cpu_check: bool) -> dict:
    """device.json: the device, driver and versions, and the code measured. Raises SystemExit with one line
    when the code is not the tree's (archbench imported from elsewhere, or a carried wheel that differs)."""
    import torch
    import torchvision

    import archbench
    from archbench.provenance import git_state

    commit, dirty = git_state(TREE)
    driver = None
    if not cpu_check:
        import subprocess

        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True, text=True
        )
        driver = smi.stdout.strip().splitlines()[0] if smi.returncode == 0 and smi.stdout.strip() else None
    imported = Path(archbench.__file__).resolve()
    wheel, differ = wheel_mismatches()
    info = {
        "measured_at": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "device": "cpu" if cpu_check else torch.cuda.get_device_name(),
        "driver": driver,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "cuda": None if cpu_check else torch.version.cuda,
        "archbench": archbench.__version__,
        "archbench_file": str(imported),
        "archbench_sources_sha256": tree_sources_sha256(),
        "git_commit": commit,
        "git_dirty": dirty,
        "installed_wheel": wheel,
        "wheel_differs_in": differ,
        "cpu_check": cpu_check,
    }
    write_json(out / "device.json", info)
    print(json.dumps(info, indent=2, sort_keys=True))
    if not imported.is_relative_to(TREE / "archbench"):
        raise SystemExit(f"archbench was imported from {imported}, not from the working tree {TREE}")
    if differ:
        raise SystemExit(
            f"the installed archbench wheel ({wheel}) differs from the working tree in {len(differ)} file(s), "
            f"e.g. {differ[0]}: rebuild the wheel from this tree"
        )
    return info


# ------------------------------------------------------------------------------------------ data


def write_throughput_set(root: Path, classes: int, train_per_class: int, test_per_class: int, seed: int = 0) -> Path:
    """The synthetic generator's pictures written straight into packed arrays under `root` (no JPEG encode
    and decode); returns the packed folder. Kept when already there with the same parameters."""
    from concurrent.futures import ProcessPoolExecutor

    import numpy as np

    from archbench.data import synthetic
    from archbench.data.files import staged
    from archbench.data.packed import PACKED_DIR, check_cache, write_manifest
    from archbench.data.tinyimagenet import AUGMENTATION

    params = {
        **synthetic.synthetic_params(classes, train_per_class, test_per_class, seed),
        "written_as": "packed arrays, without the JPEG round trip",
    }
    packed = Path(root) / PACKED_DIR
    manifest, _ = check_cache(packed)
    if manifest is not None and manifest.get("synthetic_params") == params:
        return packed

    def split(per_class: int, offset: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.repeat(np.arange(classes), per_class)
        rngs = [np.random.default_rng((seed, offset, c, i)) for c in range(classes) for i in range(per_class)]
        workers = os.cpu_count() or 1  # about 2 ms of numpy per picture, most of it under the GIL: processes
        with ProcessPoolExecutor(max_workers=workers) as pool:
            drawn = pool.map(synthetic.render, labels.tolist(), rngs, chunksize=max(1, len(rngs) // (4 * workers)))
            images = [pixels for pixels, _ in drawn]
        return np.stack(images), labels.astype(np.int64)

    wnids = [synthetic.wnid(c) for c in range(classes)]
    with staged(packed, "building") as staging:
        for name, (images, labels) in (("train", split(train_per_class, 0)), ("test", split(test_per_class, 1))):
            np.save(staging / f"{name}_images.npy", images)
            np.save(staging / f"{name}_labels.npy", labels)
        write_manifest(
            staging,
            dataset="synthetic",
            classes=wnids,
            names={w: synthetic.class_name(c) for c, w in enumerate(wnids)},
            class_order="class index",
            source={"kind": "synthetic arrays", "location": None, "checksum": None, "verified": True},
            augmentation=AUGMENTATION,
            synthetic_params=params,
        )
    return packed


# ------------------------------------------------------------------------------------------ loop


def seconds_per_call(fn: Callable[[], object], device, warmup: int, calls: int) -> float:
    """Mean seconds of `fn` over `calls` calls after `warmup` untimed ones; on CUDA timed by two events with
    one synchronise at the end of the window, on the CPU by the wall clock."""
    import torch

    from archbench.devices import synchronize

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


def loop_numbers(run_folder: Path) -> dict:
    """The loop's numbers from a run record as it stands (written after every epoch): the median images/s
    of the steady epochs (all but the first, which compiles) with their spread, compile time, peak memory."""
    import csv

    from archbench import runs

    result: dict = {"run_id": run_folder.name}
    metrics = run_folder / runs.METRICS
    if metrics.exists():
        with open(metrics, encoding="utf-8") as f:
            epochs = [float(row["train_images_per_s"]) for row in csv.DictReader(f)]
        result["epochs_recorded"] = len(epochs)
        result["train_images_per_s"] = spread(epochs[1:])
    summary = run_folder / runs.SUMMARY
    if summary.exists():
        s = json.loads(summary.read_text())
        result.update({k: s.get(k) for k in ("status", "compile_seconds", "peak_memory_mb")})
    return result


def measure_loop(model: str, data: str, out: Path, settings: dict) -> dict:
    import torch

    from archbench import study, train
    from archbench.config import RunRequest
    from archbench.data.loader import transform_batch

    device = torch.device(settings["device"])
    result = {
        "model": model,
        **{k: settings[k] for k in ("image_size", "batch_size", "precision", "device", "epochs")},
        "channels_last": True,
        "compile": True,
    }
    path = out / f"{model}.json"
    write_json(path, result)
    request = RunRequest(
        models=[model],
        data=data,
        preset="paper",
        epochs=settings["epochs"],
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
    built = []
    build_training = train.build_training

    def keep(*args, **kwargs):  # the loop's Training, so that part 2 reuses its compiled step
        built.append(build_training(*args, **kwargs))
        return built[-1]

    train.build_training = keep
    try:
        (summary,) = study.run_models(request)
    finally:
        train.build_training = build_training
    result.update(loop_numbers(out / "runs" / model / summary["run_id"]))
    write_json(path, result)

    # 2. model only (batches made once) against loader-fed rounds, alternating, in this process
    (t,) = built
    loader = t.train_loader
    steps = settings["round_steps"]
    loader.set_epoch(settings["epochs"])
    kept = list(itertools.islice(iter(loader), steps))
    step = itertools.count(len(loader) * settings["epochs"])  # past the gradient records' window

    def kept_round():
        for x, y in kept:
            train.optimiser_step(t, x, y, next(step))

    def fed_round():
        for x, y in itertools.islice(iter(loader), steps):
            train.optimiser_step(t, x, y, next(step))

    t.model.train()
    images = steps * loader.batch_size
    model_only, fed = [], []
    seconds_per_call(kept_round, device, 1, 1)  # warm-up
    for _ in range(settings["rounds"]):
        model_only.append(images / seconds_per_call(kept_round, device, 0, 1))
        fed.append(images / seconds_per_call(fed_round, device, 0, 1))
    result.update(
        model_only_train_images_per_s=spread(model_only),
        loader_fed_train_images_per_s=spread(fed),
        loader_fed_over_model_only=spread([f / m for f, m in zip(fed, model_only)]),
    )
    loop = result.get("train_images_per_s", {}).get("median")
    result["end_to_end_over_model_only"] = loop / statistics.median(model_only) if loop else None
    write_json(path, result)

    # 3. the batch transform against the training forward with its loss, on one batch
    x, y = kept[0]
    plan = loader.epoch_plan()  # the first batch's draw: the gather of its images and the transform
    indices, offsets, flips = (None if v is None else v[: loader.batch_size] for v in plan)
    how = {"mean": loader.mean, "std": loader.std, "augmentation": loader.augmentation}

    def forward():
        train.forward_loss(t, x, y)

    def transform():
        transform_batch(
            loader.images[indices], loader.image_size, offsets, flips, loader.channels_last, loader.dtype, **how
        )

    calls = max(2, steps)
    result["forward_seconds"] = seconds_per_call(forward, device, 1, calls)
    result["transform_seconds"] = seconds_per_call(transform, device, 1, calls)
    result["transform_over_forward"] = result["transform_seconds"] / result["forward_seconds"]
    write_json(path, result)
    return result


# ------------------------------------------------------------------------------------------ collect


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def step_states(work: Path) -> dict[str, dict]:
    """Each step's last line in the steps file (gpu.sh appends one per step run or skipped)."""
    states = {}
    try:
        lines = (work / STEPS_FILE).read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        try:
            row = json.loads(line)
            states[row["step"]] = row
        except (ValueError, KeyError, TypeError):
            continue
    return states


def why_missing(step: str, states: dict[str, dict]) -> str:
    """Why a step left no number: not run, skipped, timed out, failed or still running."""
    state = states.get(step)
    if state is None:
        return f"step {step} did not run"
    if state.get("skipped"):
        return f"step {step} skipped: {state['skipped']}"
    code = state.get("exit")
    if code is None:
        return f"step {step} was cut short while running"
    if code == 124:
        return f"step {step} timed out after {state.get('timeout')} s (see {step}.log in {ARCHIVE})"
    if code != 0:
        return f"step {step} failed with exit {code} (see {step}.log in {ARCHIVE})"
    return f"step {step} finished without this number (see {step}.log in {ARCHIVE})"


def latency_rows(path: Path) -> list[dict]:
    """The forward-latency benchmark's medians (seconds; None where one implementation was not measured)."""
    if not path.exists():
        return []
    from archbench.report.load import load_latency

    rows = load_latency(path).to_dict("records")
    return [{k: None if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()} for row in rows]


def median_of(value):
    return value.get("median") if isinstance(value, dict) else value


def collect(work: Path, into: Path | None = None, cpu_check: bool = False) -> dict:
    """gpu-results.json, summary.txt and results.tar.gz in `into` (default: `work`), from whatever the steps
    left in `work`: every goal met, not met, or not measured and why."""
    into = into or work
    into.mkdir(parents=True, exist_ok=True)
    states = step_states(work)
    device = read_json(work / "device.json") or {}
    models = {m: read_json(work / f"{m}.json") for m in MODELS}
    for m in MODELS:  # a loop step cut short before its file had loop numbers: read its run record
        runs_dir = work / "runs" / m
        if (models[m] is None or "train_images_per_s" not in models[m]) and runs_dir.is_dir():
            folders = sorted(p for p in runs_dir.iterdir() if p.is_dir())
            if folders:
                models[m] = {"model": m, **(models[m] or {}), **loop_numbers(folders[-1])}
    goals = []
    for goal, model, key, target in GOALS:
        value = median_of((models.get(model) or {}).get(key))
        row = {"goal": goal, "target": target, "value": value, "met": None if value is None else value >= target}
        if value is None:
            row["why"] = why_missing(f"loop-{model}", states)
        goals.append(row)
    loop, model_only = [], []
    for m, numbers in models.items():
        if numbers is None:
            continue
        loop.append(
            {
                **{k: numbers.get(k) for k in ("model", "image_size", "batch_size", "precision", "channels_last")},
                "compile": numbers.get("compile"),
                "train_images_per_s": median_of(numbers.get("train_images_per_s")),
                "train_images_per_s_spread": numbers.get("train_images_per_s"),
                **{k: numbers.get(k) for k in ("epochs_recorded", "compile_seconds", "peak_memory_mb", "status")},
            }
        )
        if "model_only_train_images_per_s" in numbers:
            model_only.append(
                {
                    "model": m,
                    "train_images_per_s": median_of(numbers["model_only_train_images_per_s"]),
                    "train_images_per_s_spread": numbers["model_only_train_images_per_s"],
                    "end_to_end_over_model_only": numbers.get("end_to_end_over_model_only"),
                    "loader_fed_over_model_only": numbers.get("loader_fed_over_model_only"),
                    "transform_over_forward": numbers.get("transform_over_forward"),
                }
            )
    missing = [s for s in REQUIRED_STEPS if states.get(s, {}).get("exit") != 0]
    result = {
        **{k: device.get(k) for k in ("measured_at", "device", "driver", "torch", "cuda", "git_commit")},
        **{k: v for k, v in device.items() if k not in ("measured_at", "device", "driver", "torch", "cuda")},
        "cpu_check": bool(device.get("cpu_check", cpu_check)),
        "loop": loop,
        "model_only": model_only,
        "goals": goals,
        "latency": latency_rows(work / "forward_latency.json"),
        "steps": {s: states.get(s) for s in (*REQUIRED_STEPS, *OPTIONAL_STEPS)},
        "steps_missing_or_failed": missing,
    }
    write_json(into / RESULTS, result)
    (into / SUMMARY).write_text(summary_text(result))
    archive(work, into / ARCHIVE)
    return result


def g4(value):
    """Numbers to 4 significant digits for the summary (lists element by element)."""
    if isinstance(value, list):
        return "[" + ", ".join(g4(v) for v in value) + "]"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def summary_text(result: dict) -> str:
    kind = "CPU CHECK of the GPU script (not a GPU measurement)" if result["cpu_check"] else "GPU measurement"
    lines = [
        f"{kind}: {result.get('device')} at {result.get('measured_at')}, torch {result.get('torch')}, "
        f"CUDA {result.get('cuda')}, python {result.get('python')}",
        f"code: {result.get('archbench_file')} (sources sha256 {str(result.get('archbench_sources_sha256'))[:12]}, "
        f"commit {result.get('git_commit')}, dirty {result.get('git_dirty')})",
        "goals:",
    ]
    for g in result["goals"]:
        if g["value"] is None:
            lines.append(f"  not measured  {g['goal']} (target {g['target']}): {g['why']}")
        else:
            lines.append(
                f"  {'met' if g['met'] else 'NOT MET':12}  {g['goal']} = {g['value']:.4g} (target {g['target']})"
            )
    for row in result["loop"]:
        s = row["train_images_per_s_spread"] or {}
        lines.append(
            f"loop {row['model']}: {g4(s.get('median'))} images/s (steady epochs: {g4(s.get('values'))}), "
            f"compile {g4(row.get('compile_seconds'))} s, status {row.get('status')}"
        )
    for row in result["model_only"]:
        s = row["train_images_per_s_spread"]
        lines.append(
            f"model only {row['model']}: {g4(s['median'])} images/s (rounds: {g4(s['values'])}); loader-fed / "
            f"model-only {g4(median_of(row['loader_fed_over_model_only']))}; transform / forward "
            f"{g4(row['transform_over_forward'])}"
        )
    states = {k: v for k, v in result["steps"].items() if v}
    for step in result["steps"]:
        if states.get(step, {}).get("exit") != 0:
            lines.append(why_missing(step, states))
    return "\n".join(lines) + "\n"


def archive(work: Path, path: Path) -> None:
    """Every log and result file under `work` (never a checkpoint or data array) in one tar.gz, written whole."""
    partial = path.with_name(path.name + ".partial")
    with tarfile.open(partial, "w:gz") as tar:
        for file in sorted(work.rglob("*")):
            if file.is_file() and not file.name.endswith(NOT_ARCHIVED) and ".partial" not in file.name:
                tar.add(file, arcname=file.relative_to(work).as_posix())
    os.replace(partial, path)


# ------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("device")
    p.add_argument("work", type=Path)
    p.add_argument("--cpu-check", action="store_true")
    p = sub.add_parser("data")
    p.add_argument("root", type=Path)
    p.add_argument("--classes", type=int, required=True)
    p.add_argument("--train-per-class", type=int, required=True)
    p.add_argument("--test-per-class", type=int, required=True)
    p = sub.add_parser("loop")
    p.add_argument("model")
    p.add_argument("--data", required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--cpu-check", action="store_true")
    p = sub.add_parser("collect")
    p.add_argument("work", type=Path)
    p.add_argument("--into", type=Path)
    p.add_argument("--cpu-check", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "device":
        args.work.mkdir(parents=True, exist_ok=True)
        device_info(args.work, args.cpu_check)
    elif args.command == "data":
        began = time.perf_counter()
        packed = write_throughput_set(args.root, args.classes, args.train_per_class, args.test_per_class)
        print(f"{packed} in {time.perf_counter() - began:.1f} s")
    elif args.command == "loop":
        args.out.mkdir(parents=True, exist_ok=True)
        result = measure_loop(args.model, args.data, args.out, CPU_CHECK if args.cpu_check else GPU)
        print(json.dumps(result, sort_keys=True))
    else:
        for goal in collect(args.work, args.into, args.cpu_check)["goals"]:
            state = "not measured" if goal["value"] is None else "met" if goal["met"] else "NOT MET"
            why = f": {goal['why']}" if "why" in goal else ""
            print(f"{state}: {goal['goal']} = {goal['value']} (target {goal['target']}){why}")


if __name__ == "__main__":
    sys.path.insert(0, str(TREE))  # the working tree's archbench before any installed copy
    main()
