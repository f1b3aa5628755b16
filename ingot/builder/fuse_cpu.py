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
- Rotary embedding. Llama's rotate-half RoPE (`x*cos + cat(-x2, x1)*sin` over a
  [1, T, heads, dim] view, cos/sin computed from the positions) is eight nodes per q and k;
  it becomes com.microsoft `RotaryEmbedding` on the [1, T, heads*dim] projection, reading
  cos/sin tables that the graph's own subgraph computes once here for positions
  0..max_positions-1 (so the tables are the values the graph would compute).
- Skip norm. A residual `Add` feeding a `SimplifiedLayerNormalization` becomes one
  com.microsoft `SkipSimplifiedLayerNormalization`, whose fourth output is the sum.
- Sibling INT4 projections. INT4 MatMuls reading the same activation (q/k/v, gate/up) become
  one MatMul over their weights concatenated along N and a Split: one MatMulNBits kernel
  instead of three or two.
- Output identities. An `Identity` that only names a graph output (the lowering's
  `present.L.key/value`) is dropped by renaming its input.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper


def fuse_for_cpu(model: onnx.ModelProto, max_positions: int | None = None) -> tuple[onnx.ModelProto, dict[str, int]]:
    """`model` rewritten in place; returns it and how many times each rewrite applied.
    `max_positions` (a causal LM's max_model_len) enables the rotary rewrite."""
    graph = model.graph
    read = _read(graph)
    counts = {"rms_norm": _fuse_rms_norms(graph), "int4_unpad": _drop_int4_pads(graph)}
    shapes = _shapes(model)
    counts["rotary"] = _fuse_rotary(model, shapes, max_positions) if max_positions else 0
    counts["skip_norm"] = _fuse_skip_norms(graph, shapes)
    counts["output_identity"] = _drop_output_identities(graph)
    counts["int4_siblings"] = _merge_int4_siblings(graph)
    _drop_dead_nodes(graph)
    unread = read - _read(graph)  # what the rewrites orphaned
    for i in reversed([i for i, t in enumerate(graph.initializer) if t.name in unread]):
        del graph.initializer[i]
    if counts["rotary"] or counts["skip_norm"]:
        _use_contrib_domain(model)
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


def _rebuild(graph: onnx.GraphProto, replace: dict[str, onnx.NodeProto | list[onnx.NodeProto]], dead: set[str],
             prologue: list[onnx.NodeProto] = ()) -> None:
    """The graph's nodes with `replace`d ones swapped in place (one node or several) and `dead` ones dropped."""
    nodes = list(prologue)
    for n in graph.node:
        if _key(n) in replace:
            new = replace[_key(n)]
            nodes.extend(new if isinstance(new, list) else [new])
        elif _key(n) not in dead:
            nodes.append(_copy(n))
    del graph.node[:]
    graph.node.extend(nodes)


def _copy(node: onnx.NodeProto) -> onnx.NodeProto:
    out = onnx.NodeProto()
    out.CopyFrom(node)
    return out


