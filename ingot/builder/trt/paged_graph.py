"""The graph a TensorRT target compiles for a paged LLM: the plan's graph with each attention
lowering put back to the contract's `ingot.PagedAttention` node.

The build lowers attention for the cpu targets before it cleans and quantizes the graph (the
calibration runs on ONNX Runtime, which has no PagedAttention), so the quantized graph holds
the cpu lowering. ingot.builder.lower_cpu names every node it adds `<attention node>/...`, reads
the node's query/key/value and writes its output under the node's own output name; so putting
the node back is local and exact:

    plan graph (lowered, cleaned, quantized or not)      contract graph (the export)
    <node>/q_seqs ... <node>/rows -> out                  PagedAttention(q, k, v, pool, meta) -> out

Everything else (projections, norms, rotary, MLP, the Q/DQ of FP8/INT4) is the plan graph's, so
an sm target compiles the weights the cpu targets were verified with. Pure: no TensorRT.
"""

from __future__ import annotations

import onnx

from ingot.plans import llm as names
from ingot.plans.llm import DOMAIN, OP_TYPE

LOWERING_DOMAIN = "com.microsoft"  # GroupQueryAttention


def attention_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.domain == DOMAIN and n.op_type == OP_TYPE]


def unlowered(plan: onnx.ModelProto, contract: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `plan` with the cpu lowering of each of `contract`'s attention nodes replaced by
    that node, and the contract's inputs (metadata, KV pool) in place of the lowering's."""
    attention = attention_nodes(contract)
    assert attention, "the contract graph has no PagedAttention node"
    out = onnx.ModelProto()
    out.CopyFrom(plan)
    graph = out.graph
    nodes = _put_back(list(graph.node), attention)
    del graph.node[:]
    graph.node.extend(nodes)
    _swap_io(graph, contract.graph)
    _drop_unused(graph, prefixes=[_prefix(n, i) for i, n in enumerate(attention)])
    _set_opsets(out)
    return out


def _prefix(node: onnx.NodeProto, layer: int) -> str:
    """The name prefix of the nodes lower_cpu made of `node` (as ingot.builder.lower_cpu._lower)."""
    return f"{node.name or f'attention_{layer}'}/"


def _put_back(nodes: list[onnx.NodeProto], attention: list[onnx.NodeProto]) -> list[onnx.NodeProto]:
    """`nodes` without the lowering's, each attention node where its output's producer was (its
    inputs are made before the lowering's first node, its readers come after that producer)."""
    prefixes = [_prefix(n, i) for i, n in enumerate(attention)]
    kept, placed = [], set()
    for node in nodes:
        owner = next((i for i, p in enumerate(prefixes) if node.name.startswith(p)), None)
        if owner is None:
            kept.append(node)
        elif attention[owner].output[0] in node.output:
            restored = onnx.NodeProto()
            restored.CopyFrom(attention[owner])
            kept.append(restored)
            placed.add(owner)
    missing = [attention[i].name for i in range(len(attention)) if i not in placed]
    assert not missing, f"no cpu lowering of {missing} in the plan graph"
    return kept


def _swap_io(graph: onnx.GraphProto, contract: onnx.GraphProto) -> None:
    """The contract's inputs, in its order; the plan's outputs less the lowering's."""
    have = {v.name: v for v in graph.input}
    inputs = [have.get(v.name, v) for v in contract.input]
    lowering = [v.name for v in graph.input if v.name not in {i.name for i in inputs}]
    assert all(names.is_window(n) or n.startswith("attn.") for n in lowering), lowering
    outputs = [v for v in graph.output if v.name == names.LOGITS]
    assert len(outputs) == 1, [v.name for v in graph.output]
    copies = [onnx.ValueInfoProto() for _ in inputs]
    for copy, v in zip(copies, inputs):
        copy.CopyFrom(v)
    logits = onnx.ValueInfoProto()
    logits.CopyFrom(outputs[0])
    del graph.input[:], graph.output[:]
    graph.input.extend(copies)
    graph.output.append(logits)


def _drop_unused(graph: onnx.GraphProto, prefixes: list[str]) -> None:
    """The lowering's initializers (its Reshape shapes) and value_info of tensors no node makes now."""
    read = {i for n in graph.node for i in n.input}
    made = {o for n in graph.node for o in n.output}
    keep = [t for t in graph.initializer if t.name in read or not t.name.startswith(tuple(prefixes))]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    info = [v for v in graph.value_info if v.name in made]
    del graph.value_info[:]
    graph.value_info.extend(info)


def _set_opsets(model: onnx.ModelProto) -> None:
    used = {n.domain for n in model.graph.node}
    keep = [o for o in model.opset_import if o.domain != LOWERING_DOMAIN or LOWERING_DOMAIN in used]
    if DOMAIN not in {o.domain for o in keep}:
        keep.append(onnx.helper.make_opsetid(DOMAIN, 1))
    del model.opset_import[:]
    model.opset_import.extend(keep)
