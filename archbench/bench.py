"""`archbench bench`: training and inference images/s of each model, each measured by a fresh
``python -m archbench.bench`` process (models measured in one process change each other's numbers:
`archbench.references.TIMM_BENCHMARK_PITFALLS`) that builds it as the training loop does (`bench_config`,
`archbench.train.build_training`), writes its numbers to a JSON file and exits (docs/speed.md).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from rich import box
from rich.console import Console
from rich.table import Table

import archbench
from archbench import devices, runs, train
from archbench.bench_results import GPU_SCRIPT_BENCH, MB, latest_bench_results, newest  # noqa: F401
from archbench.config import BENCH_DIR, BenchRequest, RunConfig, RunRequest, resolve_config
from archbench.data import resolve
from archbench.data.loader import DeviceLoader
from archbench.distributed import DistContext
from archbench.errors import ArchbenchError
from archbench.provenance import provenance, utc_now
from archbench.registry import get_entry

ROUNDS = 3
WARMUP_STEPS = 3
# Tests set this to a batch size: any larger batch then fails as a CUDA out-of-memory error would.
SIMULATE_OOM_ABOVE = "ARCHBENCH_BENCH_OOM_ABOVE"
STEP = 0  # the step number the loop's recorders see: with gradnorm_steps 0 (`bench_config`), a steady step
MODES = ("train", "inference")


class Clock:
    """Time stamps in stream order: on CUDA events, read only once the window is over (so that it holds no
    sync); on the CPU, `time.perf_counter`."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def mark(self):
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def seconds(self, start, end) -> float:
        if not self.cuda:
            return end - start
        end.synchronize()
        return start.elapsed_time(end) / 1000


def bench_config(name: str, request: BenchRequest, data, device: torch.device) -> RunConfig:
    """The run config the training loop resolves for `name` at the bench's settings: the default preset's
    recipe, and no early gradient diagnostics, so that every step is a steady one."""
    precision = devices.resolve_precision(request.precision, device)
    run = RunRequest(
        models=[name],
        batch_size=request.batch_size,
        image_size=request.image_size,
        compile=request.compile,
        gradnorm_steps=0,
        registry=request.registry,
    )
    return resolve_config(
        run,
        get_entry(name, registry=request.registry),
        0,
        data,
        device=device.type,
        precision=precision,
        channels_last=devices.resolve_channels_last(request.channels_last, device),
        optimizer_kernel=devices.optimizer_kernel(device, precision),
    )


def bench_data(data, num_classes: int):
    """The labels folded into the model's `num_classes` outputs, and no test split (the bench never reads
    it: its inference stream is the training images under the evaluation transform)."""
    return dataclasses.replace(
        data,
        train_labels=data.train_labels % num_classes,
        test_images=data.test_images[:0],
        test_labels=data.test_labels[:0],
    )


