"""`ingot::PagedAttention` as a TensorRT Quickly Deployable Plugin, with the fused kernel compiled
ahead of time into the plan (no Python or Triton where the plan runs).

Two entry points for the TensorRT builder (ingot/builder/tensorrt.py):
- `register()`: registers the plugin with TensorRT (idempotent); call it before parsing or building
  a network with `ingot.PagedAttention` nodes. Needs `tensorrt` (imported here only).
- `plugin_kernels(variants, compute_capability)`: the manifest records (ingot.plans.PluginKernel) of
  the kernels a plan for that compute capability embeds; `variants_from_onnx(model, dtype)` reads the
  variants off a paged plan's nodes. Needs triton, not TensorRT: it runs on a CPU.

The plugin (after NVIDIA/TensorRT samples/python/quickly_deployable_plugins/qdp_defs.py, and
python/packaging/bindings_wheel/tensorrt/plugin/_plugin_class.py for how TensorRT calls it):
- inputs: the contract's nine (query, key, value, key_cache, value_cache, slot_mapping, block_tables,
  context_lens, query_start_loc); attributes num_heads, num_kv_heads, scale, sliding_window, softcap;
- outputs: `out` like query, and the two pools as outputs aliased to their inputs (`.aliased()`):
  the kernel writes the step's K/V into them in place, and TensorRT knows it. A network therefore
  gives the node three outputs (an ONNX node of the contract has one: the builder adds two);
- `aot_impl`: fused_kernel compiled for the builder's GPU (aot.py), its cubin (PTX from triton 3.9 is
  .version 9.4, newer than some drivers JIT-compile); grid (T, num_kv_heads), block num_warps * 32,
  its shared memory; the int32 scalars (num_seqs, max_blocks, num_blocks) as SymInt32 of the input
  shapes. TensorRT passes inputs, then those scalars, then outputs: fused_kernel's argument order.
  Float attributes (scale, softcap) cannot be SymInt32 args: they are compiled in as constexprs.

Never run here (no TensorRT on these machines): triton 3.x kernels end with two scratch pointers
(aot.py) that TensorRT does not know of; both are unused (scratch size 0), so the kernel never
reads them, but whether TensorRT's launch tolerates the two missing parameters is unverified.
"""

import functools
from collections.abc import Iterable
from typing import TYPE_CHECKING

from ingot.kernels.aot import Request, capability, compile_kernel, compile_kernels
from ingot.kernels.errors import KernelError
from ingot.kernels.variant import Variant

if TYPE_CHECKING:
    import onnx

    from ingot.plans.manifest import PluginKernel

PLUGIN = "ingot::PagedAttention"
KERNEL = "fused"
# TensorRT type names (trt.DataType member names) -> Variant dtype names
_TRT_TYPES = {"HALF": "float16", "BF16": "bfloat16", "FLOAT": "float32", "FP8": "float8_e4m3fn", "INT64": "int64",
              "INT32": "int32"}
_registered = False


def register() -> None:
    """Register `ingot::PagedAttention` (shape/type function, supported types, AOT implementation)
    with TensorRT's plugin registry, once per process."""
    global _registered
    if _registered:
        return
    try:
        import tensorrt.plugin as trtp
    except ImportError as e:
        raise KernelError(f"the TensorRT plugin needs tensorrt (pip install 'ingot[tensorrt]'): {e}") from None
    _define(trtp)
    _registered = True


def _define(trtp) -> None:
    """The plugin's definitions. Annotations are evaluated here (no `from __future__ import annotations`
    in this module): trtp reads them to tell tensors from attributes."""
    from typing import Tuple  # as trtp's samples annotate

    @trtp.register(PLUGIN)
    def _shapes(query: trtp.TensorDesc, key: trtp.TensorDesc, value: trtp.TensorDesc, key_cache: trtp.TensorDesc,
                value_cache: trtp.TensorDesc, slot_mapping: trtp.TensorDesc, block_tables: trtp.TensorDesc,
                context_lens: trtp.TensorDesc, query_start_loc: trtp.TensorDesc, num_heads: int, num_kv_heads: int,
                scale: float, sliding_window: int, softcap: float
                ) -> Tuple[trtp.TensorDesc, trtp.TensorDesc, trtp.TensorDesc]:
        return query.like(), key_cache.aliased(), value_cache.aliased()

    @trtp.autotune(PLUGIN)
    def _types(query, key, value, key_cache, value_cache, slot_mapping, block_tables, context_lens, query_start_loc,
               num_heads, num_kv_heads, scale, sliding_window, softcap, outputs):
        # 9 inputs, 3 outputs: floats all one type (the pool too), metadata int64 (ONNX) or int32
        floats = "FP16|BF16|FP32"
        return [trtp.AutoTuneCombination(", ".join([floats] * 5 + [index] * 4 + [floats] * 3))
                for index in ("INT64", "INT32")]

    @trtp.aot_impl(PLUGIN)
    def _aot(query: trtp.TensorDesc, key: trtp.TensorDesc, value: trtp.TensorDesc, key_cache: trtp.TensorDesc,
             value_cache: trtp.TensorDesc, slot_mapping: trtp.TensorDesc, block_tables: trtp.TensorDesc,
             context_lens: trtp.TensorDesc, query_start_loc: trtp.TensorDesc, num_heads: int, num_kv_heads: int,
             scale: float, sliding_window: int, softcap: float, outputs: Tuple[trtp.TensorDesc], tactic: int):
        # attributes arrive as TensorRT's plugin fields deserialized them (floats from the ONNX float32s)
        variant = Variant(num_heads=int(num_heads), num_kv_heads=int(num_kv_heads), head_dim=_static(query, 2),
                          block_size=_static(key_cache, 2), scale=float(scale), dtype=_dtype(query),
                          kv_dtype=_dtype(key_cache), index_dtype=_dtype(slot_mapping),
                          sliding_window=int(sliding_window), softcap=float(softcap))
        compiled = _compiled(variant, _builder_capability())
        launch = trtp.KernelLaunchParams()
        launch.grid_x = query.shape_expr[0]  # one program per token
        launch.grid_y = int(num_kv_heads)  # and per KV head
        launch.block_x = compiled.threads
        launch.shared_mem = compiled.shared_mem
        scalars = trtp.SymIntExprs.from_tuple([trtp.SymInt32(e) for e in (
            context_lens.shape_expr[0], block_tables.shape_expr[1], key_cache.shape_expr[1])])  # fused: FUSED_SCALARS
        return compiled.name.encode(), compiled.cubin, launch, scalars


