"""The build's calls into ingot.kernels, in one place: registering the Quickly Deployable Plugin
`ingot::PagedAttention` (whose `aot_impl` compiles the Triton kernels to PTX/cubin while TensorRT
builds), and the manifest records of the kernels it compiles.

ingot.kernels.trt_plugin provides (the names this module codes against):
- `register()`: the `@tensorrt.plugin.register` / `aot_impl` / `autotune` definitions, idempotent;
- `plugin_kernels(variants, compute_capability) -> list[PluginKernel]`: what `aot_impl` compiles
  for each variant (ingot.kernels.variant.Variant) on that arch, with the sha256 of each PTX/cubin.
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from ingot.builder.errors import BuildError, first_line
from ingot.builder.trt.plugin_nodes import PLUGIN_DOMAIN, PLUGIN_NAME
from ingot.plans import PluginKernel

_DTYPES = {TensorProto.FLOAT16: "float16", TensorProto.BFLOAT16: "bfloat16", TensorProto.FLOAT: "float32",
           TensorProto.INT64: "int64", TensorProto.INT32: "int32"}


def register_plugin() -> None:
    """Register `ingot::PagedAttention` with TensorRT's plugin registry (before parsing the ONNX)."""
    trt_plugin = _module()
    trt_plugin.register()


def kernel_records(model: onnx.ModelProto, compute_capability: str) -> list[PluginKernel]:
    """The kernels the plan's plugin nodes were compiled with, for the manifest."""
    from ingot.kernels.variant import Variant

    variants = [Variant(**fields) for fields in plugin_variants(model)]
    return list(_module().plugin_kernels(variants, compute_capability))


def plugin_variants(model: onnx.ModelProto) -> list[dict]:
    """The distinct kernel specializations of `model`'s plugin nodes, as ingot.kernels.variant.Variant
    fields: the node's attributes and the element types and static dims of its inputs."""
    types = _tensor_types(model.graph)
    seen: list[dict] = []
    for node in model.graph.node:
        if node.domain != PLUGIN_DOMAIN or node.op_type != PLUGIN_NAME:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        elem, shape = types[node.input[3]]  # key_cache [kv_heads, num_blocks, block_size, head_dim]
        fields = {
            "num_heads": int(attrs["num_heads"]), "num_kv_heads": int(attrs["num_kv_heads"]), "head_dim": shape[3],
            "block_size": shape[2], "scale": float(attrs["scale"]), "dtype": _DTYPES[types[node.input[0]][0]],
            "kv_dtype": _DTYPES[elem], "index_dtype": _DTYPES[types[node.input[5]][0]],
            "sliding_window": int(attrs.get("sliding_window", 0)), "softcap": float(attrs.get("softcap", 0.0)),
        }
        if fields not in seen:
            seen.append(fields)
    return seen


def _tensor_types(graph: onnx.GraphProto) -> dict[str, tuple[int, list]]:
    """name -> (element type, dims) of graph inputs and of the Casts' outputs (the plugin's inputs)."""
    out = {v.name: (v.type.tensor_type.elem_type, [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim])
           for v in graph.input}
    for node in graph.node:
        if node.op_type == "Cast":
            to = next(a.i for a in node.attribute if a.name == "to")
            out[node.output[0]] = (to, [])
    return out


def _module():
    try:
        from ingot.kernels import trt_plugin
    except ImportError as e:
        raise BuildError(f"paged LLM plans for TensorRT need the PagedAttention plugin (ingot.kernels.trt_plugin), "
                         f"which does not import: {first_line(e)}") from None
    return trt_plugin
