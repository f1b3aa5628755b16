"""The packed, ragged batch of one step, its plan calls, and the cpu lowering's attention inputs.

Pure numpy; the model runner feeds these to the plan. Names of the plan's inputs are in
ingot.plans.llm.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
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
    seq_ids: np.ndarray | None = None  # [B] int64: each sequence's unique id (the runner keeps decode windows by it)

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


def plan_calls(batch: PackedBatch) -> list[np.ndarray]:
    """The sequences of each plan call, in order of first appearance: the decodes (one new token)
    together, prefills from scratch grouped by length, and every other chunk (a past beside
    S > 1 tokens) alone. GroupQueryAttention, which the cpu lowering runs, takes one S per call
    and a past beside S > 1 only for one sequence."""
    groups: dict[object, list[int]] = {}
    for b, (new, past) in enumerate(zip(batch.new_lens.tolist(), batch.past_lens.tolist())):
        key = "decode" if new == 1 else ("scratch", new) if past == 0 else ("chunk", b)
        groups.setdefault(key, []).append(b)
    return [np.array(g) for g in groups.values()]


def select(batch: PackedBatch, seqs: np.ndarray) -> tuple[PackedBatch, np.ndarray]:
    """The sub-batch of sequences `seqs`, and which of `batch.logits_indices` it returns."""
    qsl = batch.query_start_loc
    rows = np.concatenate([np.arange(qsl[b], qsl[b + 1]) for b in seqs])
    local = np.full(batch.num_tokens, -1, np.int64)
    local[rows] = np.arange(len(rows))
    mine = np.flatnonzero(local[batch.logits_indices] >= 0)
    sub = PackedBatch(
        input_ids=batch.input_ids[rows],
        positions=batch.positions[rows],
        slot_mapping=batch.slot_mapping[rows],
        logits_indices=local[batch.logits_indices[mine]],
        query_start_loc=np.concatenate([[0], np.cumsum(batch.new_lens[seqs])]).astype(np.int64),
        context_lens=batch.context_lens[seqs],
        block_tables=batch.block_tables[seqs],
        seq_ids=None if batch.seq_ids is None else batch.seq_ids[seqs],
    )
    return sub, mine


def run_calls(batch: PackedBatch, run: Callable[[PackedBatch], np.ndarray]) -> np.ndarray:
    """Logits of `batch` (rows in logits_indices order), from `run(sub_batch) -> logits` over its plan calls."""
    calls = plan_calls(batch)
    if len(calls) == 1:
        return run(batch)
    parts, order = zip(*((run(sub), mine) for sub, mine in (select(batch, seqs) for seqs in calls)))
    logits = np.concatenate(parts)
    out = np.empty_like(logits)
    out[np.concatenate(order)] = logits
    return out


def plan_feeds(batch: PackedBatch, info: LLMInfo) -> dict[str, np.ndarray]:
    """The cpu plan's inputs for one plan call (see plan_calls), all but the windows."""
    feeds = {names.INPUT_IDS: batch.input_ids, names.POSITIONS: batch.positions,
             names.LOGITS_INDICES: batch.logits_indices}
    return feeds | cpu_attention_inputs(batch)


def cpu_attention_inputs(batch: PackedBatch) -> dict[str, np.ndarray]:
    """The `attn.*` inputs of the cpu lowering (gqa-v3), shared by every layer."""
    new, past = batch.new_lens, batch.past_lens
    s = int(new[0])
    assert (new == s).all() and (s == 1 or len(new) == 1 or not past.any()), "not one plan call (see plan_calls)"
    return {
        names.ATTN_QUERY_SHAPE: np.array([len(new), s, -1], np.int64),
        names.ATTN_SEQLENS_K: (past + new - 1).astype(np.int32),
        names.ATTN_TOTAL_LEN: np.array(int(past.max()) + s, np.int32),
    }


def window_width(batch: PackedBatch, block_size: int) -> int:
    """The window of a plan call: the kernel's present holds every sequence's past + new, and the
    past is gathered a whole block at a time."""
    return -(-int(batch.context_lens.max()) // block_size) * block_size


def window_caches(info: LLMInfo) -> list[tuple[str, str]]:
    """(window, cache) names per layer and k|v: each window is gathered from its cache."""
    return [(names.window(layer, kv), cache) for layer in range(info.num_layers)
            for kv, cache in (("key", names.key_cache(layer)), ("value", names.value_cache(layer)))]


def window_shape(batch: PackedBatch, info: LLMInfo) -> tuple[int, int, int, int]:
    """[B, kv, W, dim] (W: window_width) of a plan call's windows."""
    return len(batch.new_lens), info.num_kv_heads, window_width(batch, info.kv_block_size), info.head_dim


def window_feeds(batch: PackedBatch, info: LLMInfo, caches: dict[str, np.ndarray] | None) -> dict[str, np.ndarray]:
    """Fresh windows (window_shape) per layer and k|v, each sequence's past gathered from
    `caches` (name -> [kv, blocks, block, dim]; None when no sequence has a past). For a plain
    run of the plan; the model runner keeps its windows (ingot.runtime.llm.windows)."""
    pairs, shape = window_caches(info), window_shape(batch, info)
    feeds = {window: np.zeros(shape, np.float32) for window, _ in pairs}
    fill_windows(feeds, caches, pairs, zip(range(shape[0]), batch.block_tables, batch.past_lens.tolist()))
    return feeds


def fill_windows(windows: dict[str, np.ndarray], caches: dict[str, np.ndarray] | None, pairs: list[tuple[str, str]],
                 seqs: Iterable[tuple[int, np.ndarray, int]]) -> None:
    """For each (row, block table, past) of `seqs` and each (window, cache) of `pairs`: row `row`
    of windows[window] gets that sequence's past from caches[cache]."""
    for row, table, past in seqs:
        if past:
            for window, cache in pairs:
                gather_past(windows[window][row], caches[cache], table, past)


def gather_past(out: np.ndarray, cache: np.ndarray, table: np.ndarray, past: int) -> None:
    """out[:, :past] [kv, W, dim] = the first `past` tokens held by `table`'s blocks of `cache`
    [kv, blocks, block, dim], a whole block of one head at a time (W: whole blocks, so the
    last block's unused rows land in the window too)."""
    if past:
        kv, _, block, dim = cache.shape
        used = -(-past // block)
        assert table[:used].max() < cache.shape[1], "block id out of the pool"  # mode clip would not say
        np.take(cache, table[:used], axis=1, out=out[:, :used * block].reshape(kv, used, block, dim), mode="clip")
