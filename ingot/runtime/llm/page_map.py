"""Attention windows mapped onto the KV pool's pages: the kernel reads the pool, nothing is copied.

The cpu lowering's kernel (ONNX Runtime's GroupQueryAttention) reads each sequence's past from a
window [B, kv_heads, W, head_dim] per layer and k|v, and appends the new rows to it in place. The
pool holds the same rows per layer, k|v and head as [blocks, block, head_dim], so one block of one
head is `block * head_dim * 4` bytes: one page when that is 4096 (16 tokens of 64 dims), or
whole pages. The pool lives in a memfd (shared memory), and each window row is a stretch of
virtual memory whose pages are the pool's own, in the order of the sequence's block table
(mmap MAP_FIXED of the memfd at each block's offset): the block table applied by the MMU, as
vAttention does on GPUs. The kernel then reads the pool through the window, and its in-place
append lands in the pool block that holds the new token's slot, where the runner's write of the
same rows (kv_cache.write) lands too.

Memory beside the pool: page-table entries and one kernel mapping (VMA) per run of consecutive
block ids per row, head, layer and k|v; no copy of any K/V. Window pages not mapped to the pool
are anonymous memory that nothing writes (reads see zeros), reserved with MAP_NORESERVE.

Linux only, float32 pools whose blocks are whole pages; `supported` says. A process may hold at
most vm.max_map_count mappings (65,530 by default): a call that would need more than the budget
left gets None, and the runner gathers that call's windows instead (cpu_lowering.Windows).
"""

from __future__ import annotations

import ctypes
import mmap
import os
import sys
import weakref

import numpy as np

from ingot.plans import llm as names
from ingot.plans.llm import LLMInfo, blocks_needed
from ingot.runtime.llm.batch import PackedBatch

PAGE = mmap.PAGESIZE
_MAP_FIXED, _MAP_NORESERVE = 0x10, 0x4000  # Linux (x86-64 and arm64 alike)
_RW = mmap.PROT_READ | mmap.PROT_WRITE
# mappings this module may hold: vm.max_map_count less room for the rest of the process
# (its libraries, ONNX Runtime's arenas, Python's heap: a few thousand)
_RESERVED_MAPPINGS = 8192

Arrays = dict[str, np.ndarray]


def supported(info: LLMInfo) -> bool:
    """Whether windows can be mapped onto a pool of this plan: Linux, and one block of one head
    in whole pages."""
    block_bytes = info.kv_block_size * info.head_dim * 4
    return sys.platform == "linux" and hasattr(os, "memfd_create") and block_bytes % PAGE == 0


def shared_zeros(shape: tuple[int, ...]) -> tuple[np.ndarray, int]:
    """A zeroed float32 array in a memfd, its pages allocated now (MAP_POPULATE), and the fd,
    whose pages other mappings can share. The fd is closed when the array is collected."""
    nbytes = int(np.prod(shape)) * 4
    fd = os.memfd_create("ingot-kv-pool", os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, nbytes)
        buffer = mmap.mmap(fd, nbytes, flags=mmap.MAP_SHARED | mmap.MAP_POPULATE, prot=_RW)
    except BaseException:
        os.close(fd)
        raise
    array = np.frombuffer(buffer, np.float32).reshape(shape)
    weakref.finalize(buffer, os.close, fd)  # the array's base keeps the buffer alive
    return array, fd


class _Libc:
    def __init__(self):
        libc = ctypes.CDLL(None, use_errno=True)
        self.mmap = libc.mmap
        self.mmap.restype = ctypes.c_void_p
        self.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
        self.munmap = libc.munmap
        self.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]

    def map(self, addr: int | None, length: int, flags: int, fd: int = -1, offset: int = 0) -> int:
        out = self.mmap(addr, length, _RW, flags, fd, offset)
        if out is None or out == ctypes.c_void_p(-1).value:
            err = ctypes.get_errno()
            raise OSError(err, f"mmap: {os.strerror(err)}")
        assert addr is None or out == addr, (out, addr)
        return out


_libc: _Libc | None = None


def _lib() -> _Libc:
    global _libc
    if _libc is None:
        _libc = _Libc()
    return _libc


def max_mappings() -> int:
    """vm.max_map_count (65,530 when it cannot be read)."""
    try:
        with open("/proc/sys/vm/max_map_count") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 65530


