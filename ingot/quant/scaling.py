"""Per-input-channel rescaling of a layer group, for AWQ (INT4).

For the layers that read one activation X [.., K], X W = (X / s)(s W) for any s > 0 [K]:
int4.py puts s into the weights (row k of every W times s_k) and 1/s onto X here, in the
cheapest exact form available:

1. folded into X's producer `Mul(y, c)` with a constant c (the RMSNorm gamma): c / s;
2. folded into X's producer `Mul(a, b)` where b = MatMul(., U) with a constant U [., K]
   read only there (Llama's down_proj input silu(gate) * up): U's columns times 1/s;
3. otherwise an explicit `Mul(X, 1/s)` feeding the group (other readers keep X).

Folds need every other reader of X to be a float layer, `MatMul(X, V)` with a constant V
[K, M] read only there: V's rows are scaled by s, (X / s)(s V) = X V, so no reader sees a
changed product (int4-awq keeps the k/v projections float beside a quantized q_proj).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from ingot.quant.graph import GraphEditor, scope
from ingot.quant.layers import Layer

Scaling = Literal["folded", "explicit"]


def move_inverse(edit: GraphEditor, x: str, group: list[Layer], inv: np.ndarray, tag: str) -> Scaling:
    """Apply X → X * inv ([K], inv = 1/s) for `group`, folded when exact (see above).

    `tag` names new tensors and nodes (`awq`). The caller scales the weights."""
    others = _float_readers(edit, x, group, inv.shape[0])
    if others is not None and (_fold_constant(edit, x, inv, tag) or _fold_matmul(edit, x, inv)):
        for v in others:  # X V = (X / s)(s V)
            w = edit.array(v)
            edit.set_array(v, (w.astype(np.float32) / inv[:, None].astype(np.float32)).astype(w.dtype))
        return "folded"
    _explicit(edit, x, group, inv, tag)
    return "explicit"


def shared_weights(groups: dict[str, list[Layer]]) -> set[str]:
    """Weights read by layers of more than one group: one scale per weight, so no scaling there."""
    seen: dict[str, str] = {}
    shared = set()
    for x, group in groups.items():
        for layer in group:
            if seen.setdefault(layer.weight, x) != x:
                shared.add(layer.weight)
    return shared


def _float_readers(edit: GraphEditor, x: str, group: list[Layer], k: int) -> list[str] | None:
    """The weights V of X's readers outside `group`, if each is `MatMul(X, V)` with V a float
    [K, M] initializer read only there; None if any reader is not (or X is a graph output)."""
    if edit.is_output(x):
        return None
    members, others = {layer.index for layer in group}, []
    for index in edit.consumers(x):
        if index in members:
            continue
        node = edit.node(index)
        v = node.input[1] if node.op_type == "MatMul" and list(node.input[:1]) == [x] else None
        if v is None or v not in edit.inits or len(edit.consumers(v)) != 1 or v in others:
            return None
        dims = list(edit.inits[v].dims)  # the header only: the weight is read once, by the fold
        if len(dims) != 2 or dims[0] != k or edit.dtype(v).kind != "f":
            return None
        others.append(v)
    return others


def _sole_mul(edit: GraphEditor, x: str) -> int | None:
    """X's producer if it is a Mul (the readers were checked by _float_readers)."""
    index = edit.producer(x)
    return index if index is not None and edit.node(index).op_type == "Mul" else None


def _fold_constant(edit: GraphEditor, x: str, inv: np.ndarray, tag: str) -> bool:
    """Case 1: `Mul(y, c)`, c constant broadcasting along X's last dim (size 1 or K)."""
    index = _sole_mul(edit, x)
    if index is None:
        return False
    node = edit.node(index)
    slots = [i for i, name in enumerate(node.input) if name in edit.inits]
    if len(slots) != 1:
        return False
    c = edit.array(node.input[slots[0]])
    k = inv.shape[0]
    if c.dtype.kind != "f" or c.size not in (1, k) or (c.size == k and c.shape[-1] != k):
        return False
    shape = (*c.shape[:-1], k) if c.ndim else (k,)
    folded = (np.broadcast_to(c, shape).astype(np.float32) * inv).astype(c.dtype)
    old = node.input[slots[0]]
    edit.set_input(index, slots[0], edit.add_initializer(f"{old}_{tag}", folded))
    edit.retire(old)
    return True


def _fold_matmul(edit: GraphEditor, x: str, inv: np.ndarray) -> bool:
    """Case 2: `Mul(a, b)`, b = MatMul(., U) with U [J, K] constant, b and U read once.

    (a * b) / s = a * (. @ (U / s)): U's columns are scaled in place (same initializer name,
    so a later pass that quantizes U reads the folded value)."""
    index = _sole_mul(edit, x)
    if index is None:
        return False
    for name in edit.node(index).input:
        m = edit.producer(name)
        if m is None or edit.consumers(name) != [index] or edit.is_output(name):
            continue
        mm = edit.node(m)
        if mm.op_type != "MatMul" or mm.input[1] not in edit.inits or len(edit.consumers(mm.input[1])) != 1:
            continue
        u = edit.array(mm.input[1])
        if u.ndim != 2 or u.shape[1] != inv.shape[0] or u.dtype.kind != "f":
            continue
        edit.set_array(mm.input[1], (u.astype(np.float32) * inv[None, :].astype(np.float32)).astype(u.dtype))
        return True
    return False


def _explicit(edit: GraphEditor, x: str, group: list[Layer], inv: np.ndarray, tag: str) -> None:
    """Case 3: insert `Mul(X, 1/s)` before the group's first layer and feed the group from it."""
    first = min(group, key=lambda layer: layer.index)
    scaled = edit.insert(
        first.index, "Mul", [x, edit.add_initializer(f"{x}_{tag}_inv_scale", inv)], f"{x}_{tag}",
        f"{scope(first.name)}/{tag}_Mul",
    )
    for layer in group:
        edit.set_input(layer.index, 0, scaled)
