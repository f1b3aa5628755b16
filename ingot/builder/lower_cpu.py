"""Lower `ingot.PagedAttention` for ONNX Runtime's CPU provider ("gqa-v3").

ONNX Runtime has no CPU PagedAttention (research/feasibility.md §2d), but its
GroupQueryAttention (com.microsoft) takes a past K/V per sequence. So each node becomes

    q/k/v = the packed rows [T, heads, dim] as [B, S, heads * dim] (attn.query_shape)
    out   = GroupQueryAttention(q, k, v, window.L.key, window.L.value, attn.seqlens_k, attn.total_len)
            as [T, heads, dim]                          # its present: window.L.key.present

and the lowering is a mix: the graph runs the kernel, the runtime owns the paged pool and fills
each sequence's window (its past, [B, kv, W, dim] with W >= past + S) from the pool's blocks.
The runtime binds a window and the kernel's present to one buffer, so the kernel appends the new
rows there in place (past/present share-buffer mode) instead of copying the past; and since the
window is an input, a decoding sequence's window can stay filled from one step to the next
(ingot.runtime.llm.windows): only a sequence that joins the decode group is gathered. Run without
that binding, the plan gives the same logits.

The graph never reads the pool: the new rows are graph outputs (`present.L.key/value`) that the
runtime writes into the pool at slot_mapping after the call (in place, numpy). The kernel's
limits shape the runtime's calls (ingot.runtime.llm.batch.plan_calls): every sequence of a call
adds the same number S of new tokens, and a call with S > 1 and a past holds one sequence. The
step metadata (attn.*) is computed once per call and shared by all layers.
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
    nodes, layer = [], 0
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
    query, key, value, key_cache = node.input[:4]
    head_dim = _static_dim(graph, key_cache, 3)  # [kv, blocks, block, dim]
    p = f"{node.name or f'attention_{layer}'}/"
    built: list[onnx.NodeProto] = []

    def const(name: str, array: np.ndarray) -> str:
        graph.initializer.append(numpy_helper.from_array(array, p + name))
        return p + name

    def op(op_type: str, inputs: list[str], output: str, **kw) -> str:
        built.append(helper.make_node(op_type, inputs, [p + output], name=p + output, **kw))
        return p + output

    for kv in ("key", "value"):  # the past, filled by the runtime; and the kernel's present, bound to the same buffer
        graph.input.append(helper.make_tensor_value_info(names.window(layer, kv), TensorProto.FLOAT,
                                                         ["num_seqs", kv_heads, "window", head_dim]))
        graph.output.append(helper.make_tensor_value_info(names.window_present(layer, kv), TensorProto.FLOAT,
                                                          ["num_seqs", kv_heads, "window", head_dim]))
    q, k, v = (op("Reshape", [x, names.ATTN_QUERY_SHAPE], f"{tag}_seqs") for x, tag in ((query, "q"), (key, "k"), (value, "v")))
    out = op("GroupQueryAttention", [q, k, v, names.window(layer, "key"), names.window(layer, "value"),
                                     names.ATTN_SEQLENS_K, names.ATTN_TOTAL_LEN],
             "context", domain="com.microsoft", num_heads=heads, kv_num_heads=kv_heads, scale=scale)
    built[-1].output.extend([names.window_present(layer, "key"), names.window_present(layer, "value")])
    built.append(helper.make_node("Reshape", [out, const("rows_shape", np.array([-1, heads, head_dim], np.int64))],
                                  [node.output[0]], name=p + "rows"))
    # the contrib op has no ONNX shape inference: say what the rows are, for the fusions' shape checks
    graph.value_info.append(helper.make_tensor_value_info(node.output[0], TensorProto.FLOAT, ["num_tokens", heads, head_dim]))
    for source, target in ((key, names.present_key(layer)), (value, names.present_value(layer))):
        built.append(helper.make_node("Identity", [source], [target], name=p + target))
        graph.output.append(helper.make_tensor_value_info(target, TensorProto.FLOAT, ["num_tokens", kv_heads, head_dim]))
    return built


def _static_dim(graph: onnx.GraphProto, name: str, axis: int) -> int:
    value = next(i for i in graph.input if i.name == name)
    dim = value.type.tensor_type.shape.dim[axis]
    assert dim.HasField("dim_value"), f"{name} axis {axis} must be static"
    return dim.dim_value


def _swap_inputs(graph: onnx.GraphProto) -> None:
    """Replace the contract's metadata inputs and the pool by the lowering's (the runtime keeps
    slot_mapping and the pool); the windows were added layer by layer."""
    contract = {names.SLOT_MAPPING, names.BLOCK_TABLES, names.CONTEXT_LENS, names.QUERY_START_LOC}
    kept = [i for i in graph.input if i.name not in contract and not names.is_cache(i.name)]
    del graph.input[:]
    graph.input.extend(kept)
    graph.input.extend([
        helper.make_tensor_value_info(names.ATTN_QUERY_SHAPE, TensorProto.INT64, [3]),
        helper.make_tensor_value_info(names.ATTN_SEQLENS_K, TensorProto.INT32, ["num_seqs"]),
        helper.make_tensor_value_info(names.ATTN_TOTAL_LEN, TensorProto.INT32, []),
    ])
