"""Half-precision storage of the weights a quantized plan keeps in float.

A quantized plan still holds float weights: the embedding table (a Gather, never quantized),
the LM head when it is excluded, and the layers left in float (exclusions, massive
activations, sensitivity). Stored as fp16 initializers, each behind one `Cast` to float:

    W16 [K, N] float16 ── Cast(to=FLOAT) ──▶ W   (every reader of W unchanged)

ONNX Runtime folds the Cast at load (the session holds W in fp32, as before) and TensorRT
builds it as a strongly typed cast, so only the bundle shrinks: SmolLM2-135M's tied 49152 x 576
embedding is 113 MB in fp32, 57 MB in fp16. fp16 keeps 11 bits of mantissa, a relative error
of at most 2^-11 per weight, far below INT4's or FP8's; a weight beyond fp16's range
(|w| > 65504) stays fp32.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# Readers whose float constant input is a weight table: MatMul/Gemm (either side, which
# covers a transposed tied head only through its Transpose), Gather's data, Conv's kernel
READERS = {"MatMul": (0, 1), "Gemm": (0, 1), "Gather": (0,), "Conv": (1,), "Transpose": (0,)}
MIN_ELEMENTS = 4096  # norms, biases and small tables stay fp32 (they weigh nothing)
FP16_MAX = float(np.finfo(np.float16).max)


def halve_float_weights(model: onnx.ModelProto) -> tuple[list[str], int]:
    """Store `model`'s float32 weight tables (in place) as fp16 + Cast; returns their names
    and the bytes saved."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    names = _weight_tables(graph, inits)
    casts, saved = [], 0
    for name in names:
        w = numpy_helper.to_array(inits[name])
        if not np.all(np.isfinite(w)) or float(np.abs(w).max(initial=0.0)) > FP16_MAX:
            continue
        half = f"{name}_fp16"
        inits[name].CopyFrom(numpy_helper.from_array(w.astype(np.float16), half))
        casts.append(helper.make_node("Cast", [half], [name], name=f"{name}_Cast", to=TensorProto.FLOAT))
        saved += w.nbytes // 2
    for i, node in enumerate(casts):  # first in the graph: a Cast reads only its initializer
        graph.node.insert(i, node)
    return [c.output[0] for c in casts], saved


def _weight_tables(graph: onnx.GraphProto, inits: dict[str, onnx.TensorProto]) -> list[str]:
    """float32 initializers of at least MIN_ELEMENTS read as weights by READERS (and not
    graph inputs or outputs)."""
    outputs = {o.name for o in graph.output} | {i.name for i in graph.input}  # IR < 4 lists initializers as inputs
    names = []
    for node in graph.node:
        for slot in READERS.get(node.op_type, ()):
            name = node.input[slot] if slot < len(node.input) else ""
            t = inits.get(name)
            if t is None or t.data_type != TensorProto.FLOAT or name in outputs or name in names:
                continue
            if int(np.prod(t.dims)) >= MIN_ELEMENTS and len(t.dims) >= 2:
                names.append(name)
    return names