class Region:
    """Rows of windows, one array [rows, kv_heads, width, head_dim] per layer and k|v, in one
    reserved stretch of virtual memory; each row's head spans show pool blocks or zeros."""

    def __init__(self, info: LLMInfo, rows: int, fd: int, pool_blocks: int):
        self.info, self.rows, self.fd, self.pool_blocks = info, rows, fd, pool_blocks
        self.block_bytes = info.kv_block_size * info.head_dim * 4
        self.width = blocks_needed(info.max_model_len, info.kv_block_size) * info.kv_block_size
        self.span_bytes = self.width * info.head_dim * 4  # one row's head, in one window
        self.window_bytes = rows * info.num_kv_heads * self.span_bytes
        self.names = [names.window(layer, kv) for layer in range(info.num_layers) for kv in ("key", "value")]
        self.size = self.window_bytes * len(self.names)
        self.base = _lib().map(None, self.size, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_NORESERVE)
        memory = (ctypes.c_float * (self.size // 4)).from_address(self.base)
        weakref.finalize(memory, _lib().munmap, self.base, self.size)  # once no view is left
        flat = np.frombuffer(memory, np.float32)
        shape = (rows, info.num_kv_heads, self.width, info.head_dim)
        per = self.window_bytes // 4
        self.arrays = {name: flat[i * per:(i + 1) * per].reshape(shape) for i, name in enumerate(self.names)}
        self.blocks: list[list[int]] = [[] for _ in range(rows)]  # the pool blocks each row shows, in order
        self.mappings = 0  # runs mapped now (each one kernel mapping, or fewer where the kernel merges them)
        self._runs: list[int] = [0] * rows
        self._views: dict[int, Arrays] = {}

    def views(self, num_rows: int) -> Arrays:
        """Rows 0..num_rows-1 of every window (cached, so a binding sees the same arrays)."""
        views = self._views.get(num_rows)
        if views is None:
            views = self._views[num_rows] = {n: a[:num_rows] for n, a in self.arrays.items()}
        return views

    def cost(self, table: list[int]) -> int:
        """Mappings a row holds while it shows `table`."""
        return len(_runs(table)) * len(self.names) * self.info.num_kv_heads

    @property
    def page_table_bytes(self) -> int:
        pages = sum(map(len, self.blocks)) * self.block_bytes // PAGE
        return pages * len(self.names) * self.info.num_kv_heads * 8

    def extra(self, row: int, table: list[int]) -> int:
        """Mappings more (or fewer) once row `row` shows `table`."""
        return self.cost(table) - self._runs[row]

    @property
    def page_table_bytes_max(self) -> int:
        """Page-table entries (8 bytes a page) of every row showing a max_model_len sequence."""
        return self.rows * len(self.names) * self.info.num_kv_heads * self.width * self.info.head_dim * 4 // PAGE * 8

    def show(self, row: int, table: list[int]) -> None:
        """Make row `row` show the pool blocks `table`, in order: only what differs is mapped
        (a block appended, or the blocks from the first that changed)."""
        have = self.blocks[row]
        same = next((i for i, (a, b) in enumerate(zip(have, table)) if a != b), min(len(have), len(table)))
        if same == len(have) == len(table):
            return
        if len(table) < len(have):  # blocks went: back to zeros there (a mapping replaces the rest)
            self._clear(row, len(table), len(have))
        self._map(row, table[same:], same)
        self.blocks[row] = list(table)
        self._count(row)

    def clear(self, row: int) -> None:
        if self.blocks[row]:
            self._clear(row, 0, len(self.blocks[row]))
            self.blocks[row] = []
            self._count(row)

    def _count(self, row: int) -> None:
        runs = self.cost(self.blocks[row])
        self.mappings += runs - self._runs[row]
        self._runs[row] = runs

    def _spans(self, row: int):
        """(address of the row's span in each window and head, pool offset of that layer, k|v and head's block 0)."""
        info = self.info
        for w in range(len(self.names)):  # window w = layer * 2 + k|v: the pool's own order
            for head in range(info.num_kv_heads):
                addr = self.base + w * self.window_bytes + (row * info.num_kv_heads + head) * self.span_bytes
                yield addr, ((w * info.num_kv_heads) + head) * self.pool_blocks * self.block_bytes

    def _map(self, row: int, table: list[int], start: int) -> None:
        lib, flags = _lib(), mmap.MAP_SHARED | _MAP_FIXED | mmap.MAP_POPULATE
        runs = _runs(table)
        for addr, pool in self._spans(row):
            for first, length in runs:
                lib.map(addr + (start + first[0]) * self.block_bytes, length * self.block_bytes, flags, self.fd,
                        pool + first[1] * self.block_bytes)

    def _clear(self, row: int, start: int, stop: int) -> None:
        lib, flags = _lib(), mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_FIXED | _MAP_NORESERVE
        for addr, _ in self._spans(row):
            lib.map(addr + start * self.block_bytes, (stop - start) * self.block_bytes, flags)


def _runs(table: list[int]) -> list[tuple[tuple[int, int], int]]:
    """((index in table, first block id), length) of each run of consecutive block ids."""
    runs: list[tuple[tuple[int, int], int]] = []
    for i, block in enumerate(table):
        if runs and block == runs[-1][0][1] + runs[-1][1] and i == runs[-1][0][0] + runs[-1][1]:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append(((i, block), 1))
    return runs


class MappedWindows:
    """The runner's windows as views of the pool (see the module doc); the same calls as
    cpu_lowering.Windows, or None where a call would need more mappings than the budget.

    Decode calls keep a row per sequence from one step to the next (a sequence that leaves gives
    its row to the last row), so a decode step maps only a block a sequence starts, or the rows of
    sequences that joined. Other calls show their sequences in a second region, rows in call order.
    """

    def __init__(self, info: LLMInfo, fd: int, pool_blocks: int, budget: int | None = None):
        assert supported(info), "windows cannot be mapped onto this pool"
        self.info = info
        self.budget = max_mappings() - _RESERVED_MAPPINGS if budget is None else budget
        self.decode_rows = Region(info, info.max_num_seqs, fd, pool_blocks)
        self.other_rows = Region(info, info.max_num_seqs, fd, pool_blocks)
        self.presents = {names.window(layer, kv): names.window_present(layer, kv)
                         for layer in range(info.num_layers) for kv in ("key", "value")}
        self.seq_ids: list[int] = []  # the sequence of each decode row

    @property
    def mappings(self) -> int:
        return self.decode_rows.mappings + self.other_rows.mappings

    @property
    def page_table_bytes_max(self) -> int:
        return self.decode_rows.page_table_bytes_max + self.other_rows.page_table_bytes_max

    @property
    def page_table_bytes(self) -> int:
        """Page-table entries of the pages mapped now (8 bytes a page)."""
        return sum(r.page_table_bytes for r in (self.decode_rows, self.other_rows))

    def decode(self, batch: PackedBatch) -> tuple[np.ndarray, Arrays, Arrays] | None:
        """For a call of one new token per sequence: the order it must run in (indices into the
        batch, row by row), its windows and presents; None past the mapping budget."""
        assert batch.seq_ids is not None and (batch.new_lens == 1).all()
        ids = batch.seq_ids.tolist()
        assert len(set(ids)) == len(ids), "a sequence twice in one call"
        where = {seq: b for b, seq in enumerate(ids)}
        region = self.decode_rows
        self._evict(where)
        resident = {seq: r for r, seq in enumerate(self.seq_ids)}
        rows = [(resident.get(seq), b) for seq, b in where.items()]
        new_rows = iter(range(len(self.seq_ids), len(ids)))
        rows = [(r if r is not None else next(new_rows), b) for r, b in rows]
        tables = {r: self._table(batch, b) for r, b in rows}
        extra = sum(region.extra(r, t) for r, t in tables.items())
        if self.mappings + extra > self.budget:
            return None
        for seq, (r, b) in zip(where, rows):
            if r == len(self.seq_ids):
                self.seq_ids.append(seq)
            region.show(r, tables[r])
        order = np.array([where[seq] for seq in self.seq_ids], np.int64)
        return (order, *self._with_presents(region.views(len(ids))))

    def prefill(self, batch: PackedBatch) -> tuple[Arrays, Arrays] | None:
        """Windows and presents for any other call, rows in the call's order; None past the budget."""
        region = self.other_rows
        tables = [self._table(batch, b) for b in range(batch.num_seqs)]
        extra = sum(region.extra(r, t) for r, t in enumerate(tables))
        if self.mappings + extra > self.budget:
            return None
        for r, table in enumerate(tables):
            region.show(r, table)
        return self._with_presents(region.views(batch.num_seqs))

    def _table(self, batch: PackedBatch, b: int) -> list[int]:
        """The blocks row b's window shows: those of its past and of the call's new tokens,
        where the kernel appends them."""
        return batch.block_tables[b, :blocks_needed(int(batch.context_lens[b]), self.info.kv_block_size)].tolist()

    def _evict(self, keep: dict[int, int]) -> None:
        """Free the rows of sequences not in `keep`, the last row taking each hole."""
        region, r = self.decode_rows, 0
        while r < len(self.seq_ids):
            if self.seq_ids[r] in keep:
                r += 1
                continue
            last = len(self.seq_ids) - 1
            if r != last:
                region.show(r, region.blocks[last])
                self.seq_ids[r] = self.seq_ids[last]
            region.clear(last)
            self.seq_ids.pop()

    def _with_presents(self, windows: Arrays) -> tuple[Arrays, Arrays]:
        return windows, {self.presents[name]: array for name, array in windows.items()}
