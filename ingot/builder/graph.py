"""Graph clean-up with onnx-graphsurgeon, and the I/O specs the manifest records."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ingot.builder.spec import DimSpec
from ingot.plans import DynamicDim, TensorSpec

if TYPE_CHECKING:
    import onnx

_UNBOUNDED = 2**31 - 1
# Folding e.g. Transpose(tied embedding) would store a second copy of a large weight in
# the bundle; above this size ONNX Runtime folds it in memory at load instead.
FOLD_SIZE_LIMIT = 32 << 20
_DTYPES = {
    1: "float32", 10: "float16", 16: "bfloat16", 11: "float64", 7: "int64", 6: "int32",
    5: "int16", 3: "int8", 2: "uint8", 9: "bool",
}


def cleanup(model: onnx.ModelProto) -> onnx.ModelProto:
    """Fold constants, drop dead nodes, sort topologically.

    onnx-graphsurgeon, not onnxscript's fold_constants + onnx_ir passes: that folder (0.7.2)
    leaves `Slice(Shape(x))` of static dims in place (two more nodes in a BERT or dense Llama
    plan) and renames away the `Identity` nodes that name graph outputs (the lowering's
    present.L.key/value), which the cpu fusions count as `output_identity`."""
    import onnx_graphsurgeon as gs

    graph = gs.import_onnx(model)
    graph.fold_constants(size_threshold=FOLD_SIZE_LIMIT).cleanup().toposort()
    out = gs.export_onnx(graph)
    out.ir_version = model.ir_version
    return out


def io_specs(model: onnx.ModelProto, dims: dict[str, dict[int, DimSpec]]) -> tuple[list[TensorSpec], list[TensorSpec]]:
    ranges = {d.name: d for axes in dims.values() for d in axes.values()}
    initializers = {i.name for i in model.graph.initializer}

    def spec(value) -> TensorSpec:
        t = value.type.tensor_type
        shape = []
        for d in t.shape.dim:
            if d.HasField("dim_value"):
                shape.append(d.dim_value)
            elif d.dim_param in ranges:
                r = ranges[d.dim_param]
                shape.append(DynamicDim(name=r.name, min=r.min, max=r.max))
            else:
                shape.append(DynamicDim(name=d.dim_param or "?", min=0, max=_UNBOUNDED))
        if t.elem_type not in _DTYPES:
            from ingot.builder.errors import BuildError

            raise BuildError(f"tensor {value.name!r} has an unsupported element type ({t.elem_type})")
        return TensorSpec(name=value.name, dtype=_DTYPES[t.elem_type], shape=shape)

    inputs = [spec(v) for v in model.graph.input if v.name not in initializers]
    return inputs, [spec(v) for v in model.graph.output]


def apply_dim_ranges(dims: dict[str, dict[int, DimSpec]], overrides: dict[str, tuple[int, int]]) -> dict:
    """`--dim NAME=MIN:MAX` overrides, by dim name."""
    unknown = set(overrides) - {d.name for axes in dims.values() for d in axes.values()}
    if unknown:
        from ingot.builder.errors import BuildError

        known = sorted({d.name for axes in dims.values() for d in axes.values()})
        raise BuildError(f"--dim {', '.join(sorted(unknown))}: no such dynamic dim (the model has: {', '.join(known) or 'none'})")
    return {
        name: {a: DimSpec(d.name, *overrides[d.name]) if d.name in overrides else d for a, d in axes.items()}
        for name, axes in dims.items()
    }
