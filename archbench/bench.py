"""`archbench bench`: training and inference images/s of each model, each measured in a process of its own.

Models measured one after another in one process change each other's numbers: the caching allocator
keeps the previous model's fragments, cuDNN and torch.compile keep its autotuning and graphs
(`archbench.references.TIMM_BENCHMARK_PITFALLS`). So every model is measured by a fresh
``python -m archbench.bench`` process, which writes its numbers to a JSON file and exits; the process id
it ran in is recorded.

In that process the model and what trains it are built as the training loop builds them
(`archbench.train.build_training`, from the run config `bench_config` resolves: the default preset's
recipe and optimiser, with the kernel training uses on this device, recorded as `sgd`), and at the
requested batch:
- train, model-only: the loop's step (`archbench.train.optimiser_step`) on one fixed batch on the device;
- train, end-to-end: the same step fed by the loop's training loader (upscale, random crop, flip, normalise);
- inference, model-only and end-to-end: forward passes in eval mode under inference_mode; the end-to-end
  stream is the evaluation transform (centre crop, no flip) over full batches only, so that every timed
  batch has the one shape a compiled forward was compiled for (the evaluation loader's near-equal
  batches, 254 and 253 at batch 256, would compile new graphs inside the windows).
Each number is the median of `ROUNDS` interleaved windows of `--steps` steps, each window after
`WARMUP_STEPS` untimed steps, so that a slow spell of the machine hits both sides of a ratio alike;
end-to-end / model-only is the input pipeline's efficiency (1.0: it costs nothing). On CUDA a window is
timed by two CUDA events with one synchronise at its end; on the CPU, where every op has finished when
it returns, by the wall clock. With --compile the first step of each mode (compilation included) is
timed and reported apart, never inside a window; the model is compiled as the loop compiles it
(`archbench.devices.compile_model`: one static shape, dynamo's cache reset, a recompile-limit hit an error)
with its backend (`archbench.config.compile_backend`).

Beside the headline numbers, in windows of their own: the step split into its three phases,
`archbench.train.forward_loss`, `backward` and `update` (events between the phases on CUDA, the wall
clock on the CPU), and memory:
the bytes of weights, gradients and optimiser state (from the tensors), the bytes autograd saves for
backward in one step (the activations), and the peak (CUDA: max_memory_allocated over one step after
reset_peak_memory_stats; CPU: the peak resident set of the measuring process, ru_maxrss).

Out of memory, a model is measured again in a new process at half the batch, down to 1 (as timm's
benchmark does); the batch that ran is recorded beside the one asked for. Results go to the `--out`
folder (default benchmarks/results/) as
``bench-<device>-<precision>-<memory format>[-compiled]-torch<version>[-cuda<version>].json`` and
``.csv``, rewritten (atomically) after every model, so a run stopped part-way keeps every model it
finished; a later run with the same settings replaces its models' rows and keeps the others. Each row
carries its provenance. `benchmarks/gpu.sh` writes its bench results into the `gpu/bench` folder beside
the default one (`GPU_SCRIPT_BENCH`), and the report reads both (`latest_bench_results`).
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
from archbench import runs, train
from archbench.bench_results import GPU_SCRIPT_BENCH, MB, latest_bench_results, newest  # noqa: F401
from archbench.config import BENCH_DIR, BenchRequest, RunConfig, RunRequest, resolve_config
from archbench.data import resolve
from archbench.data.loader import DeviceLoader
from archbench.devices import (
    optimizer_kernel,
    process_peak_rss_bytes,
    reset_peak_memory,
    resolve_channels_last,
    resolve_device,
    resolve_precision,
    seed_everything,
    synchronize,
)
from archbench.distributed import DistContext
from archbench.errors import ArchbenchError
from archbench.provenance import provenance, utc_now
from archbench.registry import get_entry

ROUNDS = 3
WARMUP_STEPS = 3
# Tests set this to a batch size: any larger batch then fails as a CUDA out-of-memory error would.
SIMULATE_OOM_ABOVE = "ARCHBENCH_BENCH_OOM_ABOVE"


# ------------------------------------------------------------------------------------------ clocks


class Clock:
    """Time stamps in stream order. On CUDA, events read only after `finish` synchronises on the last
    one, so a window holds no other sync; on the CPU, `time.perf_counter`."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def mark(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def finish(self, last) -> None:
        if self.cuda:
            last.synchronize()

    def seconds(self, start, end) -> float:
        return start.elapsed_time(end) / 1000 if self.cuda else end - start


# ------------------------------------------------------------------------------------------ one model


STEP = 0  # the step number the loop's recorders see: with gradnorm_steps 0 (`bench_config`), a steady step


