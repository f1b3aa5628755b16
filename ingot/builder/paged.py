"""Causal LMs as paged plans: one flat, ragged batch of tokens in, logits of chosen rows out,
each layer's attention one `ingot.PagedAttention` node reading a paged KV cache.

The plan's inputs (the "paged KV plugin" contract, vLLM's layout):
- `input_ids [T]`, `positions [T]`: the new tokens of every scheduled sequence, packed;
- `logits_indices [N]`: rows of the batch whose logits are returned (the last token of each
  sampling sequence; every row for perplexity);
- `slot_mapping [T]`: where each new token's K/V goes (block id * block size + offset);
- `block_tables [B, max_blocks]`, `context_lens [B]`, `query_start_loc [B + 1]`: per sequence;
- `key_cache.L`, `value_cache.L [kv_heads, num_blocks, block_size, head_dim]` per layer.

PagedAttention(query, key, value, key_cache, value_cache, slot_mapping, block_tables,
context_lens, query_start_loc) writes key/value at slot_mapping and attends over each
sequence's context (past from the cache, causal over its new tokens). Targets lower the node:
ingot.builder.lower_cpu for ONNX Runtime; a TensorRT plugin later.

Only the attention is replaced: embeddings, norms, projections, rotary embedding and MLP are
the Hugging Face modules themselves, so every family of ingot.builder.families shares this wrapper
(what differs from Llama is a small table there), and the exported node names
(model.layers.0.mlp.up_proj/MatMul) are those quantization matches.

Each node carries its layer's attention: `scale`, `sliding_window` (a query attends the last
sliding_window tokens, itself included; 0: the whole context) and `softcap` (tanh soft-capping of
the logits; 0: none). Tokens before a sliding layer's window are never read.
"""

from __future__ import annotations

import functools
import inspect
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    import onnx

    from ingot.plans.llm import LLMInfo

from ingot.plans.llm import DOMAIN, OP_TYPE  # noqa: E402
METADATA = ("slot_mapping", "block_tables", "context_lens", "query_start_loc")


