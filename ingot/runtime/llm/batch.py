"""The packed, ragged batch of one step, and the cpu lowering's attention inputs for it.

Pure numpy; the model runner feeds these to the plan. Names of the plan's inputs are in
ingot.plans.llm.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ingot.plans import llm as names
from ingot.plans.llm import LLMInfo


@dataclass(frozen=True)
class PackedBatch:
    """All new tokens of a step in one flat batch (T rows), and per-sequence metadata (B)."""

    input_ids: np.ndarray  # [T] int64
    positions: np.ndarray  # [T] int64
    slot_mapping: np.ndarray  # [T] int64: KV slot of each new token
    logits_indices: np.ndarray  # [N] int64: rows whose logits are wanted
    query_start_loc: np.ndarray  # [B + 1] int64
    context_lens: np.ndarray  # [B] int64: past + new
    block_tables: np.ndarray  # [B, max_blocks] int64, padded with 0

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.shape[0])

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
    )


def plan_feeds(batch: PackedBatch, info: LLMInfo) -> dict[str, np.ndarray]:
    """The cpu plan's inputs for `batch`, all but the KV caches."""
    feeds = {names.INPUT_IDS: batch.input_ids, names.POSITIONS: batch.positions,
             names.LOGITS_INDICES: batch.logits_indices}
    return feeds | cpu_attention_inputs(batch, info)


def cpu_attention_inputs(batch: PackedBatch, info: LLMInfo) -> dict[str, np.ndarray]:
    """The `attn.*` inputs of the cpu lowering (gather-v1), shared by every layer."""
    block_size, group = info.kv_block_size, info.num_heads // info.num_kv_heads
    new, past = batch.new_lens, batch.past_lens
    num_seqs, s_max = len(new), int(new.max())
    i = np.arange(s_max)
    query_index = batch.query_start_loc[:-1, None] + np.minimum(i[None, :], new[:, None] - 1)
    num_past_blocks = -(-past // block_size)
    mb = int(num_past_blocks.max())
    past_blocks = np.where(np.arange(mb)[None, :] < num_past_blocks[:, None], batch.block_tables[:, :mb], 0)
    past_ok = np.arange(mb * block_size)[None, :] < past[:, None]  # [B, MB * block]
    # query i (of b's new tokens) sees every valid past key and new keys j' <= i, j' < new[b]
    new_ok = (i[None, None, :] <= i[None, :, None]) & (i[None, None, :] < new[:, None, None])  # [B, S, S]
    allowed = np.concatenate([np.broadcast_to(past_ok[:, None, :], (num_seqs, s_max, mb * block_size)), new_ok], axis=2)
    bias = np.tile(np.where(allowed, np.float32(0), np.float32(-np.inf))[None], (1, 1, group, 1))
    seq = np.repeat(np.arange(num_seqs), new)
    out_index = seq * s_max + (np.arange(batch.num_tokens) - batch.query_start_loc[seq])
    return {
        names.ATTN_QUERY_INDEX: query_index.astype(np.int64),
        names.ATTN_PAST_BLOCKS: past_blocks.astype(np.int64),
        names.ATTN_BIAS: np.ascontiguousarray(bias, dtype=np.float32),
        names.ATTN_OUT_INDEX: out_index.astype(np.int64),
    }
