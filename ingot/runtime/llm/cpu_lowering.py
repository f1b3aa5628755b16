"""The runtime half of the cpu lowering ("gqa-v3", ingot/builder/lower_cpu.py).

The lowered plan runs ONNX Runtime's GroupQueryAttention per layer over a window [B, kv, W, dim]
per layer and k|v that holds each sequence's past; the runtime fills the windows from the paged
pool. This module turns a packed batch into the plan's calls and inputs:

- plan_calls: the kernel takes one query length S per call, and a past beside S > 1 for one
  sequence only, so a step runs as several calls (the decodes together, each chunk alone);
- plan_feeds: the packed rows, and the `attn.*` metadata shared by every layer;
- the windows: each sequence's past gathered a whole block of one head at a time. A decode call's
  windows stay filled from one step to the next (`Windows`), so a decode gathers only the
  sequences that joined the group; the window and the kernel's present are bound to one buffer,
  so the kernel appends the call's new rows in place.

The pool stays the source of truth: a window row is only ever a copy of what the pool holds.
Where a KV block of one head is whole pages, the runner maps windows onto the pool's pages
instead (page_map.py) and these copies serve only prefills from scratch and calls past the
mapping budget.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

from ingot.plans import llm as names
from ingot.plans.llm import LLMInfo, blocks_needed
from ingot.runtime.llm.batch import PackedBatch
from ingot.runtime.llm.buffers import ReusedArrays

Arrays = dict[str, np.ndarray]

# ---- plan calls


def plan_calls(batch: PackedBatch, max_tokens: int | None = None) -> list[np.ndarray]:
    """The sequences of each plan call, in order of first appearance: the decodes (one new token)
    together, prefills from scratch grouped by length, and every other chunk (a past beside
    S > 1 tokens) alone; a group of more than `max_tokens` tokens (the plan's max_num_tokens,
    which its rotary tables cover) is split."""
    groups: dict[object, list[int]] = {}
    for b, (new, past) in enumerate(zip(batch.new_lens.tolist(), batch.past_lens.tolist())):
        key = "decode" if new == 1 else ("scratch", new) if past == 0 else ("chunk", b)
        groups.setdefault(key, []).append(b)
    calls = []
    for group in groups.values():
        per_call = len(group) if max_tokens is None else max(max_tokens // int(batch.new_lens[group[0]]), 1)
        calls += [np.array(group[i:i + per_call]) for i in range(0, len(group), per_call)]
    return calls


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


def run_calls(batch: PackedBatch, run: Callable[[PackedBatch], np.ndarray], max_tokens: int | None = None) -> np.ndarray:
    """Logits of `batch` (rows in logits_indices order), from `run(sub_batch) -> logits` over its plan calls."""
    calls = plan_calls(batch, max_tokens)
    if len(calls) == 1:
        return run(batch)
    parts, order = zip(*((run(sub), mine) for sub, mine in (select(batch, seqs) for seqs in calls)))
    logits = np.concatenate(parts)
    out = np.empty_like(logits)
    out[np.concatenate(order)] = logits
    return out


def plan_feeds(batch: PackedBatch) -> Arrays:
    """The plan's inputs for one plan call, all but the windows."""
    new, past = batch.new_lens, batch.past_lens
    s = int(new[0])
    assert (new == s).all() and (s == 1 or len(new) == 1 or not past.any()), "not one plan call (see plan_calls)"
    return {
        names.INPUT_IDS: batch.input_ids,
        names.POSITIONS: batch.positions,
        names.LOGITS_INDICES: batch.logits_indices,
        names.ATTN_QUERY_SHAPE: np.array([len(new), s, -1], np.int64),  # the packed rows as B sequences of S
        names.ATTN_SEQLENS_K: (past + new - 1).astype(np.int32),
        names.ATTN_TOTAL_LEN: np.array(int(past.max()) + s, np.int32),
    }


# ---- windows


def window_caches(info: LLMInfo) -> list[tuple[str, str, int | None]]:
    """(window, cache, sliding window) per layer and k|v: each window is gathered from its cache;
    a sliding layer's only from the first token its window reaches."""
    return [(names.window(layer, kv), cache, info.layer_window(layer)) for layer in range(info.num_layers)
            for kv, cache in (("key", names.key_cache(layer)), ("value", names.value_cache(layer)))]


