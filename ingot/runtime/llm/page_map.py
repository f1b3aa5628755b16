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
block ids per row, head, layer and k|v; no copy of any K/V. Window pages never mapped to the
pool are anonymous memory that nothing writes (reads see zeros), reserved with MAP_NORESERVE;
a row's blocks past its sequence's length may still show another sequence's blocks, which the
kernel neither reads nor writes.

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

from ingot.plans.llm import LLMInfo, blocks_needed
from ingot.runtime.llm.batch import PackedBatch
from ingot.runtime.llm.cpu_lowering import window_presents, with_presents

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
        self.names = list(window_presents(info))  # window w = layer * 2 + k|v
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
        return self.cost(self._after(row, table)) - self._runs[row]

    @property
    def page_table_bytes_max(self) -> int:
        """Page-table entries (8 bytes a page) of every row showing a max_model_len sequence."""
        return self.rows * len(self.names) * self.info.num_kv_heads * self.width * self.info.head_dim * 4 // PAGE * 8

    def show(self, row: int, table: list[int]) -> None:
        """Make row `row` show the pool blocks `table`, in order, mapping only the blocks whose id
        differs from what the row shows now. Blocks past `table` keep what they showed: the kernel
        reads and writes a row only up to its sequence's length, so a stale tail costs nothing but
        its mappings, and a row is never cleared."""
        have = self.blocks[row]
        todo = [i for i, block in enumerate(table) if i >= len(have) or have[i] != block]
        if not todo:
            return
        lib, flags = _lib(), mmap.MAP_SHARED | _MAP_FIXED | mmap.MAP_POPULATE
        runs = _runs([table[i] for i in todo], todo)
        for addr, pool in self._spans(row):
            for (index, block), length in runs:
                lib.map(addr + index * self.block_bytes, length * self.block_bytes, flags, self.fd, pool + block * self.block_bytes)
        self.blocks[row] = self._after(row, table)
        self._count(row)

    def _after(self, row: int, table: list[int]) -> list[int]:
        """What row `row` shows once it shows `table`: `table`, then its stale tail."""
        return list(table) + self.blocks[row][len(table):]

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


def _runs(blocks: list[int], index: list[int] | None = None) -> list[tuple[tuple[int, int], int]]:
    """((index, first block id), length) of each run of consecutive block ids at consecutive
    indices (`index`: the indices of `blocks`, by default 0, 1, ...)."""
    index = list(range(len(blocks))) if index is None else index
    runs: list[tuple[tuple[int, int], int]] = []
    for i, block in zip(index, blocks):
        if runs and block == runs[-1][0][1] + runs[-1][1] and i == runs[-1][0][0] + runs[-1][1]:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append(((i, block), 1))
    return runs


class MappedWindows:
    """The runner's windows as views of the pool (see the module doc); the same calls as
    cpu_lowering.Windows, or None where a call would need more mappings than the budget.

    Decode calls keep a row per sequence from one step to the next (a joining sequence takes the
    row of one that left; see _rows), so a decode step maps only a block a sequence starts and the
    blocks of sequences that joined. Other calls show their sequences in a second region, rows in
    call order.
    """

    def __init__(self, info: LLMInfo, fd: int, pool_blocks: int, budget: int | None = None):
        assert supported(info), "windows cannot be mapped onto this pool"
        self.info = info
        self.budget = max_mappings() - _RESERVED_MAPPINGS if budget is None else budget
        self.decode_rows = Region(info, info.max_num_seqs, fd, pool_blocks)
        self.other_rows = Region(info, info.max_num_seqs, fd, pool_blocks)
        self.presents = window_presents(info)
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
        rows = self._rows(where)
        tables = [self._table(batch, where[seq]) for seq in rows]
        if self.mappings + sum(region.extra(r, t) for r, t in enumerate(tables)) > self.budget:
            return None
        for r, table in enumerate(tables):
            region.show(r, table)
        self.seq_ids = rows
        order = np.array([where[seq] for seq in rows], np.int64)
        return (order, *with_presents(region.views(len(ids)), self.presents))

    def _rows(self, keep: dict[int, int]) -> list[int]:
        """The sequence of each decode row for a call of the sequences `keep`: a sequence stays in
        its row; one that joins takes the row of one that left, else a new row at the end; a row
        left empty takes the last row's sequence. So in steady serving, where a request starts
        as another ends, no row moves."""
        rows = list(self.seq_ids)
        holes = [r for r, seq in enumerate(rows) if seq not in keep]
        resident = set(rows)
        for seq in keep:
            if seq not in resident:
                if holes:
                    rows[holes.pop(0)] = seq
                else:
                    rows.append(seq)
        for r in reversed(holes):  # highest first, so a moved row is never a hole itself
            last = rows.pop()
            if r < len(rows):
                rows[r] = last
        return rows

    def prefill(self, batch: PackedBatch) -> tuple[Arrays, Arrays] | None:
        """Windows and presents for any other call, rows in the call's order; None past the budget."""
        region = self.other_rows
        tables = [self._table(batch, b) for b in range(batch.num_seqs)]
        extra = sum(region.extra(r, t) for r, t in enumerate(tables))
        if self.mappings + extra > self.budget:
            return None
        for r, table in enumerate(tables):
            region.show(r, table)
        return with_presents(region.views(batch.num_seqs), self.presents)

    def _table(self, batch: PackedBatch, b: int) -> list[int]:
        """The blocks row b's window shows: those of its past and of the call's new tokens,
        where the kernel appends them."""
        return batch.block_tables[b, :blocks_needed(int(batch.context_lens[b]), self.info.kv_block_size)].tolist()
