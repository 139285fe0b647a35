"""What a model is, read from the module itself (never from a builder's name or arguments), so every
builder's models are described by one rule (docs/extending.md). A model built on the meta device is
read without memory: the forward graph is traced symbolically."""

from __future__ import annotations

import builtins
import operator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

# A call that adds two tensors, as (node.op, node.target). (An in-place `out += x` traces as operator.add.)
ADDS = {("call_function", f) for f in (operator.add, operator.iadd, torch.add)}
ADDS |= {("call_method", "add"), ("call_method", "add_")}
# Calls whose result describes a tensor (its size, rank, type) rather than being an activation.
SHAPE_METHODS = {"size", "dim", "ndimension", "numel", "nelement", "type", "get_device"}
SHAPE_ATTRIBUTES = {"shape", "ndim", "dtype", "device", "is_cuda"}
# Weight layers as functions, for models that call them directly with their own parameters.
WEIGHT_FUNCTIONS = {F.linear, F.conv1d, F.conv2d, F.conv3d, F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d}


@dataclass(frozen=True)
class ModelTraits:
    """As docs/extending.md defines them; an nn.MultiheadAttention counts as two weight layers (its input
    and output projections)."""

    residual: bool | None  # None: the forward graph could not be traced
    batch_norm: bool  # BatchNorm1d/2d/3d, SyncBatchNorm; not GroupNorm or LayerNorm
    depth: int


def read_traits(model: nn.Module) -> ModelTraits:
    """The traits of ``model``, traced in eval mode (its training flag is restored)."""
    batch_norm = any(isinstance(m, _BatchNorm) for m in model.modules())
    graph = _trace(model)
    if graph is None:
        return ModelTraits(None, batch_norm, sum(isinstance(m, (_ConvNd, nn.Linear)) for m in model.modules()))
    return ModelTraits(_adds_two_activations(graph), batch_norm, _longest_path(graph, dict(model.named_modules())))


def _trace(model: nn.Module) -> fx.Graph | None:
    """The symbolic forward graph, or None where the model cannot be traced (e.g. control flow on values)."""
    was_training = model.training
    model.eval()
    try:
        return fx.symbolic_trace(model).graph
    except Exception:  # any failure of tracing user code means "unknown", never a crash
        return None
    finally:
        model.train(was_training)


def _activations(graph: fx.Graph) -> set[fx.Node]:
    """Nodes whose value is a tensor computed from the input: every node downstream of a placeholder,
    except a shape query and what is computed only from shapes and constants."""
    found: set[fx.Node] = set()
    for node in graph.nodes:
        computed = node.op in ("call_function", "call_method", "call_module") and not _is_shape_query(node)
        if node.op == "placeholder" or (computed and not found.isdisjoint(node.all_input_nodes)):
            found.add(node)
    return found


def _is_shape_query(node: fx.Node) -> bool:
    if node.op == "call_method":
        return node.target in SHAPE_METHODS
    if node.op == "call_function" and node.target is builtins.getattr:
        return node.args[1] in SHAPE_ATTRIBUTES
    return node.op == "call_function" and node.target is builtins.len


def _adds_two_activations(graph: fx.Graph) -> bool:
    activations = _activations(graph)
    return any(
        (node.op, node.target) in ADDS and len(activations.intersection(node.all_input_nodes)) >= 2
        for node in graph.nodes
    )


def _longest_path(graph: fx.Graph, modules: dict[str, nn.Module]) -> int:
    """Weight layers on the deepest path to the output; graph.nodes is in topological order."""
    longest: dict[fx.Node, int] = {}
    for node in graph.nodes:
        before = max((longest[i] for i in node.all_input_nodes), default=0)
        longest[node] = before + _weight_layers(node, modules)
    return max((longest[n] for n in graph.nodes if n.op == "output"), default=0)


def _weight_layers(node: fx.Node, modules: dict[str, nn.Module]) -> int:
    if node.op == "call_module":
        module = modules.get(str(node.target))
        if isinstance(module, nn.MultiheadAttention):
            return 2
        return int(isinstance(module, (_ConvNd, nn.Linear)))
    return int(node.op == "call_function" and node.target in WEIGHT_FUNCTIONS)
