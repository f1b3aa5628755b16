"""A small ONNX graph editor for the passes: add initializers, insert nodes, rewire inputs.

Edits are collected and applied by `finish()`: each inserted node goes right before the
node it was attached to, so the graph stays topologically sorted. A replaced initializer
is dropped once nothing reads it.

The builder's hand-written edits use it too (ingot.builder.lower_cpu, paged): a node replaced
by several at `finish()`, graph inputs and outputs added or removed, tensors renamed, opsets set.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ingot.quant.errors import QuantError

MIN_IR_VERSION = 10  # INT4 tensors need IR 10 (FLOAT8 needs 9)


def prepared_copy(model: onnx.ModelProto, min_opset: int) -> onnx.ModelProto:
    """A copy of `model` whose default-domain opset is at least `min_opset`."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    opset = next((o for o in out.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None:
        raise QuantError("the model imports no ai.onnx opset; cannot add QuantizeLinear/DequantizeLinear")
    if opset.version < min_opset:
        out = _upgrade(out, opset.version, min_opset)
    out.ir_version = max(out.ir_version, MIN_IR_VERSION)
    return out


def _upgrade(model: onnx.ModelProto, have: int, want: int) -> onnx.ModelProto:
    from onnx import version_converter

    try:
        return version_converter.convert_version(model, want)
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise QuantError(
            f"the model uses ONNX opset {have}, quantization needs {want} and the upgrade failed ({first}); "
            f"export with opset >= {want}"
        ) from None


