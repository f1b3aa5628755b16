"""CPU-target graph rewrites that ONNX Runtime's own optimizer misses, done once at build time.

Each rewrite is exact (same arithmetic, fewer nodes) and leaves the graph alone where its
pattern does not match, so the portable quantized ONNX (what a GPU target builds from) keeps
its standard form and only the cpu plan changes.

- RMSNorm. `x * Reciprocal(Sqrt(ReduceMean(Pow(x, 2)) + eps)) * w`, as torch exports
  Llama's norm, is not matched by ORT's SimplifiedLayerNormFusion (ReduceMean's axes are an
  input from opset 18 on, and rsqrt arrives as Sqrt + Reciprocal): seven nodes per norm, two
  norms per layer. They become one `SimplifiedLayerNormalization` (ORT's kernel, onnx domain).
- INT4 padding. A weight whose K is not whole blocks is stored padded to K' with a `Pad` on
  its activation (TensorRT wants blocks to divide the weight). ORT's MatMulNBits takes a
  ragged last block, so here the zero rows are sliced off and the Pad is dropped: one node
  fewer per padded activation, and no padded copy of X.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper


def fuse_for_cpu(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, int]]:
    """`model` rewritten in place; returns it and how many times each rewrite applied."""
    graph = model.graph
    read = _read(graph)
    counts = {"rms_norm": _fuse_rms_norms(graph), "int4_unpad": _drop_int4_pads(graph)}
    unread = read - _read(graph)  # what the rewrites orphaned
    for i in reversed([i for i, t in enumerate(graph.initializer) if t.name in unread]):
        del graph.initializer[i]
    return model, counts


def _read(graph: onnx.GraphProto) -> set[str]:
    return {name for n in graph.node for name in n.input} | {o.name for o in graph.output}


class _Index:
    """Producers, consumers and initializers of a graph, read once per rewrite."""

    def __init__(self, graph: onnx.GraphProto):
        self.inits = {i.name: i for i in graph.initializer}
        self.producer = {o: n for n in graph.node for o in n.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in graph.node:
            for name in dict.fromkeys(n.input):
                self.consumers.setdefault(name, []).append(n)
        self.outputs = {o.name for o in graph.output}

    def const(self, name: str) -> np.ndarray | None:
        return numpy_helper.to_array(self.inits[name]) if name in self.inits else None

    def only_consumer(self, tensor: str, op: str) -> onnx.NodeProto | None:
        users = self.consumers.get(tensor, [])
        if len(users) == 1 and users[0].op_type == op and tensor not in self.outputs:
            return users[0]
        return None


def _fuse_rms_norms(graph: onnx.GraphProto) -> int:
    index = _Index(graph)
    replace: dict[str, onnx.NodeProto] = {}  # first node of a match (by _key) -> fused node
    dead: set[str] = set()
    for mean in [n for n in graph.node if n.op_type == "ReduceMean"]:
        match = _rms_norm(mean, index)
        if match is None:
            continue
        nodes, x, weight, eps, out = match
        fused = helper.make_node(
            "SimplifiedLayerNormalization", [x, weight], [out], name=f"{nodes[-1].name or out}_fused",
            axis=-1, epsilon=eps, stash_type=1,
        )
        replace[_key(nodes[0])] = fused
        dead |= {_key(n) for n in nodes}
    _rebuild(graph, replace, dead)
    return len(replace)


def _rms_norm(mean: onnx.NodeProto, index: _Index):
    """(nodes, x, weight, eps, output) when `mean` is the ReduceMean of an exported RMSNorm."""
    pow_ = index.producer.get(mean.input[0])
    if pow_ is None or pow_.op_type != "Pow" or not _is_scalar(index.const(pow_.input[1]), 2.0):
        return None
    if index.only_consumer(pow_.output[0], "ReduceMean") is not mean or not _last_axis(mean, index):
        return None
    x = pow_.input[0]
    add = index.only_consumer(mean.output[0], "Add")
    eps = None if add is None else index.const(add.input[1] if add.input[0] == mean.output[0] else add.input[0])
    if eps is None or eps.size != 1:
        return None
    sqrt = index.only_consumer(add.output[0], "Sqrt")
    recip = sqrt and index.only_consumer(sqrt.output[0], "Reciprocal")
    scale = recip and index.only_consumer(recip.output[0], "Mul")
    if not scale or set(scale.input) != {x, recip.output[0]}:
        return None
    gain = index.only_consumer(scale.output[0], "Mul")
    weight = gain and next((i for i in gain.input if i != scale.output[0]), None)
    w = None if weight is None else index.const(weight)
    if w is None or w.ndim != 1:
        return None
    return [pow_, mean, add, sqrt, recip, scale, gain], x, weight, float(eps.reshape(())), gain.output[0]


def _last_axis(mean: onnx.NodeProto, index: _Index) -> bool:
    keepdims = next((a.i for a in mean.attribute if a.name == "keepdims"), 1)
    axes = index.const(mean.input[1]) if len(mean.input) > 1 and mean.input[1] else None
    if axes is None:
        axes = next((np.array(a.ints) for a in mean.attribute if a.name == "axes"), None)
    return keepdims == 1 and axes is not None and axes.size == 1 and int(axes.reshape(())) == -1


def _is_scalar(value: np.ndarray | None, expected: float) -> bool:
    return value is not None and value.size == 1 and float(value.reshape(())) == expected


def _drop_int4_pads(graph: onnx.GraphProto) -> int:
    index = _Index(graph)
    dead: set[str] = set()
    for pad in [n for n in graph.node if n.op_type == "Pad"]:
        users = index.consumers.get(pad.output[0], [])
        dqs = [_block_dq(u, pad.output[0], index) for u in users]
        extra = _trailing_pad(pad, index)
        if not users or extra is None or pad.output[0] in index.outputs or any(dq is None for dq in dqs):
            continue
        for dq in {_key(d): d for d in dqs}.values():
            _slice_rows(index.inits[dq.input[0]], extra)
        for user in users:
            user.input[0] = pad.input[0]
        dead.add(_key(pad))
    _rebuild(graph, {}, dead)
    return len(dead)


def _block_dq(matmul: onnx.NodeProto, x: str, index: _Index) -> onnx.NodeProto | None:
    """The blocked INT4 DequantizeLinear feeding `matmul`'s weight, if `matmul` is X @ DQ(q)."""
    if matmul.op_type != "MatMul" or matmul.input[0] != x or matmul.input[1] == x:
        return None
    dq = index.producer.get(matmul.input[1])
    if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in index.inits:
        return None
    if index.inits[dq.input[0]].data_type != onnx.TensorProto.INT4:
        return None
    if any(u.op_type != "MatMul" or u.input[0] != x for u in index.consumers.get(dq.output[0], [])):
        return None
    return dq


