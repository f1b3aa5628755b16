"""The paged KV pool in device memory: how many blocks `--kv-cache-memory` buys, and where each
layer's caches sit in the pool's one allocation.

Each cache `key_cache.L` / `value_cache.L` is [kv_heads, blocks, block_size, head_dim] (the plan's
contract, ingot.plans.llm), in the dtype the plan declares for it. The pool holds one block more
than the scheduler hands out: the padding block, which the padded rows of a CUDA-graph decode
write into (graphs.py) and no sequence owns.
"""

from __future__ import annotations

from dataclasses import dataclass

from ingot.plans import llm as names
from ingot.plans.llm import LLMInfo, blocks_needed
from ingot.runtime.errors import RunError
from ingot.runtime.llm.kv_cache import format_bytes, parse_memory

# Without --kv-cache-memory: what max_num_seqs full-length sequences need, capped at this fraction of
# the GPU memory free once the plan is loaded (TensorRT-LLM's free_gpu_memory_fraction, 0.9).
DEFAULT_FRACTION = 0.9
ALIGN = 256  # bytes: cudaMalloc's alignment, which TensorRT expects of every tensor address
PADDING_BLOCKS = 1


def block_bytes(info: LLMInfo, itemsize: int) -> int:
    """Bytes of one block across every layer, keys and values."""
    return 2 * info.num_layers * info.num_kv_heads * info.kv_block_size * info.head_dim * itemsize


def pool_blocks(info: LLMInfo, itemsize: int, kv_cache_memory: int | float | str | None, free_bytes: int,
                gpu: str = "the GPU") -> int:
    """Blocks the scheduler may hand out within `kv_cache_memory`: bytes, a fraction (0, 1] of the
    GPU memory free now (`free_bytes`, measured with the plan loaded), or the CLI's text ("4GiB",
    "0.5"). The pool takes one padding block more. Fails if not even one max_model_len sequence
    fits, or if the pool would take more than is free."""
    if isinstance(kv_cache_memory, str):
        kv_cache_memory = parse_memory(kv_cache_memory, "--kv-cache-memory")
    per_block = block_bytes(info, itemsize)
    minimum = blocks_needed(info.max_model_len, info.kv_block_size)
    if kv_cache_memory is None:
        budget = min((info.max_num_seqs * minimum + PADDING_BLOCKS) * per_block, int(free_bytes * DEFAULT_FRACTION))
    elif isinstance(kv_cache_memory, float) and 0 < kv_cache_memory <= 1:
        budget = int(free_bytes * kv_cache_memory)
    else:
        budget = int(kv_cache_memory)
    blocks = budget // per_block - PADDING_BLOCKS
    if blocks < minimum:
        raise RunError(
            f"KV cache of {max(blocks, 0)} blocks ({format_bytes(max(blocks, 0) * per_block)}) holds fewer tokens than "
            f"max_model_len {info.max_model_len}; give --kv-cache-memory at least "
            f"{(minimum + PADDING_BLOCKS) * per_block} bytes")
    if (blocks + PADDING_BLOCKS) * per_block > free_bytes:
        raise RunError(f"--kv-cache-memory {format_bytes(budget)} is more than the {format_bytes(free_bytes)} free on "
                       f"{gpu} with the plan loaded; give less (e.g. 0.5 for half of it)")
    return blocks


@dataclass(frozen=True)
class PoolLayout:
    """Where each cache sits in the pool's allocation."""

    cache_shape: tuple[int, int, int, int]  # (kv_heads, blocks + padding, block_size, head_dim), every cache
    offsets: dict[str, int]  # cache name -> byte offset, ALIGN-aligned
    nbytes: int  # of the whole allocation

    @property
    def padding_block(self) -> int:
        """The id of the block no sequence owns (the last one)."""
        return self.cache_shape[1] - 1


def pool_layout(info: LLMInfo, num_blocks: int, itemsize: int) -> PoolLayout:
    """The caches of `num_blocks` usable blocks (plus the padding block), one after another, per layer k then v."""
    shape = (info.num_kv_heads, num_blocks + PADDING_BLOCKS, info.kv_block_size, info.head_dim)
    size = _aligned(shape[0] * shape[1] * shape[2] * shape[3] * itemsize)
    order = [f(layer) for layer in range(info.num_layers) for f in (names.key_cache, names.value_cache)]
    return PoolLayout(shape, {name: i * size for i, name in enumerate(order)}, len(order) * size)


def _aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN
