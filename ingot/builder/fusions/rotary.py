"""Rotate-half RoPE over a [1, T, heads, dim] view -> com.microsoft RotaryEmbedding, as an onnxscript rule.

The paged plans (ingot.builder.paged) rotate q and k in Hugging Face's layout for
`apply_rotary_pos_emb(..., unsqueeze_dim=2)`: `v = Reshape(x [1, T, heads*dim], [1, -1, heads, dim])`,
`v*cos + cat(-v[.., dim/2:], v[.., :dim/2])*sin`, cos/sin [1, T, 1, dim] computed from the
positions [T]: eight nodes per q and k. They become
`Reshape(RotaryEmbedding(x, position_ids [1, T], cos_cache, sin_cache), [1, -1, heads, dim])`
whose tables [max_positions, dim/2] are the graph's own cos/sin subgraph run here by ONNX
Runtime for positions 0..max_positions-1 (so they are the values the graph would compute).

onnxscript's RotaryEmbeddingFusion + CosSinCacheFusion do not apply: they take v as
[B, heads, T, dim] (heads read from axis 1; ORT's kernel reads a 4-D input that way too), and
CosSinCacheFusion matches `MatMul(inv_freq, positions)` + `Transpose` with cos unsqueezed on
axis 1, where this export has `positions * inv_freq` and axis 2. The rotate-half pattern itself
is theirs (this rule subclasses RotaryEmbeddingFusion).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from onnxscript.rewriter import pattern
from onnxscript.rewriter.ort_fusions.rotary_embedding import RotaryEmbeddingFusion


class RotaryFusion(RotaryEmbeddingFusion):
    """`x*cos + rotate_half(x)*sin` of a Reshape [1, T, heads*dim] -> [1, T, heads, dim]."""

    def __init__(self, max_positions: int):
        pattern.RewriteRuleClassBase.__init__(self, "RotaryEmbeddingBSNH")
        self.max_positions = max_positions
        self._tables: dict[tuple[ir.Value, ir.Value], tuple | None] = {}  # (cos, sin) -> caches, positions
        self._made: dict[tuple[ir.Value, ir.Value], tuple[ir.Value, ir.Value, ir.Value]] = {}

    def pattern(self, op, x, shape, cos, sin, start1, end1, start2, end2):
        view = op.Reshape(x, shape, _allow_other_attributes=True, _outputs=["view"])
        return super().pattern(op, view, cos, sin, start1, end1, start2, end2)

    def check(self, context, x, view, cos, sin, start1, end1, start2, end2, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        if x.shape is None or view.shape is None or x.shape.rank() != 3 or view.shape.rank() != 4:
            return result.fail("not a [1, T, heads*dim] -> [1, T, heads, dim] view", view)
        heads, dim = view.shape[2], view.shape[3]
        if not isinstance(heads, int) or not isinstance(dim, int) or dim % 2 or x.shape[0] != 1 or x.shape[2] != heads * dim:
            return result.fail("not a [1, T, heads*dim] -> [1, T, heads, dim] view", view)
        if [_scalar(v) for v in (start1, end1, start2)] != [0, dim // 2, dim // 2] or (_scalar(end2) or 0) < dim:
            return result.fail("not the two halves of the last axis", view)
        if (cos, sin) not in self._tables:
            self._tables[cos, sin] = _tables(context.model, cos, sin, self.max_positions, x.shape[1])
        return result if self._tables[cos, sin] else result.fail("cos/sin are not rotate-half tables of the positions", cos)

    def rewrite(self, op, x, shape, view, cos, sin, **_):
        cos_cache, sin_cache, position_ids = self._inputs(op, cos, sin)
        rotated = op.RotaryEmbedding(x, position_ids, cos_cache, sin_cache, interleaved=0, num_heads=view.shape[2],
                                     _domain="com.microsoft")
        return op.Reshape(rotated, shape)

    def _inputs(self, op, cos: ir.Value, sin: ir.Value) -> tuple[ir.Value, ir.Value, ir.Value]:
        """The tables as initializers and `Unsqueeze(positions) -> position_ids [1, T]`, made once
        per (cos, sin) and placed after the first match (the later ones follow it)."""
        if (cos, sin) not in self._made:
            n = len(self._made)
            cos_table, sin_table, positions = self._tables[cos, sin]
            cos_cache = op.initializer(ir.tensor(cos_table), f"rotary{n}.cos_cache")
            sin_cache = op.initializer(ir.tensor(sin_table), f"rotary{n}.sin_cache")
            axes = op.initializer(ir.tensor(np.array([0], np.int64)), f"rotary{n}.position_ids_axes")
            position_ids = op.Unsqueeze(positions, axes, _outputs=[f"rotary{n}.position_ids"])
            self._made[cos, sin] = cos_cache, sin_cache, position_ids
        return self._made[cos, sin]


def _scalar(value: ir.Value | None) -> int | None:
    array = None if value is None or value.const_value is None else value.const_value.numpy()
    return int(array.reshape(())) if array is not None and array.size == 1 else None


def _tables(model: ir.Model, cos: ir.Value, sin: ir.Value, n: int, tokens) -> tuple | None:
    """(cos [n, dim/2], sin [n, dim/2], positions) when cos and sin are a function of one graph
    input `positions` [T] (one per token of x [1, T, hidden]) whose two halves are equal; else None."""
    nodes, sources, seen, todo = set(), set(), set(), [cos, sin]
    while todo:
        value = todo.pop()
        if value is None or value in seen or value.const_value is not None:
            continue
        seen.add(value)
        if value.is_graph_input():
            sources.add(value)
        elif value.producer() is None:
            return None
        else:
            nodes.add(value.producer())
            todo.extend(value.producer().inputs)
    if len(sources) != 1:
        return None
    (positions,) = sources
    if positions.shape is None or positions.shape.rank() != 1 or positions.shape[0] != tokens:
        return None
    values = _evaluate(model, [node for node in model.graph if node in nodes], positions, [cos, sin], n)
    halves = []
    for v in values:
        if v.size % n:
            return None
        v = v.reshape(n, -1)
        half = v.shape[1] // 2
        if v.shape[1] % 2 or not np.array_equal(v[:, :half], v[:, half:]):
            return None
        halves.append(np.ascontiguousarray(v[:, :half], np.float32))
    return halves[0], halves[1], positions


def _evaluate(model: ir.Model, nodes: list[ir.Node], positions: ir.Value, outputs: list[ir.Value], n: int):
    """`outputs` of the subgraph `nodes` for positions 0..n-1, run by ONNX Runtime."""
    import onnxruntime as ort

    consts = {v.name: v.const_value for node in nodes for v in node.inputs if v is not None and v.const_value is not None}
    graph = onnx.helper.make_graph(
        [ir.serde.serialize_node(node) for node in nodes], "tables",
        [onnx.helper.make_tensor_value_info(positions.name, onnx.TensorProto.INT64, [n])],
        [onnx.helper.make_tensor_value_info(o.name, onnx.TensorProto.FLOAT, None) for o in outputs],
        [_named(ir.serde.serialize_tensor(t), name) for name, t in consts.items()],
    )
    opsets = [onnx.helper.make_opsetid(domain, version) for domain, version in model.opset_imports.items()]
    sub = onnx.helper.make_model(graph, opset_imports=opsets, ir_version=model.ir_version)
    session = ort.InferenceSession(sub.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run([o.name for o in outputs], {positions.name: np.arange(n, dtype=np.int64)})


def _named(tensor: onnx.TensorProto, name: str) -> onnx.TensorProto:
    tensor.name = name
    return tensor