def bench_config(name: str, request: BenchRequest, data, device: torch.device) -> RunConfig:
    """The run config the training loop resolves for `name` at the bench's batch, size, precision, memory
    format and compilation: the default preset's recipe (its optimiser, with the kernel training uses on this
    device), and no early gradient diagnostics, so that every step is a steady one."""
    precision = resolve_precision(request.precision, device)
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
        channels_last=resolve_channels_last(request.channels_last, device),
        optimizer_kernel=optimizer_kernel(device, precision),
    )


def bench_data(data, num_classes: int):
    """The data as the bench trains on it: the labels folded into the model's `num_classes` outputs (which
    the bench sets, whatever the data's classes), and no test split, which the bench never reads (its
    inference stream is the training images under the evaluation transform) and which would hold memory."""
    return dataclasses.replace(
        data,
        train_labels=data.train_labels % num_classes,
        test_images=data.test_images[:0],
        test_labels=data.test_labels[:0],
    )


class Subject:
    """One model with what trains it, built as `archbench.train` builds them (`bench_config`,
    `train.build_training`), and its batches."""

    def __init__(self, name: str, request: BenchRequest, data, device: torch.device):
        self.device, self.clock = device, Clock(device)
        self.config = bench_config(name, request, data, device)
        seed_everything(self.config.seed, self.config.deterministic)
        model = get_entry(name, registry=request.registry).build(num_classes=request.num_classes)
        self.training = train.build_training(
            model, self.config, bench_data(data, request.num_classes), None, device, DistContext()
        )
        self.loader = self.training.train_loader  # full batches only, in the training dtype and layout
        self.fixed = next(iter(self.loader))
        # the evaluation transform over the same images, in the training loader's full batches: an
        # evaluation loader's split of the data into near-equal batches would change the shape mid-window
        self.eval_loader = self.loader.as_evaluation()

    def train_step(self, batch) -> None:
        """The training loop's step, whose three phases `breakdown` times one by one."""
        train.optimiser_step(self.training, *batch, STEP)

    def infer_step(self, batch) -> None:
        with torch.inference_mode(), self.training.autocast():
            self.training.forward(batch[0])

    def set_mode(self, mode: str) -> None:
        """ "train" or "inference": the model's mode."""
        self.training.model.train(mode == "train")

    @staticmethod
    def epochs(loader: DeviceLoader):
        """A loader's batches, epoch after epoch (all of them `batch_size` images)."""
        for epoch in itertools.count():
            loader.set_epoch(epoch)
            yield from loader

    def batches(self, mode: str):
        """The end-to-end stream of a mode."""
        return self.epochs(self.loader if mode == "train" else self.eval_loader)

    def first_step_seconds(self, step) -> float:
        """The first call of a step, compilation included under --compile (outside any window)."""
        synchronize(self.device)
        start = time.perf_counter()
        step(self.fixed)
        synchronize(self.device)
        return time.perf_counter() - start

    def images_per_s(self, step, batches, steps: int) -> float:
        for _ in range(WARMUP_STEPS):
            step(next(batches))
        synchronize(self.device)  # the warm-up's queued work stays out of the window
        images = 0
        start = self.clock.mark()
        for _ in range(steps):
            batch = next(batches)
            images += len(batch[1])
            step(batch)
        end = self.clock.mark()
        self.clock.finish(end)
        return images / self.clock.seconds(start, end)

    def breakdown(self, steps: int) -> dict:
        """Mean seconds per training step, on the fixed batch, of the loop step's phases: `train.forward_loss`,
        `train.backward` (zero_grad to clipping) and `train.update` (the optimiser and the schedule);
        `step_s` is the whole window's time per step, so the phases' sum falls short of it only by the loop
        between steps."""
        for _ in range(WARMUP_STEPS):
            self.train_step(self.fixed)
        synchronize(self.device)
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
        self.clock.finish(window_end)
        phases = [[self.clock.seconds(a, b) for a, b in itertools.pairwise(m)] for m in marks]
        forward, backward, update = (statistics.fmean(column) for column in zip(*phases))
        return {
            "forward_s": forward,
            "backward_s": backward,
            "optimizer_s": update,
            "step_s": self.clock.seconds(window_start, window_end) / steps,
        }

    def memory(self) -> dict:
        """Weights, gradients, optimiser state and activations in bytes, and the peak of one step."""
        params = list(self.training.model.parameters())
        state = [t for s in self.training.optimizer.state.values() for t in s.values() if torch.is_tensor(t)]
        out = {
            "weights_bytes": tensor_bytes(params),
            "gradient_bytes": tensor_bytes(p.grad for p in params if p.grad is not None),
            "optimizer_state_bytes": tensor_bytes(state),
            "activation_bytes": self.saved_activation_bytes(),
        }
        if self.device.type == "cuda":
            synchronize(self.device)
            reset_peak_memory(self.device)
            self.train_step(self.fixed)
            synchronize(self.device)
            out.update(
                peak_bytes=torch.cuda.max_memory_allocated(self.device),
                peak_kind="cuda max_memory_allocated over one training step",
            )
        else:
            out.update(
                peak_bytes=process_peak_rss_bytes(),
                peak_kind="cpu peak resident set of the measuring process (ru_maxrss)",
            )
        return out

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


