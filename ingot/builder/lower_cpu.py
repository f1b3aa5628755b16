"""Lower `ingot.PagedAttention` for ONNX Runtime's CPU provider ("gather-v1").

ONNX Runtime has no CPU PagedAttention (research/feasibility.md §2d), so each node becomes
standard ops (plus com.microsoft FusedMatMul) over a per-step padded view of the ragged batch:

    past  = Gather(cache [kv, blocks, block, dim], attn.past_blocks [B, MB], axis 1)  # whole blocks, no transpose;
            as [kv, B, MB * block, dim]                                               # the pool input is zero-copy
    new   = Gather(key, attn.query_index [B, S]) as [kv, B, S, dim]
    K, V  = Concat(past, new) on the token axis                                      # [kv, B, L, dim]
    Q     = Gather(query, attn.query_index) as [kv, B, group * S, dim]
    out   = Softmax(scale·Q·Kᵀ + attn.bias) · V, back to packed rows by attn.out_index

The pool is only read; the new rows are graph outputs (`present.L.key/value`) that the runtime
writes into the pool at slot_mapping after the step (in place, numpy). The step metadata
(attn.*) is computed once per step by ingot.runtime.llm.batch and shared by all layers.
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
    group = heads // kv_heads
    query, key, value, key_cache, value_cache = node.input[:5]
    head_dim = _static_dim(graph, key_cache, 3)  # cache [kv_heads, blocks, block_size, head_dim]
    p = f"{node.name or f'attention_{layer}'}/"
    built: list[onnx.NodeProto] = []

    def const(name: str, array: np.ndarray) -> str:
        graph.initializer.append(numpy_helper.from_array(array, p + name))
        return p + name

    def op(op_type: str, inputs: list[str], output: str, **kw) -> str:
        built.append(helper.make_node(op_type, inputs, [p + output], name=p + output, **kw))
        return p + output

    def kv(x: str, cache: str, tag: str) -> str:
        past = op("Gather", [cache, names.ATTN_PAST_BLOCKS], f"{tag}_blocks", axis=1)  # [kv, B, MB, block, dim]
        past = op("Reshape", [past, const(f"{tag}_past_shape", np.array([0, 0, -1, head_dim], np.int64))], f"{tag}_past")
        new = op("Gather", [x, names.ATTN_QUERY_INDEX], f"{tag}_new")  # [B, S, kv, dim]
        new = op("Transpose", [new], f"{tag}_new_t", perm=[2, 0, 1, 3])  # [kv, B, S, dim]
        return op("Concat", [past, new], f"{tag}_all", axis=2)  # [kv, B, L, dim]

    k, v = kv(key, key_cache, "k"), kv(value, value_cache, "v")
    q = op("Gather", [query, names.ATTN_QUERY_INDEX], "q_padded")  # [B, S, heads, dim]
    q = op("Reshape", [q, const("q_shape", np.array([0, 0, kv_heads, group, head_dim], np.int64))], "q_split")
    q = op("Transpose", [q], "q_grouped", perm=[2, 0, 3, 1, 4])  # [kv, B, group, S, dim]
    q = op("Reshape", [q, const("q_rows_shape", np.array([kv_heads, 0, -1, head_dim], np.int64))], "q_rows")
    scores = op("FusedMatMul", [q, k], "scores", domain="com.microsoft", transB=1, alpha=scale)  # [kv, B, gS, L]
    probs = op("Softmax", [op("Add", [scores, names.ATTN_BIAS], "masked")], "probs", axis=-1)
    y = op("MatMul", [probs, v], "context")  # [kv, B, group * S, dim]
    y = op("Reshape", [y, const("y_split_shape", np.array([kv_heads, 0, group, -1, head_dim], np.int64))], "context_g")
    y = op("Transpose", [y], "context_bs", perm=[1, 3, 0, 2, 4])  # [B, S, kv, group, dim]
    y = op("Reshape", [y, const("rows_shape", np.array([-1, heads, head_dim], np.int64))], "rows")
    built.append(helper.make_node("Gather", [y, names.ATTN_OUT_INDEX], [node.output[0]], name=p + "packed"))
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
    """Replace the contract's metadata inputs by the lowering's (slot_mapping stays with the runtime)."""
    contract = {names.SLOT_MAPPING, names.BLOCK_TABLES, names.CONTEXT_LENS, names.QUERY_START_LOC}
    kept = [i for i in graph.input if i.name not in contract]
    del graph.input[:]
    graph.input.extend(kept)
    graph.input.extend([
        helper.make_tensor_value_info(names.ATTN_QUERY_INDEX, TensorProto.INT64, ["num_seqs", "max_new"]),
        helper.make_tensor_value_info(names.ATTN_PAST_BLOCKS, TensorProto.INT64, ["num_seqs", "max_past_blocks"]),
        helper.make_tensor_value_info(names.ATTN_BIAS, TensorProto.FLOAT, [1, "num_seqs", "group_rows", "max_context"]),
        helper.make_tensor_value_info(names.ATTN_OUT_INDEX, TensorProto.INT64, ["num_tokens"]),
    ])