def window_shape(batch: PackedBatch, info: LLMInfo) -> tuple[int, int, int, int]:
    """[B, kv, W, dim] of a plan call's windows: W holds every sequence's past + new (the kernel's
    present), in whole blocks (the past is gathered a block at a time)."""
    width = blocks_needed(int(batch.context_lens.max()), info.kv_block_size) * info.kv_block_size
    return batch.num_seqs, info.num_kv_heads, width, info.head_dim


def window_feeds(batch: PackedBatch, info: LLMInfo, caches: Arrays | None) -> Arrays:
    """Fresh windows per layer and k|v, each sequence's past gathered from `caches` (name ->
    [kv, blocks, block, dim]; None when no sequence has a past): for a plain run of the plan."""
    pairs, shape = window_caches(info), window_shape(batch, info)
    feeds = {window: np.zeros(shape, np.float32) for window, _, _ in pairs}
    fill_windows(feeds, caches, pairs, zip(range(shape[0]), batch.block_tables, batch.past_lens.tolist()))
    return feeds


def fill_windows(windows: Arrays, caches: Arrays | None, pairs: list[tuple[str, str, int | None]],
                 seqs: Iterable[tuple[int, np.ndarray, int]]) -> None:
    """For each (row, block table, past) of `seqs` and each (window, cache, sliding window) of
    `pairs`: row `row` of windows[window] gets that sequence's past from caches[cache], the part
    a query at position `past` or later can attend."""
    for row, table, past in seqs:
        if past:
            for window, cache, sliding in pairs:
                first = 0 if sliding is None else max(past - sliding + 1, 0)
                gather_past(windows[window][row], caches[cache], table, past, first)


def gather_past(out: np.ndarray, cache: np.ndarray, table: np.ndarray, past: int, first: int = 0) -> None:
    """out[:, :past] [kv, W, dim] = the first `past` tokens held by `table`'s blocks of `cache`
    [kv, blocks, block, dim], a whole block of one head at a time (the last block's unused rows
    land in the window too). Blocks wholly before token `first` are not read: their rows keep
    what they held (finite values: the kernel masks them, and 0 * inf would not be 0)."""
    kv, _, block, dim = cache.shape
    start, used = first // block, blocks_needed(past, block)
    assert table[:used].max() < cache.shape[1], "block id out of the pool"  # mode clip would not say
    np.take(cache, table[start:used], axis=1, out=out[:, start * block:used * block].reshape(kv, used - start, block, dim),
            mode="clip")


def window_presents(info: LLMInfo) -> dict[str, str]:
    """Each layer's and k|v's window (an input), and the kernel's present (an output) that the
    runner binds to the same array, in layer, k|v order."""
    return {names.window(layer, kv): names.window_present(layer, kv)
            for layer in range(info.num_layers) for kv in ("key", "value")}


def with_presents(windows: Arrays, presents: dict[str, str]) -> tuple[Arrays, Arrays]:
    """The windows (inputs), and the kernel's presents (outputs) bound to the same arrays."""
    return windows, {presents[name]: array for name, array in windows.items()}