def _shapes(model: onnx.ModelProto) -> dict[str, list[int | str | None]]:
    """Inferred shapes by tensor name (a dim is an int, a symbol, or None)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {}
    for v in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        t = v.type.tensor_type
        if t.HasField("shape"):
            shapes[v.name] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]
    return shapes


def _use_contrib_domain(model: onnx.ModelProto) -> None:
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))


# --- rotary embedding ----------------------------------------------------------------------


def _fuse_rotary(model: onnx.ModelProto, shapes: dict, max_positions: int) -> int:
    graph = model.graph
    index = _Index(graph)
    matches = [m for add in graph.node if add.op_type == "Add" and (m := _rotary(add, index, shapes))]
    if not matches:
        return 0
    tables: dict[tuple[str, str], tuple[str, str, str, str] | None] = {}
    replace: dict[str, list[onnx.NodeProto]] = {}
    dead: set[str] = set()
    for nodes, reshape, heads, cos, sin, out in matches:
        if (cos, sin) not in tables:
            tables[cos, sin] = _rotary_tables(model, index, cos, sin, max_positions, len(tables), shapes, reshape.input[0])
        if tables[cos, sin] is None:
            continue
        cos_cache, sin_cache, position_ids, _ = tables[cos, sin]
        rotated = f"{out}_rotary"
        fused = [
            helper.make_node("RotaryEmbedding", [reshape.input[0], position_ids, cos_cache, sin_cache], [rotated],
                             name=f"{reshape.name or out}_rotary", domain="com.microsoft", interleaved=0, num_heads=heads),
            helper.make_node("Reshape", [rotated, reshape.input[1]], [out], name=f"{reshape.name or out}_heads"),
        ]
        replace[_key(reshape)] = fused
        dead |= {_key(n) for n in nodes}
    _rebuild(graph, replace, dead, [n for made in tables.values() if made for n in _position_ids(graph, *made[2:])])
    return len(replace)


def _rotary(add: onnx.NodeProto, index: _Index, shapes: dict):
    """(nodes, reshape, heads, cos, sin, output) when `add` ends a rotate-half RoPE of a
    Reshape([1, T, heads*dim] -> [1, T, heads, dim])."""
    muls = [index.producer.get(i) for i in add.input]
    if len(muls) != 2 or any(m is None or m.op_type != "Mul" for m in muls):
        return None
    for direct, rotated in (muls, muls[::-1]):
        found = _rotate_half(direct, rotated, index)
        if found is None:
            continue
        x, cos, sin, inner = found
        reshape = index.producer.get(x)
        if reshape is None or reshape.op_type != "Reshape" or x in index.outputs:
            return None
        users = {_key(u) for u in index.consumers.get(x, [])}
        if users != {_key(direct), *(_key(n) for n in inner if n.op_type == "Slice")}:
            return None
        shape_in, shape_out = shapes.get(reshape.input[0]), shapes.get(x)
        if not shape_in or not shape_out or len(shape_in) != 3 or len(shape_out) != 4 or shape_in[0] != 1:
            return None
        heads, dim = shape_out[2], shape_out[3]
        if not isinstance(heads, int) or not isinstance(dim, int) or shape_in[2] != heads * dim or dim % 2:
            return None
        if any(index.consumers.get(n.output[0], []) != [c] for n, c in _chain(inner, direct, rotated, add)):
            return None
        if any(not _is_half(s, dim, index) for s in inner if s.op_type == "Slice"):
            return None
        return [reshape, direct, rotated, add, *inner], reshape, heads, cos, sin, add.output[0]
    return None


def _rotate_half(direct: onnx.NodeProto, rotated: onnx.NodeProto, index: _Index):
    """(x, cos, sin, [slice_lo, slice_hi, neg, concat]) for x*cos and cat(-x[h:], x[:h])*sin."""
    concat = next((index.producer.get(i) for i in rotated.input if (p := index.producer.get(i)) and p.op_type == "Concat"), None)
    if concat is None or len(concat.input) != 2 or next((a.i for a in concat.attribute if a.name == "axis"), None) not in (-1, 3):
        return None
    sin = next(i for i in rotated.input if i != concat.output[0])
    neg, lo = index.producer.get(concat.input[0]), index.producer.get(concat.input[1])
    if neg is None or lo is None or neg.op_type != "Neg" or lo.op_type != "Slice":
        return None
    hi = index.producer.get(neg.input[0])
    if hi is None or hi.op_type != "Slice" or hi.input[0] != lo.input[0]:
        return None
    x = lo.input[0]
    if x not in direct.input:
        return None
    cos = next((i for i in direct.input if i != x), None)
    if cos is None or x in (cos, sin):
        return None
    lo_start, hi_start = index.const(lo.input[1]), index.const(hi.input[1])
    if lo_start is None or hi_start is None or lo_start.tolist() != [0]:
        return None
    return x, cos, sin, [lo, hi, neg, concat]


def _chain(inner, direct, rotated, add):
    """(node, its only consumer) pairs that must hold inside a match."""
    lo, hi, neg, concat = inner
    return [(lo, concat), (hi, neg), (neg, concat), (concat, rotated), (direct, add), (rotated, add)]


def _is_half(node: onnx.NodeProto, dim: int, index: _Index) -> bool:
    """`node` slices [0, dim/2) or [dim/2, end) of the last axis with step 1."""
    ins = list(node.input) + [""] * (5 - len(node.input))
    start, end = index.const(ins[1]), index.const(ins[2])
    axes = index.const(ins[3]) if ins[3] else None
    steps = index.const(ins[4]) if ins[4] else None
    if start is None or end is None or axes is None or axes.tolist() not in ([-1], [3]):
        return False
    if steps is not None and steps.tolist() != [1]:
        return False
    half = dim // 2
    return (start.tolist(), min(int(end[0]), dim)) in (([0], half), ([half], dim))


def _rotary_tables(model: onnx.ModelProto, index: _Index, cos: str, sin: str, max_positions: int, n: int,
                   shapes: dict, x: str):
    """(cos_cache, sin_cache, position_ids, positions) names: the graph's cos/sin for positions
    0..max_positions-1 as [max_positions, dim/2] initializers, or None when they are not a
    function of one positions input [T] for the tokens of `x` [1, T, hidden], or not
    rotate-half tables."""
    graph = model.graph
    nodes, sources, seen, todo = [], set(), set(), [cos, sin]
    inputs = {i.name: i for i in graph.input}
    while todo:
        t = todo.pop()
        if t in seen or not t or t in index.inits:
            continue
        seen.add(t)
        if t in inputs:
            sources.add(t)
            continue
        node = index.producer.get(t)
        if node is None:
            return None
        nodes.append(node)
        todo.extend(node.input)
    if len(sources) != 1:
        return None
    (positions,) = sources
    if len(shapes.get(positions) or []) != 1 or shapes[positions][0] != shapes[x][1]:
        return None  # one position per token of x [1, T, hidden]
    wanted = {_key(n) for n in nodes}
    values = _evaluate(model, [n for n in graph.node if _key(n) in wanted], positions, [cos, sin], max_positions)
    caches = []
    for name, v in zip(("cos", "sin"), values):
        if v.size % max_positions:
            return None
        v = v.reshape(max_positions, -1)
        half = v.shape[1] // 2
        if v.shape[1] % 2 or not np.array_equal(v[:, :half], v[:, half:]):
            return None
        cache = f"rotary{n}.{name}_cache"
        graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(v[:, :half], np.float32), cache))
        caches.append(cache)
    return caches[0], caches[1], f"rotary{n}.position_ids", positions


def _position_ids(graph: onnx.GraphProto, position_ids: str, positions: str) -> list[onnx.NodeProto]:
    """Unsqueeze(positions [T]) -> position_ids [1, T]."""
    axes = f"{position_ids}_axes"
    graph.initializer.append(numpy_helper.from_array(np.array([0], np.int64), axes))
    return [helper.make_node("Unsqueeze", [positions, axes], [position_ids], name=position_ids)]


def _evaluate(model: onnx.ModelProto, nodes: list[onnx.NodeProto], positions: str, outputs: list[str], n: int):
    import onnxruntime as ort

    used = {i for node in nodes for i in node.input}
    inits = [t for t in model.graph.initializer if t.name in used]
    graph = helper.make_graph(
        nodes, "tables", [helper.make_tensor_value_info(positions, onnx.TensorProto.INT64, [n])],
        [helper.make_tensor_value_info(o, onnx.TensorProto.FLOAT, None) for o in outputs], inits,
    )
    sub = helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    session = ort.InferenceSession(sub.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(outputs, {positions: np.arange(n, dtype=np.int64)})


# --- skip norm, output identities ----------------------------------------------------------


def _fuse_skip_norms(graph: onnx.GraphProto, shapes: dict) -> int:
    index = _Index(graph)
    replace: dict[str, onnx.NodeProto] = {}
    dead: set[str] = set()
    for norm in [n for n in graph.node if n.op_type == "SimplifiedLayerNormalization" and n.domain in ("", "ai.onnx")]:
        add = index.producer.get(norm.input[0])
        if add is None or add.op_type != "Add" or any(i in index.inits for i in add.input):
            continue
        a, b = (shapes.get(i) for i in add.input)
        if not a or a != b or len(a) != 3 or next((x.i for x in norm.attribute if x.name == "axis"), -1) not in (-1, 2):
            continue
        total = add.output[0]
        keep_sum = total in index.outputs or len(index.consumers.get(total, [])) > 1
        eps = next((x.f for x in norm.attribute if x.name == "epsilon"), 1e-5)
        fused = helper.make_node(
            "SkipSimplifiedLayerNormalization", [add.input[0], add.input[1], norm.input[1]],
            [norm.output[0], "", "", total] if keep_sum else [norm.output[0]],
            name=f"{norm.name or norm.output[0]}_skip", domain="com.microsoft", epsilon=eps,
        )
        replace[_key(add)] = fused
        dead.add(_key(norm))
    _rebuild(graph, replace, dead)
    return len(replace)


def _drop_output_identities(graph: onnx.GraphProto) -> int:
    index = _Index(graph)
    inputs = {i.name for i in graph.input}
    renames: dict[str, str] = {}
    dead: set[str] = set()
    for node in [n for n in graph.node if n.op_type == "Identity"]:
        src, out = node.input[0], node.output[0]
        producer = index.producer.get(src)
        if out not in index.outputs or index.consumers.get(out) or src in index.outputs or src in inputs:
            continue
        if producer is None or src in renames:
            continue
        renames[src] = out
        dead.add(_key(node))
    _rebuild(graph, {}, dead)
    for n in graph.node:
        for i, name in enumerate(n.input):
            if name in renames:
                n.input[i] = renames[name]
        for i, name in enumerate(n.output):
            if name in renames:
                n.output[i] = renames[name]
    return len(dead)


# --- sibling INT4 projections, dead nodes --------------------------------------------------


def _merge_int4_siblings(graph: onnx.GraphProto) -> int:
    """INT4 MatMuls that read the same X (q/k/v, gate/up) become one MatMul over the weights
    concatenated along N, then a Split: one MatMulNBits instead of several."""
    index = _Index(graph)
    groups: dict[tuple, list[tuple[onnx.NodeProto, onnx.NodeProto]]] = {}
    for mm in [n for n in graph.node if n.op_type == "MatMul"]:
        dq = _block_dq(mm, mm.input[0], index)
        if dq is None or len(index.consumers[dq.output[0]]) != 1 or len(dq.input) > 2 and dq.input[2]:
            continue
        attrs = {a.name: a.i for a in dq.attribute}
        if attrs.get("axis") != 0 or dq.input[1] not in index.inits or mm.output[0] in index.outputs:
            continue
        weight, scale = index.inits[dq.input[0]], index.inits[dq.input[1]]
        key = (mm.input[0], attrs.get("block_size"), weight.dims[0], scale.data_type)
        groups.setdefault(key, []).append((mm, dq))
    replace: dict[str, list[onnx.NodeProto]] = {}
    dead: set[str] = set()
    for members in [g for g in groups.values() if len(g) > 1]:
        first_mm, first_dq = members[0]
        q = np.concatenate([numpy_helper.to_array(index.inits[dq.input[0]]) for _, dq in members], axis=1)
        s = np.concatenate([numpy_helper.to_array(index.inits[dq.input[1]]) for _, dq in members], axis=1)
        base = first_dq.input[0].removesuffix("_int4")
        names = [f"{base}_merged_int4", f"{base}_merged_scale", f"{base}_merged_split"]
        widths = np.array([index.inits[dq.input[0]].dims[1] for _, dq in members], np.int64)
        for name, value in zip(names, (q, s, widths)):
            graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        merged = f"{first_mm.output[0]}_merged"
        replace[_key(first_mm)] = [
            helper.make_node("DequantizeLinear", names[:2], [f"{base}_merged_dq"], name=f"{first_dq.name}_merged",
                             **{a.name: helper.get_attribute_value(a) for a in first_dq.attribute}),
            helper.make_node("MatMul", [first_mm.input[0], f"{base}_merged_dq"], [merged], name=f"{first_mm.name}_merged"),
            helper.make_node("Split", [merged, names[2]], [mm.output[0] for mm, _ in members], name=f"{merged}_split",
                             axis=-1),
        ]
        dead |= {_key(n) for pair in members for n in pair} - {_key(first_mm)}
    _rebuild(graph, replace, dead)
    return len(replace)


def _drop_dead_nodes(graph: onnx.GraphProto) -> int:
    """Nodes none of whose outputs is read (a rewrite's leftovers, such as the cos/sin subgraph)."""
    needed = {o.name for o in graph.output}
    keep = []
    for n in reversed(graph.node):
        if any(o in needed for o in n.output if o):
            keep.append(n)
            needed |= set(n.input)
    dropped = len(graph.node) - len(keep)
    if dropped:
        kept = [_copy(n) for n in reversed(keep)]
        del graph.node[:]
        graph.node.extend(kept)
    return dropped