@torch.library.custom_op("ingot::paged_attention", mutates_args=())
def paged_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
    slot_mapping: torch.Tensor, block_tables: torch.Tensor, context_lens: torch.Tensor, query_start_loc: torch.Tensor,
    num_heads: int, num_kv_heads: int, scale: float, sliding_window: int = 0, softcap: float = 0.0,
) -> torch.Tensor:
    """Reference semantics (eager, one sequence at a time): the new tokens of sequence b are
    rows query_start_loc[b]:query_start_loc[b+1]; its context is context_lens[b] tokens, the
    first (context - new) read from the cache through its block table."""
    del slot_mapping  # the write is a side effect of the plugin; here the new rows are used directly
    block_size, heads, kv_heads = key_cache.shape[2], num_heads, num_kv_heads
    flat_k = key_cache.reshape(kv_heads, -1, key.shape[2]).transpose(0, 1)  # [slots, kv, dim]
    flat_v = value_cache.reshape(kv_heads, -1, key.shape[2]).transpose(0, 1)
    out = torch.empty_like(query)
    for b in range(context_lens.shape[0]):
        start, stop = int(query_start_loc[b]), int(query_start_loc[b + 1])
        past = int(context_lens[b]) - (stop - start)
        pos = torch.arange(past)
        slots = block_tables[b, pos // block_size] * block_size + pos % block_size
        k = torch.cat([flat_k[slots], key[start:stop]]).repeat_interleave(heads // kv_heads, dim=1)
        v = torch.cat([flat_v[slots], value[start:stop]]).repeat_interleave(heads // kv_heads, dim=1)
        scores = torch.einsum("qhd,khd->hqk", query[start:stop], k) * scale
        if softcap:
            scores = torch.tanh(scores / softcap) * softcap
        kv_pos, q_pos = torch.arange(k.shape[0])[None, :], (past + torch.arange(stop - start))[:, None]
        hidden = kv_pos > q_pos
        if sliding_window:
            hidden |= kv_pos <= q_pos - sliding_window
        probs = scores.masked_fill(hidden, float("-inf")).softmax(-1)
        out[start:stop] = torch.einsum("hqk,khd->qhd", probs, v)
    return out


@paged_attention.register_fake
def _(query, key, value, key_cache, value_cache, slot_mapping, block_tables, context_lens, query_start_loc,
      num_heads, num_kv_heads, scale, sliding_window=0, softcap=0.0):
    return torch.empty_like(query)


def paged_attention_onnx(
    query, key, value, key_cache, value_cache, slot_mapping, block_tables, context_lens, query_start_loc,
    num_heads: int, num_kv_heads: int, scale: float, sliding_window: int = 0, softcap: float = 0.0,
):
    """The exporter's translation: one node in the `ingot` domain."""
    from onnxscript.values import Opset

    register_schema()
    return Opset(DOMAIN, 1).PagedAttention(
        query, key, value, key_cache, value_cache, slot_mapping, block_tables, context_lens, query_start_loc,
        num_heads=num_heads, num_kv_heads=num_kv_heads, scale=scale, sliding_window=sliding_window, softcap=softcap,
    )


def register_schema() -> None:
    """The contract as an ONNX operator schema (so onnx and onnxscript know the node)."""
    import onnx
    from onnx.defs import OpSchema

    if onnx.defs.has(OP_TYPE, DOMAIN):
        return
    f, i = "tensor(float)", "tensor(int64)"
    names = [("query", f), ("key", f), ("value", f), ("key_cache", f), ("value_cache", f),
             *((m, i) for m in METADATA)]
    onnx.defs.register_schema(OpSchema(
        OP_TYPE, DOMAIN, 1,
        doc=__doc__,
        inputs=[OpSchema.FormalParameter(n, t) for n, t in names],
        outputs=[OpSchema.FormalParameter("output", f)],
        attributes=[
            OpSchema.Attribute("num_heads", OpSchema.AttrType.INT, "query heads"),
            OpSchema.Attribute("num_kv_heads", OpSchema.AttrType.INT, "key/value heads (grouped-query attention)"),
            OpSchema.Attribute("scale", OpSchema.AttrType.FLOAT, "softmax scale"),
            OpSchema.Attribute("sliding_window", OpSchema.AttrType.INT,
                               "tokens a query attends, itself included (0: the whole context)", required=False),
            OpSchema.Attribute("softcap", OpSchema.AttrType.FLOAT,
                               "tanh soft-capping of the attention logits (0: none)", required=False),
        ],
    ))


class PagedCausalLM(torch.nn.Module):
    """A Hugging Face causal LM of a paged family driven as a packed batch over a paged KV cache."""

    def __init__(self, model):
        from ingot.builder.families import family, final_softcap, layer_attention

        super().__init__()
        self.model = model  # the *ForCausalLM: .model.{embed_tokens, layers, norm, rotary_emb}, .lm_head
        config = model.config
        self.family = family(model)
        self.heads = config.num_attention_heads
        self.kv_heads = getattr(config, "num_key_value_heads", None) or self.heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.attention = [layer_attention(model, i) for i in range(config.num_hidden_layers)]
        self.final_softcap = final_softcap(model)
        # dynamic NTK and longrope: the rotary module's forward without transformers' update of its
        # tables, which depends on the batch's largest position; below the positions where the
        # tables change, which bound max_model_len (causal_lm.rope_positions), they are the original ones
        self.fixed_rope = rope_type(config) in ("dynamic", "longrope")
        if self.fixed_rope:
            rotary = model.model.rotary_emb
            with torch.no_grad():
                rotary.inv_freq.copy_(rotary.original_inv_freq)

    def forward(self, input_ids, positions, logits_indices, slot_mapping, block_tables, context_lens,
                query_start_loc, key_caches: list[torch.Tensor], value_caches: list[torch.Tensor]):
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        inner, family = self.model.model, self.family
        hidden = inner.embed_tokens(input_ids)[None]  # (1, T, hidden): HF modules expect a batch dim
        rotary = self._rotary(hidden, positions)
        metadata = (slot_mapping, block_tables, context_lens, query_start_loc)
        for layer, key_cache, value_cache, (cos, sin), spec in zip(inner.layers, key_caches, value_caches, rotary,
                                                                    self.attention, strict=True):
            attn = layer.self_attn
            q, k, v = self._qkv(attn, layer.input_layernorm(hidden))
            if family.qk_norm:  # RMSNorm over each head's q and k, before rotary
                q, k = attn.q_norm(q), attn.k_norm(k)
            q, k = apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=2)
            y = torch.ops.ingot.paged_attention(q[0], k[0], v[0], key_cache, value_cache, *metadata, self.heads,
                                                self.kv_heads, spec.scale, spec.sliding_window, spec.softcap)
            y = attn.o_proj(y.reshape(1, -1, self.heads * self.head_dim))
            if family.sandwich_norms:
                hidden = hidden + layer.post_attention_layernorm(y)
                hidden = hidden + layer.post_feedforward_layernorm(layer.mlp(layer.pre_feedforward_layernorm(hidden)))
            else:
                hidden = hidden + y
                hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
        logits = self.model.lm_head(inner.norm(hidden[:, logits_indices]))[0]  # batch dim kept: a MatMul, as in HF
        if self.final_softcap:
            logits = torch.tanh(logits / self.final_softcap) * self.final_softcap
        return logits

    def _rotary(self, hidden, positions) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(cos, sin) per layer: one table for all, or one per layer type (Gemma 3's local and global bases)."""
        inner = self.model.model
        rotary = inner.rotary_emb
        if self.fixed_rope:
            rotary = functools.partial(inspect.unwrap(type(rotary).forward), rotary)
        if not self.family.rope_per_layer_type:
            return [rotary(hidden, positions[None])] * len(inner.layers)
        types = inner.config.layer_types
        tables = {t: rotary(hidden, positions[None], t) for t in sorted(set(types))}
        return [tables[t] for t in types]

    def _qkv(self, attn, x):
        """(1, T, heads, dim) q and (1, T, kv_heads, dim) k, v: three projections, or Phi-3's fused one."""
        if self.family.fused_qkv:
            q, k, v = attn.qkv_proj(x).split([self.heads * self.head_dim, self.kv_heads * self.head_dim,
                                              self.kv_heads * self.head_dim], dim=-1)
        else:
            q, k, v = attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)
        return (q.view(1, -1, self.heads, self.head_dim), k.view(1, -1, self.kv_heads, self.head_dim),
                v.view(1, -1, self.kv_heads, self.head_dim))


def example_inputs(model: PagedCausalLM, block_size: int, num_blocks: int = 8, seed: int = 0) -> dict:
    """Two sequences: 3 new tokens after block_size + 1 past ones (read from two blocks of the
    cache), and a prefill of 4; random caches."""
    g = torch.Generator().manual_seed(seed)
    vocab = model.model.config.vocab_size
    new, past = [3, 4], [block_size + 1, 0]
    tables = torch.tensor([[2, 0, 5], [1, 3, 4]])[:, : -(-(max(n + p for n, p in zip(new, past))) // block_size)]
    positions = torch.cat([torch.arange(p, p + n) for n, p in zip(new, past)])
    seq = torch.cat([torch.full((n,), b) for b, n in enumerate(new)])
    slots = tables[seq, positions // block_size] * block_size + positions % block_size
    shape = (model.kv_heads, num_blocks, block_size, model.head_dim)
    layers = len(model.model.model.layers)
    return {
        "input_ids": torch.randint(0, vocab, (sum(new),), generator=g),
        "positions": positions,
        "logits_indices": torch.tensor([2, 6]),
        "slot_mapping": slots,
        "block_tables": tables,
        "context_lens": torch.tensor([n + p for n, p in zip(new, past)]),
        "query_start_loc": torch.tensor([0, new[0], sum(new)]),
        "key_caches": [torch.randn(shape, generator=g) for _ in range(layers)],
        "value_caches": [torch.randn(shape, generator=g) for _ in range(layers)],
    }


def export_paged(hf_model, opset: int, block_size: int, scope_prefix: str = "model.") -> onnx.ModelProto:
    """The contract graph of `hf_model`: inputs/outputs named as ingot.plans.llm says."""
    import torch
    from torch.export import Dim

    from ingot.builder.errors import ExportError
    from ingot.builder.export import name_nodes
    from ingot.builder.quiet import quiet
    from ingot.plans import llm as names
    from ingot.quant.graph import GraphEditor

    wrapper = PagedCausalLM(hf_model).eval()
    example = example_inputs(wrapper, block_size)
    layers = len(example["key_caches"])
    tokens, seqs = Dim("num_tokens", min=1, max=1 << 16), Dim("num_seqs", min=1, max=1 << 12)
    pool = Dim("num_blocks", min=1, max=1 << 24)
    shapes = {
        "input_ids": {0: tokens}, "positions": {0: tokens}, "logits_indices": {0: Dim("num_logits", min=1, max=1 << 16)},
        "slot_mapping": {0: tokens}, "block_tables": {0: seqs, 1: Dim("max_blocks", min=1, max=1 << 16)},
        "context_lens": {0: seqs}, "query_start_loc": {0: seqs + 1},
        "key_caches": [{1: pool}] * layers, "value_caches": [{1: pool}] * layers,
    }
    register_schema()
    with quiet() as log, torch.no_grad():
        try:
            program = torch.onnx.export(
                wrapper, (), kwargs=example, dynamo=True, opset_version=opset, dynamic_shapes=shapes,
                custom_translation_table={torch.ops.ingot.paged_attention.default: paged_attention_onnx},
                verbose=False,
            )
        except Exception as e:
            raise ExportError(f"paged export of {type(hf_model).__name__} failed: {type(e).__name__}: "
                              f"{str(e).strip().splitlines()[0][:300] if str(e).strip() else log.getvalue()[-300:]}") from e
    model = program.model_proto
    renames = {f"key_caches_{i}": names.key_cache(i) for i in range(layers)}
    renames |= {f"value_caches_{i}": names.value_cache(i) for i in range(layers)}
    renames[model.graph.output[0].name] = names.LOGITS
    GraphEditor(model).rename(renames)
    name_nodes(model, scope_prefix)
    return model


def llm_info(hf_model, limits: dict[str, int], tokenizer) -> LLMInfo:
    """The manifest's `llm` section for `hf_model` built with `limits`."""
    from ingot.plans.llm import LLMInfo

    wrapper = PagedCausalLM(hf_model)
    config = hf_model.config
    eos = config.eos_token_id if config.eos_token_id is not None else getattr(tokenizer, "eos_token_id", None)
    eos_ids = sorted({eos} if isinstance(eos, int) else set(eos or []))
    bos = getattr(tokenizer, "bos_token_id", None)
    add_bos = bool(tokenizer is not None and bos is not None and tokenizer("a").input_ids[:1] == [bos])
    windows = {a.sliding_window for a in wrapper.attention} - {0}
    assert len(windows) <= 1, f"layers with different sliding windows: {sorted(windows)}"
    return LLMInfo(
        num_layers=config.num_hidden_layers, num_heads=wrapper.heads, num_kv_heads=wrapper.kv_heads,
        head_dim=wrapper.head_dim, vocab_size=config.vocab_size, eos_token_ids=eos_ids, bos_token_id=bos,
        add_bos=add_bos, rope_scaling=rope_scaling(config), sliding_window=next(iter(windows), None),
        sliding_layers=[i for i, a in enumerate(wrapper.attention) if a.sliding_window], **limits,
    )


def rope_parameters(config) -> dict:
    """A config's rope settings (transformers' `rope_parameters`, older `rope_scaling`), {} if none."""
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if isinstance(rope, dict) and isinstance(rope.get("full_attention"), dict):
        rope = rope["full_attention"]  # Gemma 3: per layer type; a checkpoint's scaling goes to the full layers
    return rope if isinstance(rope, dict) else {}


def rope_type(config) -> str:
    rope = rope_parameters(config)
    return rope.get("rope_type", rope.get("type", "default"))


def rope_scaling(config) -> dict | None:
    """The rope scaling a config asks for, as recorded in the manifest (None: plain rope)."""
    if rope_type(config) == "default":
        return None
    return {k: v for k, v in rope_parameters(config).items() if isinstance(v, int | float | str) and k != "rope_theta"}
