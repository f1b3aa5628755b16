"""Weight bytes a plan reads per decode token, from its ONNX file alone.

    .venv/bin/python scripts/plan_bytes.py BUNDLE_OR_ONNX [...]        # one line each
    from plan_bytes import decode_bytes                                # scripts/ on sys.path
    decode_bytes("q/int4").total                                        # bytes

A decode step (one token per sequence) reads every weight of every MatMul once, whatever the
batch, but only one row of a table it indexes: the embedding table a `Gather` reads by token id,
the rotary cos/sin caches `RotaryEmbedding` or `GroupQueryAttention` read by position. So the
count is every initializer (and `Constant`) except those whose every use is such an indexed
read, each at the size ONNX Runtime holds it in at run time:

- float stored fp16 + `Cast` to float (half.py) is folded at load: 4 bytes a weight, not 2;
- a `Transpose` of a table (a tied LM head read by MatMul) is folded into its own copy: counted;
- INT4 and INT8 `DequantizeLinear` + MatMul fuse into MatMulNBits: the packed weights and their
  scales as stored; FP8 is dequantized at load (4 bytes a weight).

The KV cache a step reads is not a weight and is not counted. Reads only the ONNX proto (no
external data is loaded): the sizes come from each tensor's dims and type.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

# (op, input index) reads that take one row per token: not the whole tensor
INDEXED = {("Gather", 0), ("RotaryEmbedding", 2), ("RotaryEmbedding", 3),
           ("GroupQueryAttention", 7), ("GroupQueryAttention", 8)}
# ops ONNX Runtime folds into a constant at load when their input is one: follow them to the reader
FOLDED = {"Cast", "Transpose", "Reshape", "Unsqueeze", "Squeeze", "Identity"}


@dataclass(frozen=True)
class PlanBytes:
    """Weight bytes read per decode token, by what ONNX Runtime holds them as at run time."""

    total: int
    by_kind: dict[str, int] = field(default_factory=dict)  # "int4", "int8", "float", "scales", "other"
    indexed: int = 0  # bytes of tables read one row per token (embedding, rotary caches), not in total

    def __str__(self) -> str:
        parts = ", ".join(f"{k} {v / 1e6:.1f}" for k, v in sorted(self.by_kind.items(), key=lambda kv: -kv[1]) if v)
        return f"{self.total / 1e6:.1f} MB/token ({parts}; indexed tables {self.indexed / 1e6:.1f} MB not counted)"


def onnx_path(path: str | Path) -> Path:
    """The ONNX file of `path`: itself, or the one model.onnx under a bundle's targets/ (the CPU target's
    if there are several)."""
    path = Path(path)
    if path.is_file():
        return path
    found = sorted(path.glob("targets/*/model.onnx"), key=lambda p: not p.parent.name.startswith("cpu"))
    if not found:
        raise FileNotFoundError(f"{path}: no targets/*/model.onnx")
    return found[0]


def decode_bytes(path: str | Path) -> PlanBytes:
    """Weight bytes one decode step of the plan at `path` (a bundle folder or an .onnx file) reads."""
    import onnx

    model = onnx.load(str(onnx_path(path)), load_external_data=False)
    graph = model.graph
    uses: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for node in graph.node:
        for i, name in enumerate(node.input):
            uses.setdefault(name, []).append((node, i))
    tensors = list(graph.initializer) + [
        a.t for n in graph.node if n.op_type == "Constant" for a in n.attribute if a.name == "value" and a.type == a.TENSOR]
    # a Constant's tensor is named after its output
    names = [t.name for t in graph.initializer] + [n.output[0] for n in graph.node if n.op_type == "Constant"]
    total, indexed, by_kind = 0, 0, {}
    for name, tensor in zip(names, tensors):
        readers = _readers(name, uses)
        n = _numel(tensor)
        if readers and all((r.op_type, i) in INDEXED for r, i, _ in readers):
            indexed += n * _bits(tensor.data_type) // 8
            continue
        kind, nbytes = _runtime_size(tensor, n, readers)
        by_kind[kind] = by_kind.get(kind, 0) + nbytes
        total += nbytes
    return PlanBytes(total, by_kind, indexed)


def _readers(name: str, uses: dict) -> list[tuple[object, int, int | None]]:
    """(reader node, input index, float type it was cast to or None) of `name`, through FOLDED ops."""
    out, todo = [], [(name, None)]
    while todo:
        tensor, cast = todo.pop()
        for node, i in uses.get(tensor, []):
            if node.op_type in FOLDED and i == 0:
                to = next((a.i for a in node.attribute if a.name == "to"), None) if node.op_type == "Cast" else None
                todo.append((node.output[0], to if to is not None else cast))
            else:
                out.append((node, i, cast))
    return out


def _runtime_size(tensor, n: int, readers: list) -> tuple[str, int]:
    """(kind, bytes) of `tensor` as ONNX Runtime holds it at run time."""
    import onnx

    t = onnx.TensorProto
    if any(r.op_type == "DequantizeLinear" and i == 1 for r, i, _ in readers):
        return "scales", n * _bits(tensor.data_type) // 8
    if tensor.data_type in (t.INT4, t.UINT4):
        return "int4", (n + 1) // 2
    if tensor.data_type in (t.INT8, t.UINT8) and any(r.op_type == "DequantizeLinear" for r, _, _ in readers):
        return "int8", n
    if tensor.data_type in (t.FLOAT, t.FLOAT16, t.BFLOAT16, t.DOUBLE) or _is_fp8(tensor.data_type):
        cast = next((c for _, _, c in readers if c is not None), None)
        stored = _bits(cast if cast is not None else tensor.data_type) // 8
        return "float", n * max(stored, 4 if _is_fp8(tensor.data_type) else stored)
    return "other", n * _bits(tensor.data_type) // 8


def _numel(tensor) -> int:
    n = 1
    for d in tensor.dims:
        n *= d
    return n


def _bits(data_type: int) -> int:
    import onnx

    if data_type in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4):
        return 4
    return 8 * onnx.helper.tensor_dtype_to_np_dtype(data_type).itemsize if data_type != onnx.TensorProto.STRING else 0


def _is_fp8(data_type: int) -> bool:
    import onnx

    t = onnx.TensorProto
    return data_type in (t.FLOAT8E4M3FN, t.FLOAT8E4M3FNUZ, t.FLOAT8E5M2, t.FLOAT8E5M2FNUZ)


def main() -> None:
    for arg in sys.argv[1:] or sys.exit(__doc__):
        print(f"{arg}: {decode_bytes(arg)}")


if __name__ == "__main__":
    main()
