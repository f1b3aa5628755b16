"""The manifest's `llm` section: what a paged causal-LM plan is and the limits it was built for.

Shared by the builder (which writes it) and the runtime (which obeys it), so the names of
the plan's inputs and outputs live here too.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

# The contract's attention node.
DOMAIN, OP_TYPE = "ingot", "PagedAttention"
# Graph inputs of every paged plan (packed batch of T tokens, N logits rows).
INPUT_IDS, POSITIONS, LOGITS_INDICES = "input_ids", "positions", "logits_indices"
LOGITS = "logits"
# The contract's attention metadata; a cpu lowering replaces it with the ATTN_* inputs.
SLOT_MAPPING, BLOCK_TABLES, CONTEXT_LENS, QUERY_START_LOC = "slot_mapping", "block_tables", "context_lens", "query_start_loc"
# KV caches are [kv_heads, num_blocks, block_size, head_dim] per layer: a block of one head is contiguous,
# so the past of a sequence is gathered a whole block of one head at a time.
# cpu lowering "gqa-v3" (ONNX Runtime's GroupQueryAttention over windows the runtime fills from the
# pool): per plan call, computed by the runtime. One call holds sequences that all add S new tokens,
# and only one sequence when S > 1 and it has a past (the kernel's limits): ingot.runtime.llm.cpu_lowering.
CPU_LOWERING = "gqa-v3"
ATTN_QUERY_SHAPE = "attn.query_shape"  # [3] int64: [B, S, -1], the packed rows as B sequences of S tokens
ATTN_SEQLENS_K = "attn.seqlens_k"  # [B] int32: past + new - 1 per sequence
ATTN_TOTAL_LEN = "attn.total_len"  # [] int32: max(past + new)


def blocks_needed(num_tokens: int, block_size: int) -> int:
    """KV blocks that hold `num_tokens` slots."""
    return -(-num_tokens // block_size)


def lowering_problem(build_options: dict) -> str | None:
    """Why a paged plan's cpu target, built with `build_options`, does not fit this version's
    runtime (its attention was lowered another way), or None when it does."""
    lowering = build_options.get("attention")
    if lowering == CPU_LOWERING:
        return None
    return f"its cpu attention is lowered as {lowering!r}, and this version of ingot runs {CPU_LOWERING!r}"


def key_cache(layer: int) -> str:
    return f"key_cache.{layer}"


def value_cache(layer: int) -> str:
    return f"value_cache.{layer}"


def is_cache(name: str) -> bool:
    return name.startswith(("key_cache.", "value_cache."))


def present_key(layer: int) -> str:
    """cpu lowering output: the new tokens' keys [T, kv_heads, head_dim], written by the runtime."""
    return f"present.{layer}.key"


def present_value(layer: int) -> str:
    return f"present.{layer}.value"


# cpu lowering, per layer and k|v: the input `window` [B, kv_heads, W, head_dim] holds each sequence's
# past (rows 0..past-1; W >= past + S), and the output `window_present` is the kernel's present, of
# the same shape. The runtime binds both to one buffer, so the kernel appends the new rows in place
# instead of copying the past (ONNX Runtime's past/present share-buffer mode); a plain run of the
# plan never fetches the present.
def window(layer: int, kv: str) -> str:
    return f"window.{layer}.{kv}"


def window_present(layer: int, kv: str) -> str:
    return f"window.{layer}.{kv}.present"


def is_window(name: str) -> bool:
    return name.startswith("window.")


class LLMInfo(BaseModel):
    """A paged causal-LM plan: model shape, KV layout and the build limits the runtime obeys."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    layout: str = Field("paged-v1", description="plan contract: packed tokens + ingot.PagedAttention")
    num_layers: int = Field(ge=1)
    num_heads: int = Field(ge=1)
    num_kv_heads: int = Field(ge=1)
    head_dim: int = Field(ge=1)
    vocab_size: int = Field(ge=1)
    kv_dtype: Literal["float32", "float16", "bfloat16", "float8_e4m3fn"] = "float32"
    kv_block_size: int = Field(ge=1, description="tokens per KV block")
    max_num_tokens: int = Field(ge=1, description="tokens per step (the token budget)")
    max_num_seqs: int = Field(ge=1, description="sequences per step")
    max_model_len: int = Field(ge=1, description="prompt + output tokens of one sequence")
    eos_token_ids: list[int] = Field(default_factory=list)
    bos_token_id: int | None = None
    add_bos: bool = False
    rope_scaling: dict[str, float | int | str] | None = Field(
        None, description="the checkpoint's rope scaling (linear, llama3, yarn), applied in the plan's rotary tables")
    sliding_window: int | None = Field(
        None, ge=1, description="tokens a sliding-window layer attends, the query included (Gemma 2/3, Mistral)")
    sliding_layers: list[int] = Field(
        default_factory=list, description="the layers that attend only the last sliding_window tokens")

    def layer_window(self, layer: int) -> int | None:
        """The tokens layer `layer` attends (None: the whole context)."""
        return self.sliding_window if layer in self.sliding_layers else None

    @property
    def kv_bytes_per_token(self) -> int:
        itemsize = {"float32": 4, "float16": 2, "bfloat16": 2, "float8_e4m3fn": 1}[self.kv_dtype]
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * itemsize

    @property
    def kv_bytes_per_block(self) -> int:
        return self.kv_bytes_per_token * self.kv_block_size
