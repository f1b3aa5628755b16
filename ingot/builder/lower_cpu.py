"""Lower `ingot.PagedAttention` for ONNX Runtime's CPU provider ("gqa-v2").

ONNX Runtime has no CPU PagedAttention (research/feasibility.md §2d), but its
GroupQueryAttention (com.microsoft) takes a past K/V per sequence. So each node becomes

    past  = Gather(cache as [kv * blocks, block * dim], attn/past_rows [B, kv, NB], axis 0)   # window.L.key
            as [B, kv, NB * block, dim]                 # one copy, a whole block of one head at a time
    q/k/v = the packed rows [T, heads, dim] as [B, S, heads * dim] (attn.query_shape)
    out   = GroupQueryAttention(q, k, v, past_k, past_v, attn.seqlens_k, attn.total_len) as [T, heads, dim]
            (its present: window.L.key.present)

The runtime gathers NB blocks covering past + S for every sequence, so the kernel's present has
the window's shape; it binds the window and the present to one buffer, and the kernel appends the
new rows there in place (past/present share-buffer mode) instead of copying the past. Run
without that binding, the plan gives the same logits.

The pool is only read; the new rows are graph outputs (`present.L.key/value`) that the runtime
writes into the pool at slot_mapping after the call (in place, numpy). The kernel's limits
shape the runtime's calls (ingot.runtime.llm.batch.plan_calls): every sequence of a call adds
the same number S of new tokens, and a call with S > 1 and a past holds one sequence. The
step metadata (attn.*) is computed once per call and shared by all layers; so are the gather's
rows, head h's copy of block b being row h * num_blocks + b of the flattened cache.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ingot.plans import llm as names
from ingot.plans.llm import DOMAIN, OP_TYPE


def lower_paged_attention(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` with every PagedAttention node lowered to standard ops."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    nodes, layer = _past_rows(graph), 0
    for node in graph.node:
        if node.domain == DOMAIN and node.op_type == OP_TYPE:
            nodes.extend(_lower(node, layer, graph))
            layer += 1
        else:
            nodes.append(node)
    assert layer, "no PagedAttention node to lower"
    del graph.node[:]
    graph.node.extend(nodes)
    _swap_inputs(graph)
    del out.opset_import[:]
    out.opset_import.extend(o for o in model.opset_import if o.domain not in (DOMAIN, "com.microsoft"))
    out.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return out


def _lower(node: onnx.NodeProto, layer: int, graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    heads, kv_heads, scale = attrs["num_heads"], attrs["num_kv_heads"], attrs["scale"]
    query, key, value, key_cache, value_cache = node.input[:5]
    block_size, head_dim = _static_dim(graph, key_cache, 2), _static_dim(graph, key_cache, 3)  # [kv, blocks, block, dim]
    p = f"{node.name or f'attention_{layer}'}/"
    built: list[onnx.NodeProto] = []

    def const(name: str, array: np.ndarray) -> str:
        graph.initializer.append(numpy_helper.from_array(array, p + name))
        return p + name

    def op(op_type: str, inputs: list[str], output: str, **kw) -> str:
        built.append(helper.make_node(op_type, inputs, [p + output], name=p + output, **kw))
        return p + output

    def past(cache: str, kv: str) -> str:
        flat = op("Reshape", [cache, const(f"{kv}_blocks_shape", np.array([-1, block_size * head_dim], np.int64))], f"{kv}_blocks")
        built.append(helper.make_node("Gather", [flat, PAST_ROWS], [names.window(layer, kv)], name=p + f"{kv}_window", axis=0))
        graph.output.append(helper.make_tensor_value_info(names.window(layer, kv), TensorProto.FLOAT,
                                                          ["num_seqs", kv_heads, "window_blocks", block_size * head_dim]))
        return op("Reshape", [names.window(layer, kv), const(f"{kv}_past_shape", np.array([0, 0, -1, head_dim], np.int64))], f"{kv}_past")

    q, k, v = (op("Reshape", [x, names.ATTN_QUERY_SHAPE], f"{tag}_seqs") for x, tag in ((query, "q"), (key, "k"), (value, "v")))
    out = op("GroupQueryAttention", [q, k, v, past(key_cache, "key"), past(value_cache, "value"), names.ATTN_SEQLENS_K,
             names.ATTN_TOTAL_LEN], "context", domain="com.microsoft", num_heads=heads, kv_num_heads=kv_heads, scale=scale)
    for kv in ("key", "value"):  # the window with the new rows: bound to the window's buffer by the runtime
        built[-1].output.append(names.window_present(layer, kv))
        graph.output.append(helper.make_tensor_value_info(names.window_present(layer, kv), TensorProto.FLOAT,
                                                          ["num_seqs", kv_heads, "window", head_dim]))
    built.append(helper.make_node("Reshape", [out, const("rows_shape", np.array([-1, heads, head_dim], np.int64))],
                                  [node.output[0]], name=p + "rows"))
    # the contrib op has no ONNX shape inference: say what the rows are, for the fusions' shape checks
    graph.value_info.append(helper.make_tensor_value_info(node.output[0], TensorProto.FLOAT, ["num_tokens", heads, head_dim]))
    for source, target in ((key, names.present_key(layer)), (value, names.present_value(layer))):
        built.append(helper.make_node("Identity", [source], [target], name=p + target))
        graph.output.append(helper.make_tensor_value_info(target, TensorProto.FLOAT, ["num_tokens", kv_heads, head_dim]))
    return built


PAST_ROWS = "attn/past_rows"


def _past_rows(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """Nodes computing PAST_ROWS [B, kv, NB] from attn.past_blocks and the caches' block count (every
    cache has the shape of layer 0's): row h * num_blocks + block of a cache viewed as [kv * blocks, ...]."""
    kv_heads, p = _static_dim(graph, names.key_cache(0), 0), "attn/"
    graph.initializer.extend([
        numpy_helper.from_array(np.arange(kv_heads, dtype=np.int64).reshape(1, kv_heads, 1), p + "heads"),
        numpy_helper.from_array(np.array([1], np.int64), p + "one"),
        numpy_helper.from_array(np.array([2], np.int64), p + "two"),
    ])
    return [
        helper.make_node("Shape", [names.key_cache(0)], [p + "cache_shape"], name=p + "cache_shape"),
        helper.make_node("Slice", [p + "cache_shape", p + "one", p + "two"], [p + "num_blocks"], name=p + "num_blocks"),
        helper.make_node("Mul", [p + "heads", p + "num_blocks"], [p + "head_rows"], name=p + "head_rows"),  # [1, kv, 1]
        helper.make_node("Unsqueeze", [names.ATTN_PAST_BLOCKS, p + "one"], [p + "blocks"], name=p + "blocks"),  # [B, 1, NB]
        helper.make_node("Add", [p + "blocks", p + "head_rows"], [PAST_ROWS], name=PAST_ROWS),
    ]


def _static_dim(graph: onnx.GraphProto, name: str, axis: int) -> int:
    value = next(i for i in graph.input if i.name == name)
    dim = value.type.tensor_type.shape.dim[axis]
    assert dim.HasField("dim_value"), f"{name} axis {axis} must be static"
    return dim.dim_value


def _swap_inputs(graph: onnx.GraphProto) -> None:
    """Replace the contract's metadata inputs by the lowering's (slot_mapping stays with the runtime)."""
    contract = {names.SLOT_MAPPING, names.BLOCK_TABLES, names.CONTEXT_LENS, names.QUERY_START_LOC}
    kept = [i for i in graph.input if i.name not in contract]
    del graph.input[:]
    graph.input.extend(kept)
    graph.input.extend([
        helper.make_tensor_value_info(names.ATTN_QUERY_SHAPE, TensorProto.INT64, [3]),
        helper.make_tensor_value_info(names.ATTN_PAST_BLOCKS, TensorProto.INT64, ["num_seqs", "past_blocks"]),
        helper.make_tensor_value_info(names.ATTN_SEQLENS_K, TensorProto.INT32, ["num_seqs"]),
        helper.make_tensor_value_info(names.ATTN_TOTAL_LEN, TensorProto.INT32, []),
    ])