class GraphEditor:
    def __init__(self, model: onnx.ModelProto):
        self.graph = model.graph
        self.inits = {i.name: i for i in self.graph.initializer}
        self._producer = {o: i for i, n in enumerate(self.graph.node) for o in n.output}
        self._consumers: dict[str, list[int]] = {}
        for i, node in enumerate(self.graph.node):
            for name in dict.fromkeys(node.input):
                self._consumers.setdefault(name, []).append(i)
        self._names = set(self.inits) | set(self._producer) | set(self._consumers)
        self._names |= {n.name for n in self.graph.node} | {v.name for v in self.graph.input}
        self._before: dict[int, list[onnx.NodeProto]] = {}
        self._retired: list[str] = []
        self._model = model
        self._replaced: dict[int, list[onnx.NodeProto]] = {}

    def node(self, index: int) -> onnx.NodeProto:
        return self.graph.node[index]

    def producer(self, tensor: str) -> int | None:
        return self._producer.get(tensor)

    def consumers(self, tensor: str) -> list[int]:
        return self._consumers.get(tensor, [])

    def is_output(self, tensor: str) -> bool:
        return any(o.name == tensor for o in self.graph.output)

    def array(self, name: str) -> np.ndarray:
        return numpy_helper.to_array(self.inits[name])

    def dtype(self, name: str) -> np.dtype:
        return np.dtype(helper.tensor_dtype_to_np_dtype(self.inits[name].data_type))

    def unique(self, base: str) -> str:
        name, i = base, 1
        while name in self._names:
            name, i = f"{base}_{i}", i + 1
        self._names.add(name)
        return name

    def set_array(self, name: str, value: np.ndarray) -> None:
        """Replace initializer `name`'s value in place (same name, shape and dtype): for folds
        into a weight that later passes still read by name."""
        old = self.array(name)
        assert value.shape == old.shape and value.dtype == old.dtype, (name, value.shape, old.shape)
        self.inits[name].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(value), name))

    def add_initializer(self, base: str, value: np.ndarray) -> str:
        name = self.unique(base)
        tensor = numpy_helper.from_array(np.asarray(value), name)
        self.graph.initializer.append(tensor)
        self.inits[name] = tensor
        return name

    def insert(self, before: int, op: str, inputs: list[str], output: str, name: str, **attrs) -> str:
        """Add `op(inputs) -> output` right before node `before`; returns the output name."""
        out = self.unique(output)
        node = helper.make_node(op, inputs, [out], name=self.unique(name), **attrs)
        self._before.setdefault(before, []).append(node)
        return out

    def dequantize_weight(self, weight: str, q: np.ndarray, scale: np.ndarray, tag: str, readers: list[int],
                          layer: str, **attrs) -> None:
        """Replace initializer `weight` as input 1 of the nodes `readers` (the first one first) by
        `DequantizeLinear(q, scale, **attrs)`, inserted before the first and named after its
        layer `layer`; q becomes `{weight}_{tag}`, and `weight` is dropped once nothing reads it."""
        dq = self.insert(
            readers[0], "DequantizeLinear",
            [self.add_initializer(f"{weight}_{tag}", q), self.add_initializer(f"{weight}_scale", scale)],
            f"{weight}_dq", f"{scope(layer)}/weight_DequantizeLinear", **attrs,
        )
        for index in readers:
            self.set_input(index, 1, dq)
        self.retire(weight)

    def set_input(self, index: int, slot: int, tensor: str) -> None:
        self.graph.node[index].input[slot] = tensor

    def retire(self, initializer: str) -> None:
        """Drop `initializer` at `finish()` if no node reads it any more."""
        self._retired.append(initializer)

    def finish(self) -> None:
        nodes = []
        for i, node in enumerate(self.graph.node):
            nodes.extend(self._before.get(i, []))
            if i in self._replaced:
                nodes.extend(self._replaced[i])
            else:
                nodes.append(_copy(node))  # the originals are freed below
        del self.graph.node[:]
        self.graph.node.extend(nodes)
        read = _reads(self.graph) | {o.name for o in self.graph.output}
        dead = {name for name in self._retired if name not in read}
        for field in (self.graph.initializer, self.graph.input):  # in place: weights are not copied
            for i in reversed([i for i, t in enumerate(field) if t.name in dead]):
                del field[i]

    # --- structure: whole nodes, graph inputs and outputs, names, opsets ---

    def replace(self, index: int, nodes: list[onnx.NodeProto]) -> None:
        """Put `nodes` (made by the caller, names and all) where node `index` is, at `finish()`."""
        assert index not in self._replaced, f"node {index} is already replaced"
        self._replaced[index] = list(nodes)
        for node in nodes:
            self._names.update([node.name, *node.output])

    def graph_input(self, name: str) -> onnx.ValueInfoProto:
        return next(v for v in self.graph.input if v.name == name)

    def add_input(self, value: onnx.ValueInfoProto) -> None:
        self.graph.input.append(value)
        self._names.add(value.name)

    def add_output(self, value: onnx.ValueInfoProto) -> None:
        self.graph.output.append(value)

    def add_value_info(self, value: onnx.ValueInfoProto) -> None:
        """Record a tensor's type and shape (for one made by an op that ONNX cannot infer)."""
        self.graph.value_info.append(value)

    def remove_inputs(self, names: set[str]) -> None:
        kept = [v for v in self.graph.input if v.name not in names]
        del self.graph.input[:]
        self.graph.input.extend(kept)

    def rename(self, renames: dict[str, str]) -> None:
        """Rename tensors everywhere they appear: graph inputs and outputs, node inputs and
        outputs, initializers, value_info (now, not at `finish()`)."""
        def new(name: str) -> str:
            return renames.get(name, name)

        for value in [*self.graph.input, *self.graph.output, *self.graph.value_info, *self.graph.initializer]:
            value.name = new(value.name)
        for node in self.graph.node:
            node.input[:] = [new(x) for x in node.input]
            node.output[:] = [new(x) for x in node.output]
        self.inits = {new(k): v for k, v in self.inits.items()}
        self._producer = {new(k): v for k, v in self._producer.items()}
        self._consumers = {new(k): v for k, v in self._consumers.items()}
        self._names |= set(renames.values())

    def set_opset(self, domain: str, version: int | None) -> None:
        """Import `domain` at `version` (replacing any other version), or drop it when None."""
        kept = [o for o in self._model.opset_import if o.domain != domain]
        del self._model.opset_import[:]
        self._model.opset_import.extend(kept)
        if version is not None:
            self._model.opset_import.append(helper.make_opsetid(domain, version))


def _copy(node: onnx.NodeProto) -> onnx.NodeProto:
    out = onnx.NodeProto()
    out.CopyFrom(node)
    return out


def _reads(graph: onnx.GraphProto) -> set[str]:
    """Every tensor name a node reads, subgraphs (If, Loop) included."""
    names = set()
    for node in graph.node:
        names.update(node.input)
        for attr in node.attribute:
            for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                names |= _reads(sub)
    return names


def scope(name: str) -> str:
    """`model.layers.0.mlp.up_proj/MatMul` → `model.layers.0.mlp.up_proj` (names new nodes)."""
    return name.rsplit("/", 1)[0] if "/" in name else name