def _trailing_pad(pad: onnx.NodeProto, index: _Index) -> int | None:
    """How many zeros `pad` appends to the last axis, when that is all it does."""
    mode = next((a.s for a in pad.attribute if a.name == "mode"), b"constant")
    pads = index.const(pad.input[1]) if len(pad.input) > 1 else None
    value = pad.input[2] if len(pad.input) > 2 else ""
    axes = index.const(pad.input[3]) if len(pad.input) > 3 and pad.input[3] else None
    if mode != b"constant" or value or pads is None or axes is None or axes.tolist() != [-1]:
        return None
    return int(pads[1]) if pads.tolist()[0] == 0 and pads[1] > 0 else None


def _slice_rows(tensor: onnx.TensorProto, extra: int) -> None:
    """Drop the last `extra` (zero) rows of an INT4 [K', N] weight; the scale keeps ceil(K/bs) rows."""
    q = numpy_helper.to_array(tensor)
    assert not np.any(q[-extra:].astype(np.int8)), "padded rows of an INT4 weight must be zero"
    tensor.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(q[:-extra]), tensor.name))


def _key(node: onnx.NodeProto) -> str:
    """A node's identity: its first output (unique in a graph)."""
    return node.output[0]


def _rebuild(graph: onnx.GraphProto, replace: dict[str, onnx.NodeProto], dead: set[str]) -> None:
    nodes = []
    for n in graph.node:
        if _key(n) in replace:
            nodes.append(replace[_key(n)])
        elif _key(n) not in dead:
            nodes.append(_copy(n))
    del graph.node[:]
    graph.node.extend(nodes)


def _copy(node: onnx.NodeProto) -> onnx.NodeProto:
    out = onnx.NodeProto()
    out.CopyFrom(node)
    return out
