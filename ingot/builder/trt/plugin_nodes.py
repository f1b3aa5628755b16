"""`ingot.PagedAttention` nodes as nodes TensorRT's ONNX parser maps to the Quickly Deployable
Plugin `ingot::PagedAttention` (ingot.kernels.trt_plugin), with its ahead-of-time kernels.

How the parser finds a plugin (onnx/onnx-tensorrt `onnxOpImporters.cpp`, FallbackPluginImporter;
NVIDIA/TensorRT `samples/python/quickly_deployable_plugins/README.md`, "ONNX model with an AOT
plugin"): an op it has no importer for is looked up in the plugin registry by name = the node's
op_type, version = attribute `plugin_version` (default "1"), namespace = attribute
`plugin_namespace` (default ""); the node's domain plays no part. Attribute `aot` = 1 asks for the
plugin's `aot_impl` (kernels compiled into the plan: no Python at load). Every other attribute
whose name is a field of the plugin (num_heads, num_kv_heads, scale, sliding_window, softcap)
becomes that field, converted to the type the plugin declares (`loadFields`).

Precision: TensorRT 11 builds strongly typed networks only, so the dtypes written here are the
plan's. An sm plan computes in fp32 as exported (TensorRT runs fp32 GEMMs on TF32 tensor cores
by default; FP8/INT4 Q/DQ stay as the quantizer wrote them); the paged attention and its KV pool
are fp16, the dtype of the plugin kernels (fp32 softmax and accumulation inside). Per node:

    q, k, v [T, heads|kv_heads, dim] fp32 ─Cast(fp16)─┐
    key_cache.L, value_cache.L [kv, blocks, block, dim] fp16 (graph inputs, the runtime's pool)
    PagedAttention(q16, k16, v16, pools, slot_mapping, block_tables, context_lens, query_start_loc)
      -> out16 [T, heads, dim] ─Cast(fp32)─> out (the node's old output; its readers unchanged)
      -> key_cache.L.updated, value_cache.L.updated: the pools, aliased to inputs 3 and 4

The plugin writes the step's new K/V into the pool in place. TensorRT plugin inputs are read-only
unless an output is declared aliased to them (`TensorDesc.aliased()`, builder preview feature
ALIASED_PLUGIN_IO_10_03), so the pools come out again as aliased outputs, graph outputs the
runtime binds to the pool's own address. Pure: no TensorRT.
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from ingot.builder.trt.paged_graph import attention_nodes
from ingot.plans.llm import DOMAIN, OP_TYPE

PLUGIN_NAME, PLUGIN_NAMESPACE, PLUGIN_VERSION = OP_TYPE, DOMAIN, "1"  # registered as "ingot::PagedAttention"
PLUGIN_DOMAIN = "trt.plugins"  # ONNX domain of the plugin nodes (the parser ignores it; onnx.checker needs one)
POOL_DTYPE = TensorProto.FLOAT16
POOL_INPUTS = (3, 4)  # key_cache, value_cache among the node's inputs


def updated(pool: str) -> str:
    """The aliased output of pool input `pool` (key_cache.0 -> key_cache.0.updated)."""
    return f"{pool}.updated"


def plugin_graph(model: onnx.ModelProto, pool_dtype: int = POOL_DTYPE) -> onnx.ModelProto:
    """A copy of `model` whose PagedAttention nodes are plugin nodes, with their pools in `pool_dtype`."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    attention = attention_nodes(out)
    assert attention, "no PagedAttention node"
    pools = {node.input[i] for node in attention for i in POOL_INPUTS}
    inputs = {v.name: v for v in graph.input}
    assert pools <= set(inputs), f"KV pools must be graph inputs: {sorted(pools - set(inputs))}"
    for name in pools:
        inputs[name].type.tensor_type.elem_type = pool_dtype
    built = []
    for node in graph.node:
        is_attention = node.domain == DOMAIN and node.op_type == OP_TYPE
        built.extend(_plugin(node, pool_dtype) if is_attention else [node])
    del graph.node[:]
    graph.node.extend(built)
    for name in sorted(pools, key=[v.name for v in graph.input].index):
        value = onnx.ValueInfoProto()
        value.CopyFrom(inputs[name])
        value.name = updated(name)
        graph.output.append(value)
    opsets = [o for o in out.opset_import if o.domain != DOMAIN] + [helper.make_opsetid(PLUGIN_DOMAIN, 1)]
    del out.opset_import[:]
    out.opset_import.extend(opsets)
    return out


def _plugin(node: onnx.NodeProto, dtype: int) -> list[onnx.NodeProto]:
    """Casts in, the plugin node, a Cast out: see the module docstring."""
    p = f"{node.name}/"
    casts = [helper.make_node("Cast", [x], [f"{p}{tag}_half"], name=f"{p}{tag}_half", to=dtype)
             for x, tag in zip(node.input[:3], ("query", "key", "value"))]
    inputs = [c.output[0] for c in casts] + list(node.input[3:])
    outputs = [f"{p}output_half", *(updated(node.input[i]) for i in POOL_INPUTS)]
    plugin = helper.make_node(PLUGIN_NAME, inputs, outputs, name=node.name, domain=PLUGIN_DOMAIN,
                              plugin_namespace=PLUGIN_NAMESPACE, plugin_version=PLUGIN_VERSION, aot=1)
    plugin.attribute.extend(a for a in node.attribute if a.name not in {"plugin_namespace", "plugin_version", "aot"})
    back = helper.make_node("Cast", [outputs[0]], [node.output[0]], name=f"{p}output_float", to=TensorProto.FLOAT)
    return [*casts, plugin, back]
