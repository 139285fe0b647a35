"""The process group, when archbench runs under torchrun; a single-process stand-in otherwise.

Under `torchrun --nproc-per-node N -m archbench run ...` every rank trains the same model with
DistributedDataParallel: NCCL on GPUs, gloo on CPU. Only rank 0 writes run records and draws progress.
"""

from __future__ import annotations

import datetime as dt
import math
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
from torch import nn

from archbench.devices import replace_modules, resolve_device
from archbench.errors import ArchbenchError

TIMEOUT_VARIABLE, DEFAULT_TIMEOUT_S = "ARCHBENCH_DIST_TIMEOUT", 600


def collective_timeout() -> dt.timedelta:
    """How long a rank waits for the others: one that fails takes them down within it, never leaves them hanging."""
    text = os.environ.get(TIMEOUT_VARIABLE, str(DEFAULT_TIMEOUT_S))
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not (0 < seconds < math.inf):
        raise ArchbenchError(
            f"{TIMEOUT_VARIABLE}={text!r}: the collective timeout must be a positive number of seconds."
        )
    return dt.timedelta(seconds=seconds)


@dataclass
class DistContext:
    """This process's place in the job (rank, world size, local GPU) and the collectives the loop uses;
    a single process is world size 1, where every collective is the identity."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        """In place, and returned: the sum of `t` over ranks."""
        if self.enabled:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def all_reduce_min(self, t: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return t

    def broadcast(self, obj):
        """rank 0's `obj`, on every rank."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_gather(self, obj) -> list:
        if not self.enabled:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast_buffers(self, model: torch.nn.Module) -> None:
        """Rank 0's buffers (BN running statistics) on every rank."""
        if self.enabled:
            for buffer in model.buffers():
                dist.broadcast(buffer, src=0)

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def torchrun_world_size() -> int:
    """How many processes torchrun started this one among (1: it was not started by torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def from_environment(device: str) -> DistContext:
    """Join the process group torchrun describes in the environment (WORLD_SIZE > 1), else run alone."""
    world_size = torchrun_world_size()
    if world_size <= 1:
        return DistContext()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        timeout = collective_timeout()
        use_cuda = resolve_device(device, local_rank).type == "cuda"
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", timeout=timeout)
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank)


class GlooSyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d with batch statistics over all ranks, for CPU (gloo) process groups.

    torch.nn.SyncBatchNorm runs on GPUs only. This computes the same thing in plain autograd: per-channel
    sums, sums of squares and counts go through one differentiable all-reduce (its backward is the
    all-reduce of the gradients), so the backward pass is synchronised as well.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        channels = x.shape[1]
        xf = x.float()  # statistics in fp32, also under autocast
        count = xf.new_tensor([x.numel() / channels])
        stats = dist_fn.all_reduce(torch.cat([xf.sum((0, 2, 3)), (xf * xf).sum((0, 2, 3)), count]))
        n = stats[-1]
        mean = stats[:channels] / n
        var = (stats[channels : 2 * channels] / n - mean * mean).clamp(min=0)
        with torch.no_grad():
            self.num_batches_tracked += 1
            m = self.momentum
            self.running_mean.mul_(1 - m).add_(mean, alpha=m)
            self.running_var.mul_(1 - m).add_(var * n / (n - 1), alpha=m)
        scale = self.weight * torch.rsqrt(var + self.eps)
        return (xf * scale[:, None, None] + (self.bias - mean * scale)[:, None, None]).to(x.dtype)


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm2d synchronised across ranks: PyTorch's SyncBatchNorm on GPUs, gloo's above on CPU."""
    if device.type != "cpu":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return replace_modules(model, nn.BatchNorm2d, _gloo_batchnorm)


def _gloo_batchnorm(bn: nn.BatchNorm2d) -> GlooSyncBatchNorm:
    synced = GlooSyncBatchNorm(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
    synced.load_state_dict(bn.state_dict())
    return synced


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
