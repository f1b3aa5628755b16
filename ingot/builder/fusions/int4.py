"""INT4 rewrites for ONNX Runtime's MatMulNBits, as onnxscript rewriter rules.

- Padding. A weight whose K is not whole blocks is stored padded to K' with a `Pad` on its
  activation (TensorRT wants blocks to divide the weight): `X [.., K] -> Pad -> [.., K'] @
  DQ(q [K', N])`. MatMulNBits takes a ragged last block, so the zero rows are sliced off q
  (in place: q keeps its name) and the MatMuls read X: no Pad, no padded copy of X.
- Siblings. INT4 MatMuls reading one X (q/k/v, gate/up) become one MatMul over their weights
  concatenated along N, `X @ DQ(q [K, N1+N2+..])`, and a Split: one kernel instead of two or three.

Both rules match one MatMul at a time and leave the old nodes to the final dead-node removal
(`remove_nodes=False`), as onnxscript's CosSinCacheFusion does with the cos/sin it shares: a
Pad or an X is read by several MatMuls, and a pattern over all of them would be matched by
brute force over every combination of MatMuls.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern


def _const(value: ir.Value | None) -> np.ndarray | None:
    return None if value is None or value.const_value is None else value.const_value.numpy()


def _int4_weight(matmul: ir.Node, x: ir.Value) -> ir.Node | None:
    """The DequantizeLinear of an INT4 initializer that `matmul` (X @ W) reads as W, if every
    reader of W is a MatMul reading X."""
    if matmul.op_type != "MatMul" or matmul.domain != "" or matmul.inputs[0] is not x or matmul.inputs[1] is x:
        return None
    dq = matmul.inputs[1].producer()
    if dq is None or dq.op_type != "DequantizeLinear" or dq.domain != "" or not dq.inputs[0].is_initializer():
        return None
    if dq.inputs[0].dtype != ir.DataType.INT4 or dq.outputs[0].is_graph_output():
        return None
    if any(u.op_type != "MatMul" or u.inputs[0] is not x for u, _ in dq.outputs[0].uses()):
        return None
    return dq


class DropInt4Pad(pattern.RewriteRuleClassBase):
    """MatMul(Pad(X, [0, e] on the last axis), DQ(q [K+e, N])) -> MatMul(X, DQ(q[:K]))."""

    def __init__(self):
        super().__init__("DropInt4Pad", remove_nodes=False)
        self.pads: set[ir.Node] = set()  # the Pads whose readers were rewritten
        self._sliced: set[ir.Node] = set()  # the DequantizeLinears whose q lost its zero rows

    def pattern(self, op, x, pads, q, scale):
        padded = op.Pad(x, pads, _allow_other_inputs=True, _allow_other_attributes=True, _outputs=["padded"])
        return op.MatMul(padded, op.DequantizeLinear(q, scale, _allow_other_attributes=True), _outputs=["out"])

    def setup(self):
        self._droppable: dict[ir.Node, bool] = {}  # per Pad, decided before its first reader is rewritten

    def check(self, context, padded, **_) -> pattern.MatchResult:
        pad = padded.producer()
        if pad not in self._droppable:
            self._droppable[pad] = (not padded.is_graph_output() and _trailing_zeros(pad) is not None
                                    and all(_int4_weight(u, padded) for u, _ in padded.uses()))
        result = pattern.MatchResult()
        return result if self._droppable[pad] else result.fail("not a zero Pad of the last axis read by INT4 MatMuls only")

    def rewrite(self, op, x, padded, out, **_):
        dq = out.producer().inputs[1].producer()
        if dq not in self._sliced:
            _slice_rows(dq, _trailing_zeros(padded.producer()))
            self._sliced.add(dq)
        self.pads.add(padded.producer())
        return op.MatMul(x, dq.outputs[0])


def _trailing_zeros(pad: ir.Node) -> int | None:
    """How many zeros `pad` appends to the last axis, when that is all it does."""
    mode = pad.attributes.get_string("mode", "constant")
    ins = [*pad.inputs, None, None][:4]
    pads, axes = _const(ins[1]), _const(ins[3])
    if mode != "constant" or ins[2] is not None or pads is None or axes is None or axes.tolist() != [-1]:
        return None
    return int(pads[1]) if pads.tolist()[0] == 0 and pads[1] > 0 else None


def _slice_rows(dq: ir.Node, extra: int) -> None:
    """Drop the last `extra` (zero) rows of the INT4 [K', N] weight of `dq`; the scale keeps ceil(K/bs) rows."""
    q = dq.inputs[0]
    rows = q.const_value.numpy()
    assert not np.any(rows[-extra:].astype(np.int8)), "padded rows of an INT4 weight must be zero"
    q.const_value = ir.tensor(np.ascontiguousarray(rows[:-extra]), name=q.name)
    q.shape = ir.Shape(q.const_value.shape)
    dq.outputs[0].shape = ir.Shape([q.shape[0], *dq.outputs[0].shape[1:]]) if dq.outputs[0].shape else None


class MergeInt4Siblings(pattern.RewriteRuleClassBase):
    """X @ DQ(q_i [K, N_i]) for each INT4 MatMul i reading X -> Split(X @ DQ(concat_i q_i), [N_i])."""

    def __init__(self):
        super().__init__("MergeInt4Siblings", remove_nodes=False)
        self.groups = 0

    def setup(self):
        self._split: dict[ir.Node, ir.Value] = {}  # each grouped MatMul -> its output from the Split
        self._made: set[ir.Node] = set()  # the merged MatMuls

    def pattern(self, op, x, q, scale):
        return op.MatMul(x, op.DequantizeLinear(q, scale, _allow_other_attributes=True), _outputs=["out"])

    def check(self, context, x, out, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        if out.producer() not in self._split and len(_siblings(out.producer(), x, self._made)) < 2:
            return result.fail("no sibling INT4 MatMul reads the same input", x)
        return result

    def rewrite(self, op, x, out, **_):
        if out.producer() not in self._split:  # the first of its group in graph order
            self._merge(op, x, _siblings(out.producer(), x, self._made))
        return self._split.pop(out.producer())

    def _merge(self, op, x: ir.Value, group: list[ir.Node]) -> None:
        dqs = [mm.inputs[1].producer() for mm in group]
        base = dqs[0].inputs[0].name.removesuffix("_int4")
        q = np.concatenate([dq.inputs[0].const_value.numpy() for dq in dqs], axis=1)
        s = np.concatenate([dq.inputs[1].const_value.numpy() for dq in dqs], axis=1)
        widths = np.array([dq.inputs[0].shape[1] for dq in dqs], np.int64)
        q, s, widths = (op.initializer(ir.tensor(np.ascontiguousarray(v)), f"{base}_merged_{tag}")
                        for v, tag in ((q, "int4"), (s, "scale"), (widths, "split")))
        merged = op.MatMul(x, op.DequantizeLinear(q, s, **dqs[0].attributes))
        self._made.add(merged.producer())
        self._split.update(zip(group, op.Split(merged, widths, axis=-1, _outputs=len(group))))
        self.groups += 1


def _siblings(matmul: ir.Node, x: ir.Value, made: set[ir.Node]) -> list[ir.Node]:
    """The INT4 MatMuls reading `x` that can merge with `matmul` (it included): same block size,
    same K, same scale type, symmetric, blocked along K, each weight read by its MatMul only."""
    def key(mm: ir.Node):
        dq = _int4_weight(mm, x)
        if dq is None or mm in made or len(dq.outputs[0].uses()) != 1 or len(dq.inputs) > 2 and dq.inputs[2] is not None:
            return None
        if dq.attributes.get_int("axis", 1) != 0 or not dq.inputs[1].is_initializer() or mm.outputs[0].is_graph_output():
            return None
        return dq.attributes.get_int("block_size", 0), dq.inputs[0].shape[0], dq.inputs[1].dtype

    mine = key(matmul)
    return [] if mine is None else [u for u, _ in x.uses() if u.op_type == "MatMul" and key(u) == mine]
