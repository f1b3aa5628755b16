"""CPU-target graph rewrites that ONNX Runtime's own optimizer misses, done once at build time.

Each rewrite is exact (same arithmetic, fewer nodes) and leaves the graph alone where its
pattern does not match, so the portable quantized ONNX (what a GPU target builds from) keeps
its standard form and only the cpu plan changes. All are onnxscript rewriter rules over
onnx_ir, applied in this order (later rules match what earlier ones made):

- RMSNorm (onnxscript's RmsNormFusion). `x * Reciprocal(Sqrt(ReduceMean(Pow(x, 2)) + eps)) * w`,
  as torch exports Llama's norm, is seven nodes that ORT's SimplifiedLayerNormFusion misses
  (ReduceMean's axes are an input from opset 18 on; rsqrt arrives as Sqrt + Reciprocal). They
  become one `SimplifiedLayerNormalization` (ORT's kernel, onnx domain).
- INT4 padding (fusions.int4.DropInt4Pad): the zero rows of a padded INT4 weight are sliced off
  and its `Pad` on the activation is dropped; MatMulNBits takes a ragged last block.
- Rotary embedding (fusions.rotary.RotaryFusion, with the positions bound by `max_positions`):
  rotate-half RoPE over [1, T, heads, dim], eight nodes per q and k, becomes com.microsoft
  `RotaryEmbedding` reading cos/sin tables [max_positions, dim/2].
- Skip norm (onnxscript's SkipRmsNormFusion, without bias): a residual `Add` [B, S, D] feeding a
  `SimplifiedLayerNormalization` becomes com.microsoft `SkipSimplifiedLayerNormalization`, whose
  fourth output is the sum (kept only where something reads it).
- Output identities: an `Identity` that only names a graph output (the lowering's
  `present.L.key/value`) is dropped by giving its input that name. (onnx_ir's
  IdentityEliminationPass would also merge two outputs of one tensor into one name.)
- Sibling INT4 projections (fusions.int4.MergeInt4Siblings): INT4 MatMuls reading one X
  (q/k/v, gate/up) become one MatMul over their weights concatenated along N and a Split.
- Dead nodes and initializers (onnx_ir's RemoveUnusedNodesPass): what the rewrites orphaned,
  such as the cos/sin subgraph.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnx
    import onnx_ir as ir
    from onnxscript.rewriter import pattern


def fuse_for_cpu(model: onnx.ModelProto, max_positions: int | None = None) -> tuple[onnx.ModelProto, dict[str, int]]:
    """`model` rewritten (a new model; `model` itself when nothing matched) and how many times
    each rewrite applied. `max_positions` (a causal LM's max_model_len) enables the rotary rewrite."""
    import onnx_ir as ir
    from onnx_ir.passes import common as passes
    from onnxscript.rewriter import pattern
    from onnxscript.rewriter.ort_fusions.rms_normalization import rms_normalization_rules
    from onnxscript.rewriter.ort_fusions.skip_normalization import SkipRmsNormFusion

    from ingot.builder.fusions.int4 import DropInt4Pad, MergeInt4Siblings
    from ingot.builder.fusions.rotary import RotaryFusion

    rewritten = ir.serde.deserialize_model(model)
    passes.ShapeInferencePass(strict_mode=False, data_prop=False)(rewritten)  # the skip-norm and rotary rules check shapes
    unpad, siblings = DropInt4Pad(), MergeInt4Siblings()

    def apply(*rules: pattern.RewriteRule, commute: bool = False) -> int:
        return pattern.RewriteRuleSet(list(rules), commute=commute).apply_to_model(rewritten)

    counts = {"rms_norm": apply(*rms_normalization_rules)}
    apply(_rule(unpad))
    counts["int4_unpad"] = len(unpad.pads)
    counts["rotary"] = apply(_rule(RotaryFusion(max_positions)), commute=True) if max_positions else 0
    counts["skip_norm"] = apply(SkipRmsNormFusion.rule("SkipRmsNorm", has_bias=False))
    counts["output_identity"] = apply(pattern.RewriteRule(_identity, _source, _names_an_output, name="OutputIdentity"))
    apply(_rule(siblings))
    counts["int4_siblings"] = siblings.groups
    if not any(counts.values()):
        return model, counts
    passes.RemoveUnusedNodesPass()(rewritten)
    _unname_unread_outputs(rewritten.graph, "SkipSimplifiedLayerNormalization")
    return ir.serde.serialize_model(rewritten), counts


def _rule(instance: pattern.RewriteRuleClassBase) -> pattern.RewriteRule:
    """What `type(instance).rule()` makes, from an instance this module keeps (to read its counts)."""
    from onnxscript.rewriter import pattern

    return pattern.RewriteRule(instance.pattern, instance.rewrite, instance.check, name=instance.name,
                               remove_nodes=instance.remove_nodes, graph_pre_visitor=instance.setup,
                               graph_post_visitor=instance.cleanup, as_function=instance.as_function)


def _identity(op, x):
    return op.Identity(x, _outputs=["y"])


def _names_an_output(context, x: ir.Value, y: ir.Value, **_) -> bool:
    """`y = Identity(x)` only names a graph output, and x can take that name (a node's output,
    not already a graph output)."""
    return y.is_graph_output() and not y.uses() and x.producer() is not None and not x.is_graph_output()


def _source(op, x, **_):
    return x  # the rewriter gives x the output's name


def _unname_unread_outputs(graph: ir.Graph, op_type: str) -> None:
    """Optional outputs of `op_type` nodes that nothing reads become empty (so ORT neither
    allocates nor writes them), as RemoveUnusedNodesPass does for ops with an ONNX schema."""
    for node in graph:
        if node.op_type != op_type:
            continue
        for value in node.outputs[1:]:
            if not value.uses() and not value.is_graph_output():
                value.name = ""
        while len(node.outputs) > 1 and not node.outputs[-1].name:
            node.resize_outputs(len(node.outputs) - 1)
