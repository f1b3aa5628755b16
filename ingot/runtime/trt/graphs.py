"""CUDA graphs of decode steps: which batch sizes are captured, and a decode batch padded to one.

A decode step (one new token per sequence, every one sampling) is a few small kernels per layer;
at small batch, launching them costs more than running them. A graph captured per batch size
replays the whole step in one launch. As in vLLM and TensorRT-LLM, a few sizes are captured (1, 2,
4, then every 8, and the largest batch) and a batch runs as the next captured size up, padded
with rows that write their K/V into the padding block (pool.py), which no sequence owns, and
whose logits are dropped. Prefill and mixed steps run without a graph.
"""

from __future__ import annotations

import numpy as np

from ingot.runtime.llm.batch import PackedBatch


def capture_sizes(max_batch: int) -> tuple[int, ...]:
    """Decode batch sizes to capture, up to `max_batch` (the plan's max_num_seqs, at most its
    max_num_tokens): 1, 2, 4, 8, 16, 24, ... and `max_batch` itself."""
    assert max_batch >= 1, max_batch
    sizes = [s for s in (1, 2, 4) if s <= max_batch] + list(range(8, max_batch + 1, 8))
    return tuple(sizes if sizes[-1] == max_batch else [*sizes, max_batch])


def is_decode(batch: PackedBatch) -> bool:
    """One new token per sequence, and every sequence's logits wanted, in order."""
    return bool((batch.new_lens == 1).all()) and np.array_equal(batch.logits_indices, np.arange(batch.num_seqs))


def graph_size(batch: PackedBatch, sizes: tuple[int, ...]) -> int | None:
    """The captured size a decode batch runs as; None for a batch that runs without a graph."""
    if not sizes or not is_decode(batch):
        return None
    return next((s for s in sizes if s >= batch.num_seqs), None)


def pad_decode(batch: PackedBatch, size: int, padding_block: int, block_size: int) -> PackedBatch:
    """`batch` (a decode) with `size - B` padding rows: token 0 at position 0 of a one-token sequence
    whose only block is the padding block, logits wanted (and dropped by the caller)."""
    assert is_decode(batch) and size >= batch.num_seqs, (batch.num_seqs, size)
    pad = size - batch.num_seqs
    tables = np.zeros((size, batch.block_tables.shape[1]), np.int64)
    tables[: batch.num_seqs] = batch.block_tables
    tables[batch.num_seqs:, 0] = padding_block
    rows = np.arange(size, dtype=np.int64)
    return PackedBatch(
        input_ids=np.concatenate([batch.input_ids, np.zeros(pad, np.int64)]),
        positions=np.concatenate([batch.positions, np.zeros(pad, np.int64)]),
        slot_mapping=np.concatenate([batch.slot_mapping, np.full(pad, padding_block * block_size, np.int64)]),
        logits_indices=rows,
        query_start_loc=np.arange(size + 1, dtype=np.int64),  # one token each
        context_lens=np.concatenate([batch.context_lens, np.ones(pad, np.int64)]),
        block_tables=tables,
        seq_ids=None if batch.seq_ids is None else np.concatenate([batch.seq_ids, np.full(pad, -1, np.int64)]),
    )


def padding_batch(size: int, width: int, padding_block: int, block_size: int) -> PackedBatch:
    """A decode of `size` padding rows only: what the buffers hold when a graph is captured, so the
    capture's warm-up run reads valid tables and writes only the padding block."""
    empty = PackedBatch(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64),
                        np.zeros(1, np.int64), np.zeros(0, np.int64), np.zeros((0, width), np.int64))
    return pad_decode(empty, size, padding_block, block_size)
