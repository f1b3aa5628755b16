"""The packed batch as the plan's input tensors: host arrays in the plan's dtypes, and their shapes.

The plan (ingot.builder.paged, ingot.plans.llm) takes, for T new tokens of B sequences and N
logits rows: input_ids, positions, slot_mapping [T]; logits_indices [N]; block_tables [B, W];
context_lens [B]; query_start_loc [B + 1]; key_cache.L / value_cache.L [kv_heads, blocks,
block_size, head_dim]; and returns logits [N, vocab]. W is fixed (the plan's widest block table),
so every call binds tables of one width and a captured graph's shapes hold for any batch.
"""

from __future__ import annotations

import numpy as np

from ingot.plans import llm as names
from ingot.plans.llm import LLMInfo, blocks_needed
from ingot.runtime.llm.batch import PackedBatch, pack

STEP_INPUTS = (names.INPUT_IDS, names.POSITIONS, names.LOGITS_INDICES, names.SLOT_MAPPING, names.BLOCK_TABLES,
               names.CONTEXT_LENS, names.QUERY_START_LOC)


def step_arrays(batch: PackedBatch, width: int, dtypes: dict[str, np.dtype] | None = None) -> dict[str, np.ndarray]:
    """The step inputs of `batch`, C-contiguous, block tables padded with 0 to `width` columns,
    each in its dtype of `dtypes` (default int64, as packed)."""
    assert batch.block_tables.shape[1] <= width, (batch.block_tables.shape, width)
    tables = np.zeros((batch.num_seqs, width), np.int64)
    tables[:, : batch.block_tables.shape[1]] = batch.block_tables
    arrays = {
        names.INPUT_IDS: batch.input_ids, names.POSITIONS: batch.positions,
        names.LOGITS_INDICES: batch.logits_indices, names.SLOT_MAPPING: batch.slot_mapping,
        names.BLOCK_TABLES: tables, names.CONTEXT_LENS: batch.context_lens,
        names.QUERY_START_LOC: batch.query_start_loc,
    }
    dtypes = dtypes or {}
    return {name: np.ascontiguousarray(a, dtypes.get(name, np.int64)) for name, a in arrays.items()}


def cache_names(info: LLMInfo) -> list[str]:
    return [f(layer) for layer in range(info.num_layers) for f in (names.key_cache, names.value_cache)]


def input_shapes(arrays: dict[str, np.ndarray], cache_shape: tuple[int, ...], info: LLMInfo) -> dict[str, tuple]:
    """Every input's shape for a call of `arrays` (step_arrays) over a pool of caches `cache_shape`."""
    return {name: tuple(a.shape) for name, a in arrays.items()} | {name: cache_shape for name in cache_names(info)}


def arena_layout(shapes: dict[str, tuple[int, ...]], dtypes: dict[str, np.dtype],
                 align: int = 256) -> tuple[dict[str, int], int]:
    """Byte offsets of each tensor of `shapes` in one buffer (each `align`-aligned, as TensorRT expects
    of tensor addresses), and the buffer's size."""
    offsets, end = {}, 0
    for name, shape in shapes.items():
        offsets[name] = end
        end += -(-int(np.prod(shape)) * np.dtype(dtypes[name]).itemsize // align) * align
    return offsets, end


def prefill_chunks(ids: np.ndarray, chunk: int, block_size: int) -> list[PackedBatch]:
    """One sequence of `ids` prefilled from scratch in calls of at most `chunk` tokens, every
    token's logits wanted; its blocks are the pool's first ones (0, 1, ...), a chunk reading the
    past the chunks before it wrote."""
    batches = []
    for start in range(0, len(ids), chunk):
        stop = min(len(ids), start + chunk)
        blocks = list(range(blocks_needed(stop, block_size)))
        batches.append(pack([ids[start:stop].tolist()], [start], [blocks], block_size, [range(stop - start)]))
    return batches
