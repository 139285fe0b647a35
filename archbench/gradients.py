"""Per-layer gradient diagnostics over the first optimiser steps, kept on the device without a host sync:
for every conv and linear weight, ‖g‖, ‖w‖, ‖g‖/‖w‖, ‖g‖/√n and the cosine to the previous step's
gradient. What each measure is for, and what recording costs, is in docs/architecture.md.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from archbench.runs import GradNormRow

LAYER_KINDS = {nn.Conv2d: "conv", nn.Linear: "linear"}
TABLES = ("grad_norms", "weight_norms", "cosines")  # (steps, layers) on the device; checkpointed


def memory_order(t: torch.Tensor) -> torch.Tensor:
    """The entries of dense `t` as a 1-D view in memory order (no copy, also for channels-last weights).
    Two tensors laid out alike give views in the same entry order, so their dot product is exact."""
    dims = sorted(range(t.dim()), key=lambda d: t.stride(d), reverse=True)
    return t.permute(dims).view(-1)


def dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Σ a·b as a 0-d tensor, read in place when the two are laid out alike (as a weight's gradients are)."""
    if a.stride() == b.stride():
        return torch.dot(memory_order(a), memory_order(b))
    return (a * b).sum()


def weight_layers(model: nn.Module) -> list[tuple[str, str, torch.Tensor]]:
    """(name, kind, weight) of every conv and linear layer, in registration (= forward) order."""
    return [(name, LAYER_KINDS[type(m)], m.weight) for name, m in model.named_modules() if type(m) in LAYER_KINDS]


class GradientRecorder:
    """Gradient and weight norms and step-to-step gradient cosines of every weight layer, first `steps` steps."""

    def __init__(self, model: nn.Module, steps: int, device: torch.device):
        self.layers = weight_layers(model)
        self.steps = steps
        shape = (steps, len(self.layers))
        self.grad_norms = torch.zeros(shape, device=device)
        self.weight_norms = torch.zeros(shape, device=device)
        self.cosines = torch.full(shape, math.nan, device=device)
        self.previous: list[torch.Tensor] | None = None  # last recorded step's gradients, when they are held
        self.buffers: list[torch.Tensor] | None = None  # fp32, each laid out like its weight; allocated once

    def wants(self, step: int) -> bool:
        return step < self.steps

    def record(self, step: int) -> None:
        """Row `step`, from the gradients now in `.grad`: a few fused device ops, no host sync."""
        grads = [weight.grad.float() for _, _, weight in self.layers]
        grad_norms = torch.stack(torch._foreach_norm(grads))
        self.grad_norms[step] = grad_norms
        self.weight_norms[step] = torch.stack(torch._foreach_norm([weight.detach() for _, _, weight in self.layers]))
        if self.previous is not None and step > 0:
            dots = torch.stack([dot(g, p) for g, p in zip(grads, self.previous)])
            self.cosines[step] = dots / (grad_norms * self.grad_norms[step - 1]).clamp_min(1e-30)
        if step + 1 >= self.steps:  # the last recorded step: no cosine needs these gradients
            self.previous = self.buffers = None
            return
        self.previous = self.hold(grads)

    def hold(self, grads: list[torch.Tensor]) -> list[torch.Tensor]:
        """Copy `grads` into the preallocated buffers (one fused copy) and return the buffers."""
        if self.buffers is None:
            self.buffers = [torch.empty_like(g, dtype=torch.float32) for g in grads]
        torch._foreach_copy_(self.buffers, grads)
        return self.buffers

    def rows(self, steps_done: int) -> list[GradNormRow]:
        done = min(self.steps, steps_done)
        grad, weight, cosine = (t[:done].cpu().tolist() for t in (self.grad_norms, self.weight_norms, self.cosines))
        sizes = [w.numel() for _, _, w in self.layers]
        return [
            GradNormRow(
                step=step,
                layer=name,
                layer_index=i,
                kind=kind,
                grad_norm=grad[step][i],
                weight_norm=weight[step][i],
                grad_to_weight=grad[step][i] / weight[step][i] if weight[step][i] > 0 else math.nan,
                grad_rms=grad[step][i] / math.sqrt(sizes[i]),
                cosine_to_previous=cosine[step][i],
            )
            for step in range(done)
            for i, (name, kind, _) in enumerate(self.layers)
        ]

    def state_dict(self) -> dict:
        state = {name: getattr(self, name).cpu() for name in TABLES}
        if self.previous is not None:
            state["previous"] = [g.to("cpu", copy=True) for g in self.previous]  # not the reused buffers
        return state

    def load_state_dict(self, state: dict) -> None:
        for name in TABLES:
            getattr(self, name).copy_(state[name])
        device = self.grad_norms.device
        self.previous = self.hold([g.to(device) for g in state["previous"]]) if "previous" in state else None
