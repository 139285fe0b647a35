"""Parameter and FLOP counts. FLOPs are fvcore's: one fused multiply-add counts as one flop."""

from __future__ import annotations

import warnings

import torch
from torch import nn


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_gflops(model: nn.Module, image_size: int) -> float:
    """fvcore GFLOPs (1e9 multiply-adds) of one 1x3xSxS image, counted in eval mode."""
    return fvcore_count(model, image_size)[0]


def fvcore_count(model: nn.Module, image_size: int) -> tuple[float, list[str]]:
    """fvcore GFLOPs of one 1x3xSxS image, counted in eval mode, and the ops fvcore left out of them
    (e.g. ``aten::max_pool2d``, the residual ``aten::add_``), sorted: recorded, never printed."""
    param = next(model.parameters())
    x = torch.zeros(1, 3, image_size, image_size, device=param.device, dtype=param.dtype)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # fvcore traces with torch.jit, which recent PyTorch marks as deprecated; nothing to act on.
            warnings.filterwarnings("ignore", message=r".*torch\.jit\..* is deprecated", category=FutureWarning)
            from fvcore.nn import FlopCountAnalysis

            analysis = FlopCountAnalysis(model, x).unsupported_ops_warnings(False).uncalled_modules_warnings(False)
            total = analysis.total()
    finally:
        model.train(was_training)
    return total / 1e9, sorted(analysis.unsupported_ops())
