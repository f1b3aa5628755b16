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
from onnx import TensorProto, helper

from ingot.plans import llm as names
from ingot.plans.llm import DOMAIN, OP_TYPE
from ingot.quant.graph import GraphEditor


def lower_paged_attention(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` with every PagedAttention node lowered to standard ops."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    edit = GraphEditor(out)
    attention = [i for i, n in enumerate(out.graph.node) if n.domain == DOMAIN and n.op_type == OP_TYPE]
    assert attention, "no PagedAttention node to lower"
    for layer, index in enumerate(attention):
        edit.replace(index, _lower(edit, edit.node(index), layer))
    _swap_inputs(edit)
    edit.set_opset(DOMAIN, None)
    edit.set_opset("com.microsoft", 1)
    edit.finish()
    return out


def _lower(edit: GraphEditor, node: onnx.NodeProto, layer: int) -> list[onnx.NodeProto]:
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    heads, kv_heads, scale = attrs["num_heads"], attrs["num_kv_heads"], attrs["scale"]
    query, key, value, key_cache = node.input[:4]
    dim = edit.graph_input(key_cache).type.tensor_type.shape.dim[3]  # [kv, blocks, block, dim]
    assert dim.HasField("dim_value"), f"{key_cache} axis 3 must be static"
    head_dim = dim.dim_value
    p = f"{node.name or f'attention_{layer}'}/"
    built: list[onnx.NodeProto] = []

    def op(op_type: str, inputs: list[str], output: str, **kw) -> str:
        built.append(helper.make_node(op_type, inputs, [p + output], name=p + output, **kw))
        return p + output

    window = ["num_seqs", kv_heads, "window", head_dim]
    for kv in ("key", "value"):  # the past, filled by the runtime; and the kernel's present, bound to the same buffer
        edit.add_input(helper.make_tensor_value_info(names.window(layer, kv), TensorProto.FLOAT, window))
        edit.add_output(helper.make_tensor_value_info(names.window_present(layer, kv), TensorProto.FLOAT, window))
    q, k, v = (op("Reshape", [x, names.ATTN_QUERY_SHAPE], f"{tag}_seqs") for x, tag in ((query, "q"), (key, "k"), (value, "v")))
    out = op("GroupQueryAttention", [q, k, v, names.window(layer, "key"), names.window(layer, "value"),
                                     names.ATTN_SEQLENS_K, names.ATTN_TOTAL_LEN],
             "context", domain="com.microsoft", num_heads=heads, kv_num_heads=kv_heads, scale=scale,
             **_window_and_softcap(attrs))
    built[-1].output.extend([names.window_present(layer, "key"), names.window_present(layer, "value")])
    rows_shape = edit.add_initializer(p + "rows_shape", np.array([-1, heads, head_dim], np.int64))
    built.append(helper.make_node("Reshape", [out, rows_shape], [node.output[0]], name=p + "rows"))
    # the contrib op has no ONNX shape inference: say what the rows are, for the fusions' shape checks
    edit.add_value_info(helper.make_tensor_value_info(node.output[0], TensorProto.FLOAT, ["num_tokens", heads, head_dim]))
    for source, target in ((key, names.present_key(layer)), (value, names.present_value(layer))):
        built.append(helper.make_node("Identity", [source], [target], name=p + target))
        edit.add_output(helper.make_tensor_value_info(target, TensorProto.FLOAT, ["num_tokens", kv_heads, head_dim]))
    return built


def _window_and_softcap(attrs: dict) -> dict:
    """GroupQueryAttention's local_window_size and softcap: the contract's attributes. (Checked on
    ONNX Runtime 1.32: a query at q attends keys k > q - local_window_size, as transformers'
    sliding window does.)"""
    out = {}
    if attrs.get("sliding_window"):
        out["local_window_size"] = attrs["sliding_window"]
    if attrs.get("softcap"):
        out["softcap"] = attrs["softcap"]
    return out


def _swap_inputs(edit: GraphEditor) -> None:
    """Replace the contract's metadata inputs and the pool by the lowering's (the runtime keeps
    slot_mapping and the pool); the windows were added layer by layer."""
    contract = {names.SLOT_MAPPING, names.BLOCK_TABLES, names.CONTEXT_LENS, names.QUERY_START_LOC}
    edit.remove_inputs(contract | {v.name for v in edit.graph.input if names.is_cache(v.name)})
    edit.add_input(helper.make_tensor_value_info(names.ATTN_QUERY_SHAPE, TensorProto.INT64, [3]))
    edit.add_input(helper.make_tensor_value_info(names.ATTN_SEQLENS_K, TensorProto.INT32, ["num_seqs"]))
    edit.add_input(helper.make_tensor_value_info(names.ATTN_TOTAL_LEN, TensorProto.INT32, []))