def simulated_oom(batch_size: int) -> None:
    limit = os.environ.get(SIMULATE_OOM_ABOVE)
    if limit and batch_size > int(limit):
        raise torch.cuda.OutOfMemoryError(f"simulated: batch {batch_size} > {SIMULATE_OOM_ABOVE}={limit}")


def measure(name: str, request: BenchRequest) -> dict:
    """Every number of one model at `request.batch_size`, in this process (see the module's docstring)."""
    device = resolve_device(request.device)
    subject = Subject(name, request, resolve(request.data), device)
    simulated_oom(request.batch_size)
    first, results = {}, {}
    for mode, step in (("train", subject.train_step), ("inference", subject.infer_step)):
        subject.set_mode(mode)
        first[mode] = subject.first_step_seconds(step)
        streams = {"model_only": itertools.repeat(subject.fixed), "end_to_end": subject.batches(mode)}
        samples = {kind: [] for kind in streams}
        for _ in range(ROUNDS):
            for kind, batches in streams.items():
                samples[kind].append(subject.images_per_s(step, batches, request.steps))
        model_only, end_to_end = (statistics.median(samples[k]) for k in ("model_only", "end_to_end"))
        results[mode] = {"model_only": model_only, "end_to_end": end_to_end, "ratio": end_to_end / model_only}
    subject.set_mode("train")
    breakdown = subject.breakdown(request.steps)
    return {
        "model": name,
        "device": device.type,
        "precision": subject.config.precision,
        "channels_last": subject.config.channels_last,
        "memory_format": memory_format_name(subject.config.channels_last),
        "compile": request.compile,
        "compile_backend": subject.config.compile_backend,
        "compile_seconds": first if request.compile else None,
        "image_size": request.image_size,
        "batch_size": request.batch_size,
        "steps": request.steps,
        "warmup_steps": WARMUP_STEPS,
        "rounds": ROUNDS,
        "sgd": subject.config.optimizer_kernel,
        **results,
        "breakdown": breakdown,
        "memory": subject.memory(),  # last: on the CPU the peak resident set covers everything above
        "pid": os.getpid(),
        "measured_at": utc_now(),
        "provenance": provenance(device),
    }


def memory_format_name(channels_last: bool) -> str:
    return "channels_last" if channels_last else "contiguous"


# ------------------------------------------------------------------------------------------ processes


def _request_json(request: BenchRequest) -> dict:
    return {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(request).items()}


def _request_from_json(fields: dict) -> BenchRequest:
    paths = {"registry", "out"}
    return BenchRequest(**{k: Path(v) if k in paths and v is not None else v for k, v in fields.items()})


def measure_in_subprocess(name: str, request: BenchRequest) -> dict:
    """`measure` in a fresh ``python -m archbench.bench`` process; its result, or {"oom": message}."""
    with tempfile.TemporaryDirectory(prefix="archbench-bench-") as tmp:
        spec, result = Path(tmp) / "spec.json", Path(tmp) / "result.json"
        spec.write_text(json.dumps({"model": name, "request": _request_json(request)}))
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
    while True:
        outcome = measure_in_subprocess(name, dataclasses.replace(request, batch_size=batch))
        if "oom" not in outcome:
            return {**outcome, "requested_batch_size": request.batch_size, "oom_batch_sizes": failed}
        failed.append(batch)
        if batch == 1:
            raise ArchbenchError(f"{name} runs out of memory even at batch 1 ({outcome['oom']}).")
        console.print(f"{name}: out of memory at batch {batch}; measuring again at {batch // 2}", highlight=False)
        batch //= 2


def _child(spec_path: str, result_path: str) -> None:
    """The measuring process: one model, its numbers (or what stopped it) written to `result_path`."""
    spec = json.loads(Path(spec_path).read_text())
    try:
        outcome = measure(spec["model"], _request_from_json(spec["request"]))
    except torch.cuda.OutOfMemoryError as e:
        outcome = {"oom": str(e).splitlines()[0] if str(e) else "CUDA out of memory"}
    except ArchbenchError as e:
        outcome = {"error": e.message}
    Path(result_path).write_text(json.dumps(outcome, indent=2) + "\n")


