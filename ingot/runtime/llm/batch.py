"""`PackedBatch`: a step's new tokens as one flat, ragged batch (vLLM's layout), in numpy.

T rows: every scheduled sequence's new tokens, one after another. B sequences: where each
starts (query_start_loc), how long its context is, and its block table. This is the paged
plan's contract (ingot.plans.llm); a backend lowers it to its own calls.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ingot.runtime.llm.scheduler_output import SchedulerOutput


@dataclass(frozen=True)
class PackedBatch:
    """All new tokens of a step in one flat batch (T rows), and per-sequence metadata (B)."""

    input_ids: np.ndarray  # [T] int64
    positions: np.ndarray  # [T] int64
    slot_mapping: np.ndarray  # [T] int64: KV slot of each new token (block id * block size + offset)
    logits_indices: np.ndarray  # [N] int64: rows whose logits are wanted
    query_start_loc: np.ndarray  # [B + 1] int64
    context_lens: np.ndarray  # [B] int64: past + new
    block_tables: np.ndarray  # [B, max_blocks] int64, padded with 0
    seq_ids: np.ndarray | None = None  # [B] int64: each sequence's unique id (Sequence.seq_id)

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def num_seqs(self) -> int:
        return int(self.context_lens.shape[0])

    @property
    def new_lens(self) -> np.ndarray:
        return np.diff(self.query_start_loc)

    @property
    def past_lens(self) -> np.ndarray:
        return self.context_lens - self.new_lens


def pack(
    token_ids: Sequence[Sequence[int]],
    past_lens: Sequence[int],
    block_tables: Sequence[Sequence[int]],
    block_size: int,
    logits_rows: Sequence[Sequence[int]],
    seq_ids: Sequence[int] | None = None,
) -> PackedBatch:
    """Pack sequences b = 0..B-1: `token_ids[b]` new tokens after `past_lens[b]` cached ones;
    `logits_rows[b]` are offsets within b's new tokens whose logits are returned."""
    new = np.array([len(t) for t in token_ids], np.int64)
    past = np.asarray(past_lens, np.int64)
    assert new.min() >= 1 and past.min() >= 0, (new, past)
    qsl = np.concatenate([[0], np.cumsum(new)]).astype(np.int64)
    seq = np.repeat(np.arange(len(new)), new)
    positions = np.arange(int(qsl[-1]), dtype=np.int64) - qsl[seq] + past[seq]
    width = max(len(t) for t in block_tables)
    tables = np.zeros((len(new), width), np.int64)
    for b, t in enumerate(block_tables):
        tables[b, : len(t)] = t
    assert (positions // block_size < np.array([len(t) for t in block_tables])[seq]).all(), "block table too short"
    slots = tables[seq, positions // block_size] * block_size + positions % block_size
    rows = np.concatenate([qsl[b] + np.asarray(r, np.int64) for b, r in enumerate(logits_rows)] or [np.zeros(0, np.int64)])
    return PackedBatch(
        input_ids=np.concatenate([np.asarray(t, np.int64) for t in token_ids]),
        positions=positions,
        slot_mapping=slots,
        logits_indices=rows.astype(np.int64),
        query_start_loc=qsl,
        context_lens=past + new,
        block_tables=tables,
        seq_ids=None if seq_ids is None else np.asarray(seq_ids, np.int64),
    )


def pack_step(out: SchedulerOutput, block_size: int) -> PackedBatch:
    """A scheduler step as one packed batch; the last new token of each sampling sequence gives logits."""
    seqs = out.sequences
    return pack([s.token_ids for s in seqs], [s.num_computed_tokens for s in seqs], [s.block_table for s in seqs],
                block_size, [[s.num_new_tokens - 1] if s.samples else [] for s in seqs], [s.seq_id for s in seqs])
