"""torch → ONNX with the dynamo exporter, dynamic dims named and bounded."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from ingot.builder.errors import ExportError
from ingot.builder.quiet import quiet
from ingot.builder.loaded import LoadedModel

if TYPE_CHECKING:
    import onnx

DEFAULT_OPSET = 21  # DequantizeLinear block_size (INT4) needs 21; 23 breaks ORT's RoPE at batch > 1
_NO_FUNCTION = re.compile(r"No ONNX function found for <OpOverload\(op='([^']+)'")
_NODE = re.compile(r"Error when translating node %(\w+)")


def export_onnx(loaded: LoadedModel, opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """The ONNX model of `loaded` (an .onnx source is loaded as it is)."""
    import onnx

    if loaded.onnx_path is not None:
        return onnx.load(str(loaded.onnx_path))
    _check_example(loaded)
    import torch
    from torch.export import Dim

    named: dict[str, Dim] = {}
    shapes = {
        name: {axis: named.setdefault(d.name, Dim(d.name, min=d.min, max=d.max)) for axis, d in axes.items()}
        for name, axes in loaded.dims.items()
    }
    shapes = {name: shapes.get(name) for name in loaded.example}
    with quiet() as log:
        try:
            program = torch.onnx.export(
                loaded.module, (), kwargs=loaded.example, dynamo=True, opset_version=opset,
                dynamic_shapes=shapes, input_names=list(loaded.example),
                output_names=loaded.output_names, verbose=False,
            )
        except Exception as e:
            raise ExportError(_describe(e, loaded, log.getvalue())) from e
    model = program.model_proto
    name_nodes(model, loaded.scope_prefix)
    return model


def name_nodes(model: onnx.ModelProto, strip: str = "") -> None:
    """Name each node after the torch module it came from: `model.layers.0.mlp.up_proj/MatMul`.

    The exporter records the module path in metadata that graph clean-up drops; node names
    survive, and quantization's --exclude patterns match them.
    """
    seen: dict[str, int] = {}
    for node in model.graph.node:
        scopes = next((p.value for p in node.metadata_props if p.key == "pkg.torch.onnx.name_scopes"), None)
        if not scopes:
            continue
        parts = [s.strip(" '\"") for s in scopes.strip("[]").split(",")]
        path = next((s for s in reversed(parts[:-1]) if s and not s.startswith("_empty_nn_module_stack")), "")
        path = path[len(strip):] if strip and path.startswith(strip) else path
        base = f"{path}/{node.op_type}" if path else node.op_type
        seen[base] = seen.get(base, 0) + 1
        node.name = base if seen[base] == 1 else f"{base}_{seen[base] - 1}"


def _check_example(loaded: LoadedModel) -> None:
    for name, axes in loaded.dims.items():
        if name not in loaded.example:
            raise ExportError(f"dynamic dims given for {name!r}, which is not an input ({', '.join(loaded.example)})")
        for axis, dim in axes.items():
            size = loaded.example[name].shape[axis]
            if size < 2:
                raise ExportError(
                    f"example input {name!r} has size {size} on dynamic dim {dim.name!r} (axis {axis}); "
                    "use at least 2 so the exporter keeps it dynamic"
                )


def _describe(e: BaseException, loaded: LoadedModel, log: str) -> str:
    """One line naming what failed: the unsupported op, the node, or the root cause."""
    chain, cur = [], e
    while cur is not None and len(chain) < 10:
        chain.append(cur)
        cur = cur.__cause__ or cur.__context__
    text = "\n".join(str(c) for c in chain) + "\n" + log
    what = f"export of {type(loaded.module).__name__} ({loaded.source.name}) failed"
    if m := _NO_FUNCTION.search(text):
        node = _NODE.search(text)
        where = f" (node {node[1]})" if node else ""
        return f"{what}: operator {m[1]} has no ONNX conversion{where}"
    root = chain[-1]
    first = (str(root).strip().splitlines() or [type(root).__name__])[0][:300]
    return f"{what}: {type(root).__name__}: {first}"
