"""`Windows`: the cpu plan's attention windows, filled from the paged pool and kept between steps.

The cpu lowering (gqa-v3, ingot/builder/lower_cpu.py) runs GroupQueryAttention over a window per
layer and k|v, [B, kv, W, dim] holding each sequence's past; the window and the kernel's present
are bound to one buffer, so the kernel appends the call's new rows to it in place.

A decode call's windows stay filled from one step to the next: row r of one array per layer and
k|v belongs to one decoding sequence, and after a call it holds that sequence's past and the
token just decoded, which is the next step's past. So a decode step gathers from the pool only
the sequences that joined the decode group (or whose row is not what the pool says it should be),
not every sequence's whole past each step: that copy was a quarter of a 16-sequence decode. A
sequence that leaves the group gives its row to the last row (one row copied), so a call's rows
are always rows 0..B-1, one contiguous view. Prefill calls (and decodes of a batch without
sequence ids) gather their pasts into reused arrays, one per call shape.

The pool stays the source of truth: the runner writes every call's new rows there too, and a
window row is only ever a copy of what the pool holds for its sequence.
"""

from __future__ import annotations

import numpy as np

from ingot.plans import llm as names
from ingot.plans.llm import LLMInfo
from ingot.runtime.llm.batch import PackedBatch, fill_windows, window_caches, window_shape
from ingot.runtime.llm.plan_outputs import ReusedArrays

Bound = tuple[dict[str, np.ndarray], dict[str, np.ndarray]]  # window inputs, and presents on the same arrays


class Windows:
    def __init__(self, info: LLMInfo):
        self.info = info
        self.names = window_caches(info)
        self.presents = {names.window(layer, kv): names.window_present(layer, kv)
                         for layer in range(info.num_layers) for kv in ("key", "value")}
        self.seq_ids: list[int] = []  # the sequence of each decode row
        self.filled: list[int] = []  # tokens each decode row holds
        self.buffers = ReusedArrays([name for name, _ in self.names], growth=2)  # decode rows: views of their front
        self.rows: dict[str, np.ndarray] = {}  # name -> [rows, kv, width, dim]
        self._decode_views: dict[int, dict[str, np.ndarray]] = {}
        self._prefill = ReusedArrays([name for name, _ in self.names])  # prefill calls: viewed per call shape

    def decode(self, batch: PackedBatch, caches: dict[str, np.ndarray]) -> tuple[np.ndarray, Bound]:
        """The order a call of one new token per sequence must have (indices into the batch, row
        by row), and its windows and presents. The caller runs the call, then `decoded()`."""
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
        return np.array([where[seq] for seq in self.seq_ids], np.int64), self._views(len(ids))

    def decoded(self) -> None:
        """The decode call ran: each row holds one more token."""
        self.filled = [n + 1 for n in self.filled]

    def prefill(self, batch: PackedBatch, caches: dict[str, np.ndarray]) -> Bound:
        """Windows for any other call, each sequence's past gathered from the pool into arrays reused
        by calls of the same shape."""
        views = self._prefill.get(window_shape(batch, self.info))
        fill_windows(views, caches, self.names, zip(range(len(batch.new_lens)), batch.block_tables, batch.past_lens.tolist()))
        return self._with_presents(views)

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
                for name, _ in self.names:
                    self.rows[name][r, :, :n] = self.rows[name][last, :, :n]
                self.seq_ids[r], self.filled[r] = self.seq_ids[last], self.filled[last]
            self.seq_ids.pop()
            self.filled.pop()

    def _reserve(self, num_rows: int, width: int) -> None:
        """Views of at least `num_rows` rows of `width` tokens, the resident rows kept.
        Each dimension grows apart (up to the build limits): rows to twice as many (at least 4),
        since a group fills up a few sequences a step and each growth moves every resident row;
        width by half again, in whole blocks. The views lie at the front of `buffers`, one flat
        array per name, remapped only when too small (to twice its size at least): mapping is
        ~0.4 s a GiB here, and remapping at every growth was 8% of a 16-sequence run."""
        info = self.info
        have = next(iter(self.rows.values())).shape if self.rows else (0, 0, 0, 0)
        if num_rows <= have[0] and width <= have[2]:
            return
        rows = have[0] if num_rows <= have[0] else max(num_rows, min(max(2 * have[0], 4), info.max_num_seqs))
        if width > have[2]:
            width = max(width, min(have[2] * 3 // 2, info.max_model_len))
        width = -(-max(width, have[2]) // info.kv_block_size) * info.kv_block_size
        before, old = self.buffers.flat, self.rows
        self.rows = self.buffers.get((rows, info.num_kv_heads, width, info.head_dim))
        if width != have[2] or self.buffers.flat is not before:  # wider, or in new arrays
            # last row first: in one buffer a row's new place never overlaps a lower row's old one
            for name, _ in self.names:
                for r in reversed(range(len(self.filled))):
                    self.rows[name][r, :, :self.filled[r]] = old[name][r, :, :self.filled[r]]
        self._decode_views.clear()

    def _views(self, num_rows: int) -> Bound:  # views cached, so run_bound binds nothing new
        views = self._decode_views.get(num_rows)
        if views is None:
            views = self._decode_views[num_rows] = {n: a[:num_rows] for n, a in self.rows.items()}
        return self._with_presents(views)

    def _with_presents(self, windows: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """The windows (inputs), and the kernel's presents (outputs) bound to the same arrays."""
        return windows, {self.presents[name]: array for name, array in windows.items()}
