"""Find the layers a pass may quantize: MatMul/Gemm/Conv nodes with a constant weight.

A MatMul whose second input is computed (attention scores `Q @ K^T`, `P @ V`) is not a
layer and is never reported; a layer that cannot or must not be quantized is reported as
skipped, with the reason. Weights must be initializers (what graph clean-up produces).
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatch

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from ingot.quant.report import SkippedLayer

FLOAT_TYPES = (TensorProto.FLOAT, TensorProto.FLOAT16)


@dataclass(frozen=True)
class Layer:
    index: int  # position of the node in graph.node
    name: str  # node name (or its first output when unnamed)
    op: str  # MatMul | Gemm | Conv
    activation: str  # the input tensor X
    weight: str  # the initializer W
    shape: tuple[int, ...]  # W's shape: [K, N] for MatMul
    out_axis: int  # W's output-channel axis: 1 for MatMul [K, N], 0 for Conv [O, I/g, kh, kw]


def node_name(node: onnx.NodeProto) -> str:
    return node.name or (node.output[0] if node.output else node.op_type)


def find_layers(
    model: onnx.ModelProto, ops: tuple[str, ...], exclude: list[str]
) -> tuple[list[Layer], list[SkippedLayer]]:
    """Layers of type `ops` with a constant float weight, minus those matching `exclude`."""
    inits = {i.name: i for i in model.graph.initializer}
    layers, skipped = [], []
    for index, node in enumerate(model.graph.node):
        if node.op_type not in ops or len(node.input) < 2 or node.input[1] not in inits:
            continue
        name, w = node_name(node), inits[node.input[1]]
        pattern = next((p for p in exclude if fnmatch(name, p)), None)
        reason = f"excluded by {pattern!r}" if pattern else _unsupported(node, w, inits)
        if reason:
            skipped.append(SkippedLayer(name=name, reason=reason))
            continue
        layers.append(Layer(index, name, node.op_type, node.input[0], w.name, tuple(w.dims), _out_axis(node)))
    return layers, skipped


def _unsupported(node: onnx.NodeProto, w: TensorProto, inits: dict) -> str | None:
    if node.input[0] in inits:
        return "both inputs are constant"
    if w.data_type not in FLOAT_TYPES:
        return f"weight type {TensorProto.DataType.Name(w.data_type)} is not float32/float16"
    rank = len(w.dims)
    if node.op_type in ("MatMul", "Gemm") and rank != 2:
        return f"weight rank {rank} (expected 2)"
    if node.op_type == "Conv" and rank < 3:
        return f"weight rank {rank} (expected >= 3)"
    return None


def _out_axis(node: onnx.NodeProto) -> int:
    if node.op_type == "Conv":
        return 0
    trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
    return 0 if node.op_type == "Gemm" and trans_b else 1


def untie_transposed(model: onnx.ModelProto, exclude: list[str]) -> onnx.ModelProto:
    """`model`, or a copy where each MatMul reading `Transpose(W)` of a 2-D float initializer
    (a tied LM head: `lm_head = embed_tokens.weight.T`) reads its own initializer `W^T`, so
    the passes can quantize it as a layer. Excluded layers are left alone (no copy is made)."""
    inits = {i.name: i for i in model.graph.initializer}
    transposes = {
        n.output[0]: n.input[0] for n in model.graph.node
        if n.op_type == "Transpose" and n.input[0] in inits and len(inits[n.input[0]].dims) == 2
        and inits[n.input[0]].data_type in FLOAT_TYPES and _perm(n) in (None, [1, 0])
    }
    todo = [
        i for i, n in enumerate(model.graph.node)
        if n.op_type == "MatMul" and len(n.input) == 2 and n.input[1] in transposes
        and not any(fnmatch(node_name(n), p) for p in exclude)
    ]
    if not todo:
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    made: dict[str, str] = {}
    for i in todo:
        node = out.graph.node[i]
        source = transposes[node.input[1]]
        if source not in made:
            made[source] = f"{source}_T"
            w = numpy_helper.to_array(inits[source])
            out.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(w.T), made[source]))
        node.input[1] = made[source]
    read = {x for n in out.graph.node for x in n.input} | {o.name for o in out.graph.output}
    for i in reversed([i for i, n in enumerate(out.graph.node) if n.op_type == "Transpose" and n.output[0] in transposes and n.output[0] not in read]):
        del out.graph.node[i]
    return out


def _perm(node: onnx.NodeProto) -> list[int] | None:
    return next((list(a.ints) for a in node.attribute if a.name == "perm"), None)


def by_activation(layers: list[Layer]) -> dict[str, list[Layer]]:
    """Layers grouped by their shared input X (q/k/v; gate/up), in graph order."""
    groups: dict[str, list[Layer]] = {}
    for layer in layers:
        groups.setdefault(layer.activation, []).append(layer)
    return groups