class Subject:
    """One model with what trains it, built as `archbench.train` builds them, and its batches."""

    def __init__(self, name: str, request: BenchRequest, data, device: torch.device):
        self.device, self.clock = device, Clock(device)
        self.config = bench_config(name, request, data, device)
        devices.seed_everything(self.config.seed, self.config.deterministic)
        model = get_entry(name, registry=request.registry).build(num_classes=request.num_classes)
        self.training = train.build_training(
            model, self.config, bench_data(data, request.num_classes), None, device, DistContext()
        )
        self.loader: DeviceLoader = self.training.train_loader  # full batches only, in the training dtype and layout
        self.fixed = next(iter(self.loader))
        # the evaluation transform in the training loader's full batches: the evaluation loader's near-equal
        # batches (254 and 253 at batch 256) would compile new graphs inside the windows
        self.eval_loader = self.loader.as_evaluation()

    def train_step(self, batch) -> None:
        train.optimiser_step(self.training, *batch, STEP)

    def infer_step(self, batch) -> None:
        with torch.inference_mode(), self.training.autocast():
            self.training.forward(batch[0])

    def batches(self, mode: str):
        """The end-to-end stream of a mode, epoch after epoch."""
        loader = self.loader if mode == "train" else self.eval_loader
        for epoch in itertools.count():
            loader.set_epoch(epoch)
            yield from loader

    def first_step_seconds(self, step) -> float:
        """The first call of a step, compilation included under --compile (outside any window)."""
        devices.synchronize(self.device)
        start = time.perf_counter()
        step(self.fixed)
        devices.synchronize(self.device)
        return time.perf_counter() - start

    def warm_up(self, step, batches) -> None:
        for _ in range(WARMUP_STEPS):
            step(next(batches))
        devices.synchronize(self.device)  # the warm-up's queued work stays out of the window

    def images_per_s(self, step, batches, steps: int) -> float:
        self.warm_up(step, batches)
        images = 0
        start = self.clock.mark()
        for _ in range(steps):
            batch = next(batches)
            images += len(batch[1])
            step(batch)
        return images / self.clock.seconds(start, self.clock.mark())

    def breakdown(self, steps: int) -> dict:
        """Mean seconds per step, on the fixed batch, of the loop step's phases: `train.forward_loss`,
        `train.backward` and `train.update`; `step_s` is the whole window's time per step."""
        self.warm_up(self.train_step, itertools.repeat(self.fixed))
        marks = []
        window_start = self.clock.mark()
        for _ in range(steps):
            start = self.clock.mark()
            _, loss = train.forward_loss(self.training, *self.fixed)
            forward_done = self.clock.mark()
            train.backward(self.training, loss, STEP)
            backward_done = self.clock.mark()
            train.update(self.training)
            marks.append((start, forward_done, backward_done, self.clock.mark()))
        window_end = self.clock.mark()
        phases = [[self.clock.seconds(a, b) for a, b in itertools.pairwise(m)] for m in marks]
        forward, backward, update = (statistics.fmean(column) for column in zip(*phases))
        step = self.clock.seconds(window_start, window_end) / steps
        return {"forward_s": forward, "backward_s": backward, "optimizer_s": update, "step_s": step}

    def memory(self) -> dict:
        """Weights, gradients, optimiser state and activations in bytes, and the peak of one step."""
        params = list(self.training.model.parameters())
        state = [t for s in self.training.optimizer.state.values() for t in s.values() if torch.is_tensor(t)]
        sizes = {
            "weights_bytes": tensor_bytes(params),
            "gradient_bytes": tensor_bytes(p.grad for p in params if p.grad is not None),
            "optimizer_state_bytes": tensor_bytes(state),
            "activation_bytes": self.saved_activation_bytes(),  # leaves no gradients: the peak step starts bare
        }
        if self.device.type == "cuda":
            devices.synchronize(self.device)
            devices.reset_peak_memory(self.device)
            self.train_step(self.fixed)
            devices.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device), "cuda max_memory_allocated over one training step"
        else:  # read last, so that the resident set's peak covers the activation step above
            peak = devices.process_peak_rss_bytes(), "cpu peak resident set of the measuring process (ru_maxrss)"
        return {**sizes, "peak_bytes": peak[0], "peak_kind": peak[1]}

    def saved_activation_bytes(self) -> int:
        """Bytes of the tensors autograd keeps for backward in one training step of the uncompiled model
        (each storage once; the weights, which it also keeps, are counted as weights)."""
        weights = {p.untyped_storage().data_ptr() for p in self.training.model.parameters()}
        saved: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            storage = t.untyped_storage()
            if storage.data_ptr() not in weights:
                saved[storage.data_ptr()] = storage.nbytes()
            return t

        uncompiled = dataclasses.replace(self.training, forward=self.training.model)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            _, loss = train.forward_loss(uncompiled, *self.fixed)
        loss.backward()
        self.training.optimizer.zero_grad(set_to_none=True)
        return sum(saved.values())


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def measure(name: str, request: BenchRequest) -> dict:
    """Every number of one model at `request.batch_size`, in this process (docs/speed.md)."""
    device = devices.resolve_device(request.device)
    subject = Subject(name, request, resolve(request.data), device)
    limit = os.environ.get(SIMULATE_OOM_ABOVE)
    if limit and request.batch_size > int(limit):
        raise torch.cuda.OutOfMemoryError(f"simulated: batch {request.batch_size} > {SIMULATE_OOM_ABOVE}={limit}")
    first, results = {}, {}
    for mode, step in zip(MODES, (subject.train_step, subject.infer_step)):
        subject.training.model.train(mode == "train")
        first[mode] = subject.first_step_seconds(step)
        # interleaved windows: a slow spell of the machine hits both sides of the ratio alike
        streams = {"model_only": itertools.repeat(subject.fixed), "end_to_end": subject.batches(mode)}
        samples = {kind: [] for kind in streams}
        for _ in range(ROUNDS):
            for kind, batches in streams.items():
                samples[kind].append(subject.images_per_s(step, batches, request.steps))
        model_only, end_to_end = (statistics.median(samples[k]) for k in streams)
        results[mode] = {"model_only": model_only, "end_to_end": end_to_end, "ratio": end_to_end / model_only}
    subject.training.model.train(True)
    config = subject.config
    return {
        "model": name,
        "device": device.type,
        "precision": config.precision,
        "channels_last": config.channels_last,
        "memory_format": "channels_last" if config.channels_last else "contiguous",
        "compile": request.compile,
        "compile_backend": config.compile_backend,
        "compile_seconds": first if request.compile else None,
        "image_size": request.image_size,
        "batch_size": request.batch_size,
        "steps": request.steps,
        "warmup_steps": WARMUP_STEPS,
        "rounds": ROUNDS,
        "sgd": config.optimizer_kernel,
        **results,
        "breakdown": subject.breakdown(request.steps),
        "memory": subject.memory(),  # last: on the CPU the peak resident set covers everything above
        "pid": os.getpid(),
        "measured_at": utc_now(),
        "provenance": provenance(device),
    }


