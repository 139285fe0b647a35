"""The gradient recorder against a straightforward reference: norms and cosines from cloned gradients."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from archbench.gradients import GradientRecorder, weight_layers


def small_model() -> nn.Module:
    """Convolutions of 3x3 and 1x1 kernels and a linear layer: every weight layout the recorder meets."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 6, 1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 5),
    )


def train_and_record(channels_last: bool, steps: int, recorder_steps: int, seed: int = 0):
    """`steps` SGD steps of the small model; returns the recorder and each step's cloned gradients."""
    torch.manual_seed(seed)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = small_model().to(memory_format=fmt)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    recorder = GradientRecorder(model, recorder_steps, torch.device("cpu"))
    reference = []
    for step in range(steps):
        x = torch.randn(4, 3, 8, 8).contiguous(memory_format=fmt)
        y = torch.randint(0, 5, (4,))
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        reference.append(
            (
                [w.grad.detach().clone() for _, _, w in weight_layers(model)],
                [w.detach().norm().item() for _, _, w in weight_layers(model)],
            )
        )
        if recorder.wants(step):
            recorder.record(step)
        optimizer.step()
    return recorder, reference


@pytest.mark.parametrize("channels_last", [False, True])
def test_norms_and_cosines_equal_a_reference_from_cloned_gradients(channels_last):
    steps = 6
    recorder, reference = train_and_record(channels_last, steps, steps)
    if channels_last:  # the layout the preallocated buffers and in-place dots must handle
        assert recorder.layers[0][2].grad.is_contiguous(memory_format=torch.channels_last)
    rows = recorder.rows(steps)
    layers = len(recorder.layers)
    assert len(rows) == steps * layers
    for row in rows:
        grads, weight_norms = reference[row.step]
        g = grads[row.layer_index]
        assert row.grad_norm == pytest.approx(g.norm().item(), rel=1e-5)
        assert row.weight_norm == pytest.approx(weight_norms[row.layer_index], rel=1e-5)
        assert row.grad_rms == pytest.approx(g.norm().item() / math.sqrt(g.numel()), rel=1e-5)
        if row.step == 0:
            assert math.isnan(row.cosine_to_previous)
        else:
            previous = reference[row.step - 1][0][row.layer_index]
            want = F.cosine_similarity(g.flatten(), previous.flatten(), dim=0).item()
            assert row.cosine_to_previous == pytest.approx(want, abs=1e-5), (row.step, row.layer)
    # consecutive gradients of a momentum run are far from orthogonal and not all alike: the test has teeth
    cosines = [r.cosine_to_previous for r in rows if r.step > 0]
    assert max(cosines) - min(cosines) > 0.1


def test_recorded_steps_reuse_buffers_allocated_once_and_free_them_after_the_last():
    torch.manual_seed(0)
    model = small_model()
    recorder = GradientRecorder(model, 4, torch.device("cpu"))
    pointers = []
    for step in range(4):
        model.zero_grad(set_to_none=True)
        model(torch.randn(2, 3, 8, 8)).sum().backward()
        recorder.record(step)
        if recorder.previous is not None:
            pointers.append([b.data_ptr() for b in recorder.previous])
            assert all(b.data_ptr() != w.grad.data_ptr() for b, (_, _, w) in zip(recorder.previous, recorder.layers))
    assert len(pointers) == 3 and pointers[0] == pointers[1] == pointers[2]
    assert recorder.previous is None and recorder.buffers is None


def test_a_restored_recorder_computes_the_next_cosine_as_the_uninterrupted_one():
    """The checkpoint carries the previous step's gradients: the first cosine after a resume is recomputed
    exactly, and the saved state is a copy, not the buffers the next step overwrites."""
    steps = 5
    whole, reference = train_and_record(False, steps, steps)
    first, _ = train_and_record(False, 3, steps)
    state = first.state_dict()
    saved = [p.clone() for p in state["previous"]]
    for (_, _, w), g in zip(first.layers, reference[3][0]):
        w.grad = -g  # a later step overwrites the buffers; the saved state must not follow
    first.record(3)
    assert all(torch.equal(a, b) for a, b in zip(state["previous"], saved))

    torch.manual_seed(1)
    resumed = GradientRecorder(small_model(), steps, torch.device("cpu"))
    resumed.load_state_dict(state)
    for (_, _, w), g in zip(resumed.layers, reference[3][0]):
        w.grad = g.clone()  # step 3's gradients as the uninterrupted run had them
    resumed.record(3)
    assert not torch.isnan(whole.cosines[3]).any()
    assert torch.allclose(resumed.cosines[3], whole.cosines[3], atol=1e-6)