# ------------------------------------------------------------------------------------------ files


def result_stem(rows: list[dict]) -> str:
    """bench-<device>-<precision>-<memory format>[-compiled]-torch<version>[-cuda<version>]."""
    row = rows[0]
    info = row["provenance"]
    device = "cpu" if row["device"] == "cpu" else slug(info["device_name"])
    torch_version = info["torch"].split("+")[0] + (f"-cuda{info['cuda']}" if info.get("cuda") else "")
    compiled = "-compiled" if row["compile"] else ""
    return f"bench-{device}-{row['precision']}-{row['memory_format']}{compiled}-torch{torch_version}"


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-")


def _key(row: dict) -> tuple:
    """Rows with the same key measure the same thing: a newer one replaces an older one."""
    return row["model"], row["image_size"], row["requested_batch_size"], row["steps"], row["provenance"]["device_name"]


def flat(row: dict, prefix: str = "") -> dict:
    """A result row as CSV columns: nested keys joined by '_' (train_model_only, memory_peak_bytes, ...)."""
    out = {}
    for key, value in row.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}_"))
        elif isinstance(value, list):
            out[prefix + key] = " ".join(str(v) for v in value)
        else:
            out[prefix + key] = value
    return out


def write_results(rows: list[dict], folder: Path) -> tuple[Path, Path]:
    """Merge `rows` into the JSON and CSV files of their settings; returns both paths."""
    folder.mkdir(parents=True, exist_ok=True)
    stem = result_stem(rows)
    json_path, csv_path = folder / f"{stem}.json", folder / f"{stem}.csv"
    kept = []
    if json_path.exists():
        try:
            kept = json.loads(json_path.read_text())["results"]
        except (OSError, ValueError, KeyError, TypeError):
            kept = []  # a damaged file is replaced by this run's rows
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


# ------------------------------------------------------------------------------------------ command


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
    resolve_device(request.device)
    resolve_precision(request.precision, torch.device("cpu"))  # the name alone: this process keeps off the GPU
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
        for mode in ("train", "inference")
        if row[mode]["ratio"] > 1.0
    ]


def _batch(row: dict) -> str:
    return str(row["batch_size"]) + (f" (of {row['requested_batch_size']}: OOM)" if row["oom_batch_sizes"] else "")


def throughput_table(rows: list[dict], request: BenchRequest) -> Table:
    info, first = rows[0]["provenance"], rows[0]
    table = Table(
        title=f"archbench bench: {info['device_name']}, torch {info['torch']}, S={request.image_size}, "
        f"{first['precision']}{', channels_last' if first['channels_last'] else ''}, SGD {first['sgd']}, "
        f"compile {'on' if request.compile else 'off'}",
        caption=f"images/s, median of {ROUNDS} interleaved windows of {request.steps} steps after {WARMUP_STEPS} "
        "warm-up steps, each model in its own process; model: a fixed batch on the device; e2e: fed by the "
        "input pipeline; ratio = e2e / model (the pipeline's efficiency)",
        box=box.SIMPLE,
    )
    for column in (
        "model",
        "batch",
        "train\nmodel",
        "train\ne2e",
        "train\nratio",
        "infer\nmodel",
        "infer\ne2e",
        "infer\nratio",
    ):
        table.add_column(column, justify="left" if column == "model" else "right")
    for r in rows:
        numbers = [r[mode][k] for mode in ("train", "inference") for k in ("model_only", "end_to_end", "ratio")]
        table.add_row(r["model"], _batch(r), *(f"{n:.0f}" if i % 3 < 2 else f"{n:.3f}" for i, n in enumerate(numbers)))
    return table


def step_table(rows: list[dict], request: BenchRequest) -> Table:
    compiled = "; compile: seconds of the first train and inference steps, compilation included"
    table = Table(
        title="where a training step goes",
        caption="ms per step on the fixed batch, in a window of its own; MB: weights + optimiser state, the "
        f"activations autograd keeps for backward, and the peak ({rows[0]['memory']['peak_kind']})"
        + (compiled if request.compile else ""),
        box=box.SIMPLE,
    )
    columns = [
        "model",
        "forward\nms",
        "backward\nms",
        "optim\nms",
        "step\nms",
        "weights\n+opt MB",
        "activ.\nMB",
        "peak\nMB",
    ]
    for column in columns + (["compile\ns"] if request.compile else []):
        table.add_column(column, justify="left" if column == "model" else "right")
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
            cells.append(" + ".join(f"{r['compile_seconds'][mode]:.1f}" for mode in ("train", "inference")))
        table.add_row(*cells)
    return table


if __name__ == "__main__":
    _child(*sys.argv[1:3])