class Windows:
    """The windows of the runner's plan calls, and the kernel's presents bound to the same arrays.

    Decode calls: row r of one array per layer and k|v belongs to one decoding sequence; after a
    call it holds that sequence's past and the token just decoded, which is the next step's past.
    A sequence that leaves the group gives its row to the last row, so a call's rows are always
    rows 0..B-1, one contiguous view. Other calls gather their pasts into arrays reused per shape.
    """

    def __init__(self, info: LLMInfo):
        self.info = info
        self.names = window_caches(info)
        self.presents = window_presents(info)
        self.seq_ids: list[int] = []  # the sequence of each decode row
        self.filled: list[int] = []  # tokens each decode row holds
        self.buffers = ReusedArrays([w for w, _, _ in self.names], growth=2)  # decode rows: views of their front
        self.rows: Arrays = {}  # name -> [rows, kv, width, dim]
        self._decode_views: dict[int, Arrays] = {}
        self._prefill = ReusedArrays([w for w, _, _ in self.names])

    @property
    def bytes_max(self) -> int:
        """Memory the windows may take at most: every sequence's whole context, per layer and k|v."""
        return self.info.max_num_seqs * self.info.max_model_len * self.info.kv_bytes_per_token

    @property
    def bytes_held(self) -> int:
        """Memory the windows hold now (decode rows and other calls' arrays)."""
        return sum(a.nbytes for buffers in (self.buffers, self._prefill) for a in buffers.flat.values())

    @property
    def scratch_bytes_max(self) -> int:
        """Memory the windows of prefills from scratch alone may take: a call's rows hold at most
        max_num_tokens tokens, each row rounded up to whole blocks (and arrays grow by half again)."""
        info = self.info
        return (info.max_num_tokens + info.max_num_seqs * info.kv_block_size) * info.kv_bytes_per_token * 3 // 2

    def decode(self, batch: PackedBatch, caches: Arrays) -> tuple[np.ndarray, Arrays, Arrays]:
        """For a call of one new token per sequence: the order it must run in (indices into the
        batch, row by row), its windows and its presents. The caller runs it, then `decoded()`."""
        assert batch.seq_ids is not None and (batch.new_lens == 1).all()
        ids, past = batch.seq_ids.tolist(), batch.past_lens.tolist()
        assert len(set(ids)) == len(ids), "a sequence twice in one call"
        where = {seq: b for b, seq in enumerate(ids)}
        self._evict(where)
        self._reserve(len(ids), max(past) + 1)
        resident, stale = {seq: r for r, seq in enumerate(self.seq_ids)}, []
        for seq, b in where.items():
            r = resident.get(seq)
            if r is None:
                r = len(self.seq_ids)
                self.seq_ids.append(seq)
                self.filled.append(-1)
            if self.filled[r] != past[b]:  # new to the group, or its row is not this sequence's past
                stale.append((r, batch.block_tables[b], past[b]))
                self.filled[r] = past[b]
        fill_windows(self.rows, caches, self.names, stale)
        order = np.array([where[seq] for seq in self.seq_ids], np.int64)
        return (order, *with_presents(self._views(len(ids)), self.presents))

    def decoded(self) -> None:
        """The decode call ran: each row holds one more token."""
        self.filled = [n + 1 for n in self.filled]

    def prefill(self, batch: PackedBatch, caches: Arrays) -> tuple[Arrays, Arrays]:
        """Windows and presents for any other call, each sequence's past gathered from the pool."""
        views = self._prefill.get(window_shape(batch, self.info))
        fill_windows(views, caches, self.names, zip(range(batch.num_seqs), batch.block_tables, batch.past_lens.tolist()))
        return with_presents(views, self.presents)

    def _evict(self, keep: dict[int, int]) -> None:
        """Free the rows of sequences not in `keep`, moving the last row into each hole."""
        r = 0
        while r < len(self.seq_ids):
            if self.seq_ids[r] in keep:
                r += 1
                continue
            last = len(self.seq_ids) - 1
            if r != last:
                n = self.filled[last]
                for name, _, _ in self.names:
                    self.rows[name][r, :, :n] = self.rows[name][last, :, :n]
                self.seq_ids[r], self.filled[r] = self.seq_ids[last], self.filled[last]
            self.seq_ids.pop()
            self.filled.pop()

    def _reserve(self, num_rows: int, width: int) -> None:
        """Rows and width for at least `num_rows` rows of `width` tokens, the resident rows kept.
        Each grows apart (up to the build limits): rows to twice as many (at least 4), since a group
        fills up a few sequences a step and each growth moves every resident row; width by half
        again, in whole blocks. The rows are views of the front of `buffers`."""
        info = self.info
        have = next(iter(self.rows.values())).shape if self.rows else (0, 0, 0, 0)
        if num_rows <= have[0] and width <= have[2]:
            return
        rows = have[0] if num_rows <= have[0] else max(num_rows, min(max(2 * have[0], 4), info.max_num_seqs))
        if width > have[2]:
            width = max(width, min(have[2] * 3 // 2, info.max_model_len))
        width = blocks_needed(max(width, have[2]), info.kv_block_size) * info.kv_block_size
        before, old = self.buffers.flat, self.rows
        self.rows = self.buffers.get((rows, info.num_kv_heads, width, info.head_dim))
        if width != have[2] or self.buffers.flat is not before:  # wider, or in new arrays
            # last row first: in one buffer a row's new place never overlaps a lower row's old one
            for name, _, _ in self.names:
                for r in reversed(range(len(self.filled))):
                    self.rows[name][r, :, :self.filled[r]] = old[name][r, :, :self.filled[r]]
        self._decode_views.clear()

    def _views(self, num_rows: int) -> Arrays:  # cached, so the binding sees the same arrays
        views = self._decode_views.get(num_rows)
        if views is None:
            views = self._decode_views[num_rows] = {n: a[:num_rows] for n, a in self.rows.items()}
        return views