def measure_in_subprocess(name: str, request: BenchRequest) -> dict:
    """`measure` in a fresh ``python -m archbench.bench`` process; its result, or {"oom": message}."""
    with tempfile.TemporaryDirectory(prefix="archbench-bench-") as tmp:
        spec, result = Path(tmp) / "spec.json", Path(tmp) / "result.json"
        spec.write_text(json.dumps({"model": name, "request": dataclasses.asdict(request)}, default=str))
        env = dict(os.environ)  # the same archbench as this process, wherever it is installed
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(Path(archbench.__file__).resolve().parent.parent), env.get("PYTHONPATH")) if p
        )
        done = subprocess.run([sys.executable, "-m", "archbench.bench", str(spec), str(result)], env=env)
        if not result.exists():
            raise ArchbenchError(
                f"measuring {name} failed: its process exited with code {done.returncode} (its error is above)."
            )
        outcome = json.loads(result.read_text())
    if "error" in outcome:
        raise ArchbenchError(outcome["error"])
    return outcome


def measure_with_retries(name: str, request: BenchRequest, console: Console) -> dict:
    """`measure_in_subprocess`, halving the batch after each out-of-memory failure (down to 1)."""
    batch, failed = request.batch_size, []
    while "oom" in (outcome := measure_in_subprocess(name, dataclasses.replace(request, batch_size=batch))):
        failed.append(batch)
        if batch == 1:
            raise ArchbenchError(f"{name} runs out of memory even at batch 1 ({outcome['oom']}).")
        console.print(f"{name}: out of memory at batch {batch}; measuring again at {batch // 2}", highlight=False)
        batch //= 2
    return {**outcome, "requested_batch_size": request.batch_size, "oom_batch_sizes": failed}