@functools.cache
def _compiled(variant: Variant, cc: int):
    """The fused kernel of `variant`, compiled once per build process: TensorRT asks every plugin node
    (every layer), for every type combination it tries, and a compile takes seconds."""
    return compile_kernel(KERNEL, variant, cc)


def _static(desc, dim: int) -> int:
    """A dimension the kernel is compiled for (head_dim, block_size): a build-time constant."""
    expr = desc.shape_expr[dim]
    if expr.is_fake or not expr.is_constant:
        raise KernelError(f"{PLUGIN}: dimension {dim} of a {len(desc.shape_expr)}-d input must be static")
    return expr.constant_value()


def _dtype(desc) -> str:
    name = desc.dtype.name
    if name not in _TRT_TYPES:
        raise KernelError(f"{PLUGIN}: no kernel for tensors of type {name}")
    return _TRT_TYPES[name]


def _builder_capability() -> int:
    """The compute capability of the GPU TensorRT builds on (a datacenter TensorRT plan is for it)."""
    from cuda.bindings import runtime as cudart  # cuda-python, the tensorrt extra

    err, device = cudart.cudaGetDevice()
    assert err == cudart.cudaError_t.cudaSuccess, err
    err, props = cudart.cudaGetDeviceProperties(device)
    assert err == cudart.cudaError_t.cudaSuccess, err
    return props.major * 10 + props.minor


def variants_from_onnx(model: "onnx.ModelProto", dtype: str, kv_dtype: str | None = None,
                       index_dtype: str = "int64") -> list[Variant]:
    """The distinct kernel variants of a paged plan's `ingot.PagedAttention` nodes, for a network of
    `dtype` floats (kv_dtype: the pool's, default dtype): attributes from each node, head_dim and
    block_size from the shape of its key_cache input [kv_heads, num_blocks, block_size, head_dim]."""
    from onnx import helper

    from ingot.plans.llm import DOMAIN, OP_TYPE

    shapes = {i.name: [d.dim_value or None for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    variants = []
    for node in model.graph.node:
        if node.domain != DOMAIN or node.op_type != OP_TYPE:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        shape = shapes.get(node.input[3])
        if shape is None or len(shape) != 4 or None in (shape[2], shape[3]):
            raise KernelError(f"{node.name}: its key_cache {node.input[3]!r} is not a graph input of static "
                              "block_size and head_dim")
        variants.append(Variant(num_heads=attrs["num_heads"], num_kv_heads=attrs["num_kv_heads"], head_dim=shape[3],
                                block_size=shape[2], scale=attrs["scale"], dtype=dtype, kv_dtype=kv_dtype or dtype,
                                index_dtype=index_dtype, sliding_window=attrs.get("sliding_window", 0),
                                softcap=attrs.get("softcap", 0.0)))
    return sorted(set(variants), key=lambda v: v.key)


def plugin_kernels(variants: Iterable[Variant], compute_capability: str | int) -> list["PluginKernel"]:
    """The manifest records of the kernels a plan built for `compute_capability` embeds: one per
    distinct variant, compiled here exactly as the plugin's aot_impl compiles it (same bytes, same sha256)."""
    from ingot.plans.manifest import PluginKernel

    cc = capability(compute_capability)
    unique = sorted(set(variants), key=lambda v: v.key)
    compiled = compile_kernels([Request(KERNEL, v, cc) for v in unique])
    return [PluginKernel(plugin=PLUGIN, kernel=c.name, variant=c.variant.key, compute_capability=c.compute_capability,
                         format="cubin", sha256=c.sha256) for c in compiled]
