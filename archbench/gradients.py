"""Per-layer gradient diagnostics over the first optimiser steps, recorded on the device without a host sync.

For each conv and linear weight, in forward (registration) order, and each of the first `steps` steps:

- ‖g‖, the gradient's L2 norm, and ‖w‖, the weight's, before the step;
- ‖g‖/‖w‖, the relative update scale LARS uses (You et al. 2017): unlike ‖g‖ it does not grow with a
  layer's size, so layers of different shapes compare;
- ‖g‖/√n, the gradient's root mean square over the layer's n entries (another size-free measure);
- the cosine between this step's gradient and the previous step's, a measure of gradient noise rather
  than size (Balduzzi et al. 2017: in plain nets gradients decorrelate towards white noise with depth).

`record` runs after backward and before clipping, so every measure is of the true (reduced, unscaled)
gradient. Everything stays on the device until the run record is written.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from archbench.runs import GradNormRow

LAYER_KINDS = {nn.Conv2d: "conv", nn.Linear: "linear"}


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
        self.previous: list[torch.Tensor] | None = None  # last recorded step's gradients (fp32 copies)

    def wants(self, step: int) -> bool:
        return step < self.steps

    def record(self, step: int) -> None:
        """Row `step`, from the gradients now in `.grad`: a few fused device ops, no host sync."""
        grads = [weight.grad.float() for _, _, weight in self.layers]
        grad_norms = torch.stack(torch._foreach_norm(grads))
        self.grad_norms[step] = grad_norms
        self.weight_norms[step] = torch.stack(torch._foreach_norm([weight.detach() for _, _, weight in self.layers]))
        if self.previous is not None and step > 0:
            dots = torch.stack([(g * p).sum() for g, p in zip(grads, self.previous)])
            self.cosines[step] = dots / (grad_norms * self.grad_norms[step - 1]).clamp_min(1e-30)
        self.previous = None if step + 1 >= self.steps else [g.detach().clone() for g in grads]

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
        state = {
            "grad_norms": self.grad_norms.cpu(),
            "weight_norms": self.weight_norms.cpu(),
            "cosines": self.cosines.cpu(),
        }
        if self.previous is not None:
            state["previous"] = [g.cpu() for g in self.previous]
        return state

    def load_state_dict(self, state: dict) -> None:
        self.grad_norms.copy_(state["grad_norms"])
        self.weight_norms.copy_(state["weight_norms"])
        self.cosines.copy_(state["cosines"])
        device = self.grad_norms.device
        self.previous = [g.to(device) for g in state["previous"]] if "previous" in state else None
