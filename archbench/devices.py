"""Where and how a model runs: the device, the precision and its autocast, the memory format, the RNGs,
the optimiser kernel, peak memory and CUDA's deterministic pooling (docs/gpu.md, "The CUDA path").
`train` and `bench` both resolve their options here, so the options mean the same in every command.
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
import re
import resource
import sys

import numpy as np
import torch
from torch import nn

from archbench.config import DEVICE_CHOICES, DEVICE_PATTERN
from archbench.errors import ArchbenchError

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str, local_rank: int | None = None) -> torch.device:
    """`auto` is CUDA where available, else the CPU; under torchrun a CUDA rank takes its local GPU."""
    if not re.fullmatch(DEVICE_PATTERN, name):
        raise ArchbenchError(f"unknown device '{name}'; use {DEVICE_CHOICES}.")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ArchbenchError(f"--device {name} was asked for but no CUDA device is available; use --device cpu.")
        if local_rank is not None:
            return torch.device("cuda", local_rank)
    return torch.device(name)


def resolve_precision(name: str, device: torch.device) -> str:
    """`auto` is bf16 autocast on a GPU that supports it, fp32 otherwise."""
    if name == "auto":
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if name not in PRECISIONS:
        raise ArchbenchError(f"unknown precision '{name}'; use auto, fp32, bf16 or fp16.")
    return name


def resolve_channels_last(requested: bool | None, device: torch.device) -> bool:
    """channels_last is on by default on CUDA (tensor cores want NHWC), off elsewhere."""
    return requested if requested is not None else device.type == "cuda"


def memory_format(channels_last: bool) -> torch.memory_format:
    return torch.channels_last if channels_last else torch.contiguous_format


def autocast_factory(device: torch.device, precision: str):
    """A no-argument callable that opens the autocast context of `precision` (a no-op for fp32)."""
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext
    return functools.partial(torch.autocast, device.type, dtype=dtype)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.benchmark = True


def rng_state(device: torch.device) -> dict:
    """Every RNG a training step draws from, as tensors and plain values (loadable with weights_only); on
    CUDA only this process's device, which a resume sets on whatever device it trains on."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": random.getstate(),
    }


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def optimizer_kernel(device: torch.device, precision: str) -> str:
    """The fastest correct optimiser kernel for this device, recorded in config.json: fused on CUDA (one
    launch, and the GradScaler hands it the overflow flag on the device), except under fp16, where the
    steps the scaler skips take foreach's well-tested path; foreach elsewhere."""
    if device.type == "cuda" and precision != "fp16":
        return "fused"
    return "foreach"


def make_optimizer(
    params,
    *,
    optimizer: str = "sgd",
    lr: float,
    momentum: float | None,
    weight_decay: float,
    nesterov: bool,
    kernel: str,
) -> torch.optim.Optimizer:
    """The recipe's optimiser (`archbench.config.OPTIMIZERS`) with `kernel`: SGD with momentum, or AdamW (weight
    decay decoupled from the gradient step, Loshchilov & Hutter 2019; betas and eps torch's defaults)."""
    kernels = {"foreach": kernel == "foreach", "fused": kernel == "fused"}
    if optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, **kernels)
    if optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov, **kernels
        )
    raise ValueError(f"unknown optimiser {optimizer!r}")  # requests are checked against OPTIMIZERS before this


def reset_peak_memory(device: torch.device) -> None:
    """Start a run's peak-memory window: CUDA's allocator peak, or the process's peak RSS on Linux."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:  # writing 5 to clear_refs resets VmHWM, the peak resident set size (Linux 4.0 and later)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _proc_kib(path: str, field: str) -> int | None:
    """A "Field: N kB" line of a Linux /proc file, in KiB; None where there is none."""
    try:
        with open(path) as f:
            return next((int(line.split()[1]) for line in f if line.startswith(field + ":")), None)
    except OSError:
        return None


def peak_memory(device: torch.device) -> tuple[float, str]:
    """(MiB, what was measured) since `reset_peak_memory`."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda max_memory_allocated"
    if (peak := _proc_kib("/proc/self/status", "VmHWM")) is not None:
        return peak / 1024, "cpu peak RSS of the process"
    return process_peak_rss_bytes() / 2**20, "cpu peak RSS since the process started"


def process_peak_rss_bytes() -> int:
    """The process's peak resident set since it started (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def available_memory(device: torch.device) -> int | None:
    """Bytes a run could still allocate on `device`: CUDA's free memory, or the host's MemAvailable (Linux;
    elsewhere the free physical pages); None where neither can be read."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if (available := _proc_kib("/proc/meminfo", "MemAvailable")) is not None:
        return available * 1024
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


class DeterministicAdaptiveAvgPool2d(nn.AdaptiveAvgPool2d):
    """`nn.AdaptiveAvgPool2d` whose backward is deterministic on CUDA, which has no deterministic kernel
    for it (`--deterministic` would stop a VGG, whose classifier pools to 7 x 7, at its first step): the
    identity where the input already has the output size (7 x 7 at 224 x 224 input), else
    ``P_h @ x @ P_w^T`` with PyTorch's bins (output i averages inputs floor(i H / O) to ceil((i + 1) H / O)),
    whose backward is matrix products."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        out_h, out_w = _pair(self.output_size, (height, width))
        if (out_h, out_w) == (height, width):
            return x
        rows, cols = _averaging(out_h, height, x), _averaging(out_w, width, x)
        return torch.einsum("oh,nchw,pw->ncop", rows, x, cols)


def _pair(size, default: tuple[int, int]) -> tuple[int, int]:
    pair = (size, size) if isinstance(size, int) else tuple(size)
    return tuple(d if s is None else s for s, d in zip(pair, default))


def _averaging(out: int, size: int, like: torch.Tensor) -> torch.Tensor:
    matrix = torch.zeros(out, size, dtype=like.dtype, device=like.device)
    for i in range(out):
        start, end = (i * size) // out, -(-((i + 1) * size) // out)
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix


def needs_deterministic_pooling(device: torch.device, deterministic: bool) -> bool:
    """Only CUDA lacks the deterministic kernel; elsewhere the model stays exactly as built."""
    return deterministic and device.type == "cuda"


def replace_modules(model: nn.Module, kind: type[nn.Module], make) -> nn.Module:
    """Swap every submodule of exactly type `kind` for `make(submodule)`, in place."""
    for name, child in model.named_children():
        if type(child) is kind:
            setattr(model, name, make(child))
        else:
            replace_modules(child, kind, make)
    return model


def make_deterministic(model: nn.Module) -> nn.Module:
    """Swap every `nn.AdaptiveAvgPool2d` of `model` for `DeterministicAdaptiveAvgPool2d` (in place)."""
    return replace_modules(model, nn.AdaptiveAvgPool2d, lambda pool: DeterministicAdaptiveAvgPool2d(pool.output_size))


def compile_model(forward: nn.Module, backend: str) -> nn.Module:
    """torch.compile for one static shape: a fresh dynamo cache and recompile budget per model (models of one
    class compiled one after another in a process would otherwise share it), and a recompile-limit hit
    stops the run instead of falling back to eager in silence."""
    torch._dynamo.reset()
    torch._dynamo.config.fail_on_recompile_limit_hit = True
    return torch.compile(forward, dynamic=False, backend=backend)
