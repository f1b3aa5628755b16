"""The CPU plan's attention on a case: one `ingot.PagedAttention` node as the exporter writes it, lowered
by the cpu target (ingot.builder.lower_cpu: ONNX Runtime's GroupQueryAttention over windows) and run
the way the cpu runtime runs a plan (ingot.runtime.llm: plan calls, windows gathered from the pool
through the block tables, the new K/V written into the pool at their slots afterwards).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from ingot.plans import llm as names
from tests.kernels.reference import Case


def contract_graph(heads: int, kv_heads: int, head_dim: int, block_size: int, *, scale: float,
                   sliding_window: int = 0, softcap: float = 0.0, layers: int = 1) -> onnx.ModelProto:
    """query/key/value rows and the contract's metadata in, `layers` attention nodes (each over its
    own pool, the same rows), their outputs out."""
    f, i64 = TensorProto.FLOAT, TensorProto.INT64
    rows = [helper.make_tensor_value_info(n, f, ["num_tokens", h, head_dim])
            for n, h in (("query", heads), ("key", kv_heads), ("value", kv_heads))]
    pools = [helper.make_tensor_value_info(name(layer), f, [kv_heads, "num_blocks", block_size, head_dim])
             for layer in range(layers) for name in (names.key_cache, names.value_cache)]
    meta = [helper.make_tensor_value_info(n, i64, s) for n, s in (
        (names.SLOT_MAPPING, ["num_tokens"]), (names.BLOCK_TABLES, ["num_seqs", "max_blocks"]),
        (names.CONTEXT_LENS, ["num_seqs"]), (names.QUERY_START_LOC, ["num_seqs_plus_1"]))]
    nodes = [helper.make_node(
        names.OP_TYPE, ["query", "key", "value", names.key_cache(layer), names.value_cache(layer),
                        *(m.name for m in meta)], [f"out.{layer}"], name=f"attention_{layer}", domain=names.DOMAIN,
        num_heads=heads, num_kv_heads=kv_heads, scale=scale, sliding_window=sliding_window, softcap=softcap)
        for layer in range(layers)]
    outputs = [helper.make_tensor_value_info(f"out.{layer}", f, ["num_tokens", heads, head_dim])
               for layer in range(layers)]
    graph = helper.make_graph(nodes, "paged", rows + pools + meta, outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid(names.DOMAIN, 1)])


def run_cpu_plan(case: Case, *, scale: float, sliding_window: int = 0, softcap: float = 0.0):
    """(out [T, heads, dim], key_cache, value_cache after the step) from the lowered plan on ONNX Runtime."""
    import onnxruntime as ort

    from ingot.builder.lower_cpu import lower_paged_attention
    from ingot.plans.llm import LLMInfo
    from ingot.runtime.llm.batch import PackedBatch
    from ingot.runtime.llm.cpu_lowering import plan_feeds, run_calls, window_feeds
    from ingot.runtime.llm.kv_cache import KVCache

    tokens, heads, dim = case.query.shape
    kv_heads, blocks, block, _ = case.key_cache.shape
    model = lower_paged_attention(contract_graph(heads, kv_heads, dim, block, scale=scale,
                                                 sliding_window=sliding_window, softcap=softcap))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    info = LLMInfo(num_layers=1, num_heads=heads, num_kv_heads=kv_heads, head_dim=dim, vocab_size=heads * dim,
                   kv_block_size=block, max_num_tokens=max(tokens, 1), max_num_seqs=len(case.context_lens),
                   max_model_len=int(case.block_tables.shape[1] * block), sliding_window=sliding_window or None,
                   sliding_layers=[0] if sliding_window else [])
    kv = KVCache(info, blocks)
    kv.pool[0, 0], kv.pool[0, 1] = case.key_cache, case.value_cache
    seq = np.repeat(np.arange(len(case.context_lens)), np.diff(case.query_start_loc))
    batch = PackedBatch(  # input_ids carry each row's index, so a plan call's rows are known
        input_ids=np.arange(tokens), positions=np.arange(tokens) - case.query_start_loc[seq] + case.past_lens[seq],
        slot_mapping=case.slot_mapping, logits_indices=np.arange(tokens), query_start_loc=case.query_start_loc,
        context_lens=case.context_lens, block_tables=case.block_tables)
    presents = {names.present_key(0): np.zeros_like(case.key), names.present_value(0): np.zeros_like(case.value)}

    def call(sub: PackedBatch) -> np.ndarray:  # one plan call: its rows' outputs, flattened as "logits"
        rows = sub.input_ids
        feeds = {k: v for k, v in plan_feeds(sub).items() if k.startswith("attn.")}
        feeds |= {"query": case.query[rows], "key": case.key[rows], "value": case.value[rows]}
        feeds |= window_feeds(sub, info, kv.caches if sub.past_lens.any() else None)
        wanted = ["out.0", *presents]
        got = dict(zip(wanted, session.run(wanted, feeds), strict=True))
        for name in presents:
            presents[name][rows] = got[name]
        return got["out.0"].reshape(len(rows), heads * dim)

    out = run_calls(batch, call).reshape(tokens, heads, dim)
    kv.write(case.slot_mapping, presents)
    return out, kv.pool[0, 0].copy(), kv.pool[0, 1].copy()