def _child(spec_path: str, result_path: str) -> None:
    """The measuring process: one model, its numbers (or what stopped it) written to `result_path`."""
    spec = json.loads(Path(spec_path).read_text())
    try:
        outcome = measure(spec["model"], BenchRequest(**spec["request"]))
    except torch.cuda.OutOfMemoryError as e:
        outcome = {"oom": str(e).splitlines()[0] if str(e) else "CUDA out of memory"}
    except ArchbenchError as e:
        outcome = {"error": e.message}
    Path(result_path).write_text(json.dumps(outcome, indent=2) + "\n")


def result_stem(rows: list[dict]) -> str:
    """bench-<device>-<precision>-<memory format>[-compiled]-torch<version>[-cuda<version>]."""
    row, info = rows[0], rows[0]["provenance"]
    device = "cpu" if row["device"] == "cpu" else re.sub(r"[^a-z0-9.]+", "-", info["device_name"].lower()).strip("-")
    torch_version = info["torch"].split("+")[0] + (f"-cuda{info['cuda']}" if info.get("cuda") else "")
    compiled = "-compiled" if row["compile"] else ""
    return f"bench-{device}-{row['precision']}-{row['memory_format']}{compiled}-torch{torch_version}"


def _key(row: dict) -> tuple:
    """Rows with the same key measure the same thing: a newer one replaces an older one."""
    return row["model"], row["image_size"], row["requested_batch_size"], row["steps"], row["provenance"]["device_name"]


def flat(row: dict, prefix: str = "") -> dict:
    """A result row as CSV columns: nested keys joined by '_' (train_model_only, memory_peak_bytes, ...)."""
    out = {}
    for key, value in row.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}_"))
        else:
            out[prefix + key] = " ".join(map(str, value)) if isinstance(value, list) else value
    return out


def write_results(rows: list[dict], folder: Path) -> tuple[Path, Path]:
    """Merge `rows` into the JSON and CSV files of their settings; returns both paths."""
    folder.mkdir(parents=True, exist_ok=True)
    stem = result_stem(rows)
    json_path, csv_path = folder / f"{stem}.json", folder / f"{stem}.csv"
    try:
        kept = json.loads(json_path.read_text())["results"]
    except (OSError, ValueError, KeyError, TypeError):
        kept = []  # no file yet, or a damaged one, which this run's rows replace
    new_keys = {_key(r) for r in rows}
    merged = sorted([r for r in kept if _key(r) not in new_keys] + rows, key=lambda r: (r["model"], r["measured_at"]))
    payload = {
        "about": "archbench bench: one row per model; see archbench/bench.py for how each number is measured",
        "provenance": rows[-1]["provenance"],
        "results": merged,
    }
    runs.write_text(json_path, json.dumps(payload, indent=2) + "\n")
    flats = [flat(r) for r in merged]
    runs.write_csv(csv_path, tuple(dict.fromkeys(c for f in flats for c in f)), flats)
    return json_path, csv_path


def out_folder(out: Path | None) -> Path:
    folder = Path(out) if out is not None else BENCH_DIR
    if folder.suffix in (".json", ".csv") or folder.is_file():
        raise ArchbenchError(
            f"--out is the folder the result files go into (default {BENCH_DIR}), not a file: {folder}"
        )
    return folder


def run_bench(request: BenchRequest, console: Console | None = None) -> list[dict]:
    """`archbench bench`: measure every model in its own process, print the tables, write the files."""
    console = console or Console()
    folder = out_folder(request.out)
    for name in request.models:
        get_entry(name, registry=request.registry)  # unknown names fail before anything runs
    devices.resolve_device(request.device)
    devices.resolve_precision(request.precision, torch.device("cpu"))  # the name alone: this process keeps off the GPU
    resolve(request.data, console=console)  # made (synthetic) or checked once, before the measuring processes
    rows = []
    for name in request.models:
        console.print(f"measuring {name} in a new process ...", highlight=False)
        rows.append(measure_with_retries(name, request, console))
        # After every model: a run stopped later (a timeout, an error) loses only the model in progress.
        json_path, csv_path = write_results(rows[-1:], folder)
        console.print(f"{name}: written to {json_path} and {csv_path}", highlight=False, soft_wrap=True)
    console.print(throughput_table(rows, request))
    console.print(step_table(rows, request))
    for warning in ratio_warnings(rows):
        console.print(f"[yellow]warning:[/yellow] {warning}", highlight=False, soft_wrap=True)
    return rows


def ratio_warnings(rows: list[dict]) -> list[str]:
    """A sentence for every end-to-end / model-only ratio above 1: feeding batches through the input pipeline
    cannot make a step faster than on a batch already on the device, so such a ratio is measurement noise."""
    return [
        f"{row['model']} {mode}: end-to-end / model-only = {row[mode]['ratio']:.2f}, above 1.0, which the input "
        "pipeline cannot cause (it only adds work): the model-only window ran slow, likely noise from a busy "
        "machine; rerun with more --steps on an idle one"
        for row in rows
        for mode in MODES
        if row[mode]["ratio"] > 1.0
    ]


def _table(title: str, caption: str, columns: list[str]) -> Table:
    table = Table(title=title, caption=caption, box=box.SIMPLE)
    for column in columns:
        table.add_column(column, justify="left" if column == "model" else "right")
    return table


def throughput_table(rows: list[dict], request: BenchRequest) -> Table:
    info, first = rows[0]["provenance"], rows[0]
    table = _table(
        f"archbench bench: {info['device_name']}, torch {info['torch']}, S={request.image_size}, "
        f"{first['precision']}{', channels_last' if first['channels_last'] else ''}, SGD {first['sgd']}, "
        f"compile {'on' if request.compile else 'off'}",
        f"images/s, median of {ROUNDS} interleaved windows of {request.steps} steps after {WARMUP_STEPS} "
        "warm-up steps, each model in its own process; model: a fixed batch on the device; e2e: fed by the "
        "input pipeline; ratio = e2e / model (the pipeline's efficiency)",
        ["model", "batch", *(f"{m}\n{k}" for m in ("train", "infer") for k in ("model", "e2e", "ratio"))],
    )
    for r in rows:
        numbers = [r[mode][k] for mode in MODES for k in ("model_only", "end_to_end", "ratio")]
        oom = f" (of {r['requested_batch_size']}: OOM)" if r["oom_batch_sizes"] else ""
        table.add_row(
            r["model"],
            f"{r['batch_size']}{oom}",
            *(f"{n:.3f}" if i % 3 == 2 else f"{n:.0f}" for i, n in enumerate(numbers)),
        )
    return table


def step_table(rows: list[dict], request: BenchRequest) -> Table:
    compiled = "; compile: seconds of the first train and inference steps, compilation included"
    columns = ["model", "forward\nms", "backward\nms", "optim\nms", "step\nms", "weights\n+opt MB", "activ.\nMB"]
    table = _table(
        "where a training step goes",
        "ms per step on the fixed batch, in a window of its own; MB: weights + optimiser state, the "
        f"activations autograd keeps for backward, and the peak ({rows[0]['memory']['peak_kind']})"
        + (compiled if request.compile else ""),
        [*columns, "peak\nMB", *(["compile\ns"] if request.compile else [])],
    )
    for r in rows:
        b, m = r["breakdown"], r["memory"]
        cells = [
            r["model"],
            *(f"{1000 * b[k]:.2f}" for k in ("forward_s", "backward_s", "optimizer_s", "step_s")),
            f"{(m['weights_bytes'] + m['optimizer_state_bytes']) / MB:.1f}",
            f"{m['activation_bytes'] / MB:.1f}",
            f"{m['peak_bytes'] / MB:.0f}",
        ]
        if request.compile:
            cells.append(" + ".join(f"{r['compile_seconds'][mode]:.1f}" for mode in MODES))
        table.add_row(*cells)
    return table


if __name__ == "__main__":
    _child(*sys.argv[1:3])
