"""Triton kernels of the `ingot.PagedAttention` contract (ingot/builder/paged.py).

Layouts (all contiguous):
- query, out `[T, num_heads, head_dim]`; key, value `[T, num_kv_heads, head_dim]`: a step's new tokens, packed;
- key_cache, value_cache `[num_kv_heads, num_blocks, block_size, head_dim]`: a block of one head is contiguous;
- slot_mapping `[T]` (block id * block_size + offset; < 0: not written), block_tables `[B, max_blocks]`,
  context_lens `[B]` (past + new), query_start_loc `[B + 1]`; int32 or int64. Rows past
  query_start_loc[B] are padding (a runtime may pad T): not written, and their output is zeros.

Every kernel computes the softmax and the accumulation in fp32, in the log2 domain (exp2). A program
covers one KV head and the GROUP = num_heads // num_kv_heads query heads that share it (GQA), as the
rows of one matrix, padded to at least 16 rows for tl.dot. A query at position p attends the keys at
positions (p - sliding_window, p] (all of [0, p] when sliding_window is 0); `softcap` > 0 caps the
scaled logits with softcap * tanh(logit / softcap).

The kernels:
- write_kv_kernel: the step's new K/V into the pool at slot_mapping (grid: T);
- prefill_kernel: a packed ragged batch of chunks, each query tile over its sequence's cached blocks,
  then causally over its own chunk, read from key/value (grid: cdiv(T, BLOCK_Q) + B, num_kv_heads);
- decode_kernel: one query token per sequence over its context in the pool, after write_kv_kernel
  (grid: B, num_kv_heads, splits); with SPLIT it writes partial results (flash-decoding) that
  merge_kernel combines (grid: B, num_heads);
- fused_kernel: one token per program (grid: T, num_kv_heads): writes its K/V into the pool, then
  attends the past from the pool and its chunk's new tokens from key/value. No program reads a slot
  another one writes, so one launch serves a mixed batch: the TensorRT plugin's kernel. Rows past
  query_start_loc[B] (padding) get zeros.

An fp8 (e4m3) pool stores K/V divided by K_SCALE/V_SCALE (per tensor), saturated to +-448 and rounded
to nearest even; reads multiply the scale back.

Everything here is @triton.jit code only: ingot.kernels.paged launches it, ingot.kernels.aot compiles
it ahead of time (in a child process with the interpreter off, when the tests run it on).
"""

from __future__ import annotations

import triton
import triton.language as tl

_LOG2E = tl.constexpr(1.4426950408889634)
# int arguments that vary from call to call: not specialized on (== 1, divisible by 16), so a JIT launch
# compiles once per variant, like the ahead-of-time compiles (aot.py) that take them as plain int32
_RUNTIME_INTS = ["num_seqs", "max_blocks", "num_blocks"]
_FP8_MAX = tl.constexpr(448.0)  # largest finite float8 e4m3fn


@triton.jit
def _tanh(x):
    # from exp2: tl.math has no tanh the interpreter runs (libdevice is CUDA only); saturates to +-1
    e = tl.exp2(x * (2.0 * _LOG2E))
    return 1.0 - 2.0 / (e + 1.0)


@triton.jit
def _find_seq(query_start_loc, num_seqs, target, TILE_Q: tl.constexpr, SEQ_TILE: tl.constexpr):
    """The sequence b of a token (TILE_Q == 0: target is a row, the last b with qsl[b] <= row) or of a
    query tile (target is a program of the grid cdiv(T, TILE_Q) + B: the last b with
    qsl[b] // TILE_Q + b <= target, so every sequence owns cdiv(new, TILE_Q) programs of its own)."""
    count = 0
    for first in range(0, num_seqs, SEQ_TILE):
        seqs = first + tl.arange(0, SEQ_TILE)
        live = seqs < num_seqs
        key = tl.load(query_start_loc + seqs, mask=live, other=0)
        if TILE_Q > 0:
            key = key // TILE_Q + seqs
        count += tl.sum((live & (key <= target)).to(tl.int32), 0)
    return count - 1


@triton.jit
def _rows_in_pool(table, kv_head, num_blocks, pos, valid, BLOCK_SIZE: tl.constexpr):
    """Rows of the [kv_heads * num_blocks * block_size, head_dim] view of a cache holding positions
    `pos` of the sequence whose block table row is `table`, for head `kv_head` (int64: pools pass 2**31)."""
    block = tl.load(table + pos // BLOCK_SIZE, mask=valid, other=0).to(tl.int64)
    return (kv_head.to(tl.int64) * num_blocks + block) * BLOCK_SIZE + pos % BLOCK_SIZE


@triton.jit
def _load_rows(ptr, rows, valid, offs_d, HEAD_DIM: tl.constexpr, KV_SCALE: tl.constexpr, DTYPE: tl.constexpr):
    """[len(rows), D_PAD] of a [*, HEAD_DIM] tensor as DTYPE; an fp8 tensor is dequantized by KV_SCALE."""
    mask = valid[:, None] & (offs_d < HEAD_DIM)[None, :]
    x = tl.load(ptr + rows[:, None] * HEAD_DIM + offs_d[None, :], mask=mask, other=0.0)
    if ptr.dtype.element_ty.is_fp8():
        x = x.to(tl.float32) * KV_SCALE
    return x.to(DTYPE)


@triton.jit
def _e4m3_grid(x):
    """fp32 x rounded to 3 mantissa bits, to nearest even: a normal e4m3 value exactly, so the cast that
    follows does not round. (Triton's interpreter rounds a carry into the exponent wrongly, 31.9 to 16.)"""
    bits = x.to(tl.int32, bitcast=True)
    bits = (bits + (0x7FFFF + ((bits >> 20) & 1))) & -0x100000  # 23 - 3 = 20 mantissa bits dropped
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _store_rows(ptr, rows, valid, offs_d, x, HEAD_DIM: tl.constexpr, KV_SCALE: tl.constexpr):
    """x [len(rows), D_PAD] into rows of a [*, HEAD_DIM] tensor; into an fp8 one divided by KV_SCALE, saturated."""
    mask = valid[:, None] & (offs_d < HEAD_DIM)[None, :]
    if ptr.dtype.element_ty.is_fp8():
        x = _e4m3_grid(tl.minimum(tl.maximum(x.to(tl.float32) / KV_SCALE, -_FP8_MAX), _FP8_MAX))
    tl.store(ptr + rows[:, None] * HEAD_DIM + offs_d[None, :], x.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def _write_token(src, cache, t, heads, valid, slot, num_blocks, offs_d, NUM_KV_HEADS: tl.constexpr,
                 HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr, KV_SCALE: tl.constexpr):
    """Row t of src [T, kv_heads, dim], heads `heads`, into the pool slot `slot` (block, offset)."""
    x = tl.load(src + (t * NUM_KV_HEADS + heads)[:, None] * HEAD_DIM + offs_d[None, :],
                mask=valid[:, None] & (offs_d < HEAD_DIM)[None, :], other=0.0)
    block, offset = slot // BLOCK_SIZE, slot % BLOCK_SIZE
    rows = (heads.to(tl.int64) * num_blocks + block) * BLOCK_SIZE + offset
    _store_rows(cache, rows, valid, offs_d, x, HEAD_DIM, KV_SCALE)


@triton.jit
def _attend(q, k, v, qpos, kpos, kvalid, m_i, l_i, acc, SCALE: tl.constexpr, SOFTCAP: tl.constexpr,
            SLIDING_WINDOW: tl.constexpr):
    """One tile of keys k, v [N, D] at positions kpos for queries q [M, D] at positions qpos:
    the online-softmax state (running max m_i and sum l_i [M], log2 domain; acc [M, D]) updated."""
    s = tl.dot(q, tl.trans(k), input_precision="ieee")  # [M, N] fp32
    if SOFTCAP > 0:
        s = SOFTCAP * _tanh(s * (SCALE / SOFTCAP)) * _LOG2E
    else:
        s = s * (SCALE * _LOG2E)
    visible = kvalid[None, :] & (kpos[None, :] <= qpos[:, None])
    if SLIDING_WINDOW > 0:
        visible = visible & (kpos[None, :] > qpos[:, None] - SLIDING_WINDOW)
    s = tl.where(visible, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row that has seen no key yet
    alpha = tl.exp2(m_i - m_safe)
    p = tl.exp2(s - m_safe[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
    return m_new, l_i, acc


@triton.jit
def _attend_pool(q, qpos, lo, hi, key_cache, value_cache, table, kv_head, num_blocks, m_i, l_i, acc, offs_d,
                 HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, SCALE: tl.constexpr,
                 SOFTCAP: tl.constexpr, SLIDING_WINDOW: tl.constexpr, K_SCALE: tl.constexpr,
                 V_SCALE: tl.constexpr):
    """Positions [lo, hi) of a sequence's context, read from the pool through its block table."""
    for first in range(lo, hi, BLOCK_N):
        kpos = first + tl.arange(0, BLOCK_N)
        kvalid = kpos < hi
        rows = _rows_in_pool(table, kv_head, num_blocks, kpos, kvalid, BLOCK_SIZE)
        k = _load_rows(key_cache, rows, kvalid, offs_d, HEAD_DIM, K_SCALE, q.dtype)
        v = _load_rows(value_cache, rows, kvalid, offs_d, HEAD_DIM, V_SCALE, q.dtype)
        m_i, l_i, acc = _attend(q, k, v, qpos, kpos, kvalid, m_i, l_i, acc, SCALE, SOFTCAP, SLIDING_WINDOW)
    return m_i, l_i, acc


@triton.jit
def _attend_new(q, qpos, lo, hi, past, q_start, key, value, kv_head, m_i, l_i, acc, offs_d,
                NUM_KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, SCALE: tl.constexpr,
                SOFTCAP: tl.constexpr, SLIDING_WINDOW: tl.constexpr):
    """The chunk's own tokens [lo, hi) (offsets in the chunk, at positions past + offset), read from key/value."""
    for first in range(lo, hi, BLOCK_N):
        local = first + tl.arange(0, BLOCK_N)
        kvalid = local < hi
        rows = (q_start + local).to(tl.int64) * NUM_KV_HEADS + kv_head
        k = _load_rows(key, rows, kvalid, offs_d, HEAD_DIM, 1.0, q.dtype)
        v = _load_rows(value, rows, kvalid, offs_d, HEAD_DIM, 1.0, q.dtype)
        m_i, l_i, acc = _attend(q, k, v, qpos, past + local, kvalid, m_i, l_i, acc, SCALE, SOFTCAP, SLIDING_WINDOW)
    return m_i, l_i, acc


@triton.jit
def _window_start(qpos, SLIDING_WINDOW: tl.constexpr):
    """The first position a query at qpos attends."""
    if SLIDING_WINDOW > 0:
        return tl.maximum(qpos - SLIDING_WINDOW + 1, 0)
    return qpos * 0


@triton.jit(do_not_specialize=["num_seqs", "num_blocks"])
def write_kv_kernel(key, value, slot_mapping, query_start_loc, num_seqs, key_cache, value_cache, num_blocks,
                    NUM_KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr,
                    K_SCALE: tl.constexpr, V_SCALE: tl.constexpr, KV_HEADS_PAD: tl.constexpr, D_PAD: tl.constexpr):
    """Token t's K/V, every KV head, into the pool at slot_mapping[t] (skipped where it is < 0, and for
    padded rows past query_start_loc[B])."""
    t = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_mapping + t).to(tl.int64)
    heads = tl.arange(0, KV_HEADS_PAD)
    end = tl.load(query_start_loc + num_seqs)
    # vectors compared, not vector & scalar: the interpreter makes bool & scalar bool an int32 mask
    valid = (heads < NUM_KV_HEADS) & (heads * 0 + slot >= 0) & (heads * 0 + t < end)
    offs_d = tl.arange(0, D_PAD)
    _write_token(key, key_cache, t, heads, valid, slot, num_blocks, offs_d, NUM_KV_HEADS, HEAD_DIM, BLOCK_SIZE,
                 K_SCALE)
    _write_token(value, value_cache, t, heads, valid, slot, num_blocks, offs_d, NUM_KV_HEADS, HEAD_DIM, BLOCK_SIZE,
                 V_SCALE)


@triton.jit(do_not_specialize=_RUNTIME_INTS)
def prefill_kernel(query, key, value, key_cache, value_cache, block_tables, context_lens, query_start_loc,
                   num_seqs, max_blocks, num_blocks, out,
                   NUM_HEADS: tl.constexpr, NUM_KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr,
                   BLOCK_SIZE: tl.constexpr, SCALE: tl.constexpr, SLIDING_WINDOW: tl.constexpr,
                   SOFTCAP: tl.constexpr, K_SCALE: tl.constexpr, V_SCALE: tl.constexpr,
                   BLOCK_Q: tl.constexpr, GROUP_PAD: tl.constexpr, BLOCK_N: tl.constexpr, D_PAD: tl.constexpr,
                   SEQ_TILE: tl.constexpr):
    """BLOCK_Q tokens of one chunk x the GROUP query heads of KV head h: rows token-major, [BLOCK_Q * GROUP_PAD, D]."""
    GROUP: tl.constexpr = NUM_HEADS // NUM_KV_HEADS
    pid, h = tl.program_id(0), tl.program_id(1)
    b = _find_seq(query_start_loc, num_seqs, pid, BLOCK_Q, SEQ_TILE)
    q_start = tl.load(query_start_loc + b)
    new = tl.load(query_start_loc + b + 1) - q_start
    past = tl.load(context_lens + b) - new
    first = (pid - (q_start // BLOCK_Q + b)) * BLOCK_Q  # this tile's first token, in the chunk
    last = tl.minimum(first + BLOCK_Q, new)  # one past its last token (<= first: no token, nothing runs)
    r = tl.arange(0, BLOCK_Q * GROUP_PAD)
    local, g = first + r // GROUP_PAD, r % GROUP_PAD
    valid = (local < last) & (g < GROUP)
    qpos = past + local
    offs_d = tl.arange(0, D_PAD)
    q_rows = ((q_start + local).to(tl.int64) * NUM_HEADS + h * GROUP + g)
    q = _load_rows(query, q_rows, valid, offs_d, HEAD_DIM, 1.0, query.dtype.element_ty)
    m_i = tl.full([BLOCK_Q * GROUP_PAD], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_Q * GROUP_PAD], tl.float32)
    acc = tl.zeros([BLOCK_Q * GROUP_PAD, D_PAD], tl.float32)
    lo = _window_start(past + first, SLIDING_WINDOW)  # the tile's first query reaches back the furthest
    hi = tl.where(last > first, past, 0)
    table = block_tables + b.to(tl.int64) * max_blocks
    m_i, l_i, acc = _attend_pool(q, qpos, lo, hi, key_cache, value_cache, table, h, num_blocks, m_i, l_i, acc, offs_d,
                                 HEAD_DIM, BLOCK_SIZE, BLOCK_N, SCALE, SOFTCAP, SLIDING_WINDOW, K_SCALE, V_SCALE)
    m_i, l_i, acc = _attend_new(q, qpos, tl.maximum(lo - past, 0), tl.where(last > first, last, 0), past, q_start,
                                key, value, h, m_i, l_i, acc, offs_d, NUM_KV_HEADS, HEAD_DIM, BLOCK_N, SCALE, SOFTCAP,
                                SLIDING_WINDOW)
    l_i = tl.where(l_i == 0.0, 1.0, l_i)
    _store_rows(out, q_rows, valid, offs_d, acc / l_i[:, None], HEAD_DIM, 1.0)


@triton.jit(do_not_specialize=["max_blocks", "num_blocks"])
def decode_kernel(query, key_cache, value_cache, block_tables, context_lens, query_start_loc, max_blocks, num_blocks,
                  out, part_m, part_l, part_acc,
                  NUM_HEADS: tl.constexpr, NUM_KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr,
                  BLOCK_SIZE: tl.constexpr, SCALE: tl.constexpr, SLIDING_WINDOW: tl.constexpr, SOFTCAP: tl.constexpr,
                  K_SCALE: tl.constexpr, V_SCALE: tl.constexpr, GROUP_PAD: tl.constexpr, BLOCK_N: tl.constexpr,
                  D_PAD: tl.constexpr, SPLIT: tl.constexpr):
    """The last token of sequence b (its only one) x the query heads of KV head h, over split `s` of
    its context, all of it in the pool. SPLIT: partials (m, l in the log2 domain, unnormalized acc)
    at [b, head, s] of part_* for merge_kernel; else the output row."""
    GROUP: tl.constexpr = NUM_HEADS // NUM_KV_HEADS
    b, h, s = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    num_splits = tl.num_programs(2)
    context = tl.load(context_lens + b)
    t = tl.load(query_start_loc + b + 1) - 1
    g = tl.arange(0, GROUP_PAD)
    valid = g < GROUP
    offs_d = tl.arange(0, D_PAD)
    heads = h * GROUP + g
    q = _load_rows(query, t.to(tl.int64) * NUM_HEADS + heads, valid, offs_d, HEAD_DIM, 1.0, query.dtype.element_ty)
    qpos = tl.zeros([GROUP_PAD], tl.int32) + (context - 1)
    start = _window_start(context - 1, SLIDING_WINDOW)
    per_split = tl.cdiv(tl.cdiv(context - start, num_splits), BLOCK_N) * BLOCK_N
    lo = start + s * per_split
    hi = tl.minimum(lo + per_split, context)
    m_i = tl.full([GROUP_PAD], float("-inf"), tl.float32)
    l_i = tl.zeros([GROUP_PAD], tl.float32)
    acc = tl.zeros([GROUP_PAD, D_PAD], tl.float32)
    table = block_tables + b.to(tl.int64) * max_blocks
    m_i, l_i, acc = _attend_pool(q, qpos, lo, hi, key_cache, value_cache, table, h, num_blocks, m_i, l_i, acc, offs_d,
                                 HEAD_DIM, BLOCK_SIZE, BLOCK_N, SCALE, SOFTCAP, SLIDING_WINDOW, K_SCALE, V_SCALE)
    if SPLIT:
        part = (b.to(tl.int64) * NUM_HEADS + heads) * num_splits + s
        tl.store(part_m + part, m_i, mask=valid)
        tl.store(part_l + part, l_i, mask=valid)
        _store_rows(part_acc, part, valid, offs_d, acc, D_PAD, 1.0)
    else:
        l_i = tl.where(l_i == 0.0, 1.0, l_i)
        _store_rows(out, t.to(tl.int64) * NUM_HEADS + heads, valid, offs_d, acc / l_i[:, None], HEAD_DIM, 1.0)


@triton.jit(do_not_specialize=["num_splits"])
def merge_kernel(query_start_loc, part_m, part_l, part_acc, num_splits, out,
                 NUM_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, SPLITS_PAD: tl.constexpr, D_PAD: tl.constexpr):
    """Head `head` of sequence b's decode token from its num_splits partials (flash-decoding's reduction)."""
    b, head = tl.program_id(0), tl.program_id(1)
    s = tl.arange(0, SPLITS_PAD)
    valid = s < num_splits
    part = (b.to(tl.int64) * NUM_HEADS + head) * num_splits + s
    m = tl.load(part_m + part, mask=valid, other=float("-inf"))
    l = tl.load(part_l + part, mask=valid, other=0.0)
    m_max = tl.max(m, 0)
    w = tl.exp2(m - tl.where(m_max == float("-inf"), 0.0, m_max))  # an empty split (m = -inf) weighs 0
    offs_d = tl.arange(0, D_PAD)
    acc = tl.load(part_acc + part[:, None] * D_PAD + offs_d[None, :], mask=valid[:, None], other=0.0)
    total = tl.sum(w * l, 0)
    row = tl.sum(acc * w[:, None], 0) / tl.where(total == 0.0, 1.0, total)
    t = tl.load(query_start_loc + b + 1) - 1
    dst = out + (t.to(tl.int64) * NUM_HEADS + head) * HEAD_DIM + offs_d
    tl.store(dst, row.to(out.dtype.element_ty), mask=offs_d < HEAD_DIM)


@triton.jit(do_not_specialize=_RUNTIME_INTS)
def fused_kernel(query, key, value, key_cache, value_cache, slot_mapping, block_tables, context_lens, query_start_loc,
                 num_seqs, max_blocks, num_blocks,
                 out, key_cache_out, value_cache_out,
                 NUM_HEADS: tl.constexpr, NUM_KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr,
                 BLOCK_SIZE: tl.constexpr, SCALE: tl.constexpr, SLIDING_WINDOW: tl.constexpr, SOFTCAP: tl.constexpr,
                 K_SCALE: tl.constexpr, V_SCALE: tl.constexpr, GROUP_PAD: tl.constexpr, BLOCK_N: tl.constexpr,
                 D_PAD: tl.constexpr, SEQ_TILE: tl.constexpr):
    """Token t x KV head h: write its K/V (through key/value_cache_out, the same memory as
    key/value_cache), then attend the pool's past and the chunk's tokens up to t from key/value.

    The argument order is the TensorRT plugin's: its 9 inputs, the int32 scalars it derives from
    their shapes (num_seqs = B, max_blocks, num_blocks), its 3 outputs (the pools aliased)."""
    GROUP: tl.constexpr = NUM_HEADS // NUM_KV_HEADS
    t, h = tl.program_id(0), tl.program_id(1)
    b = _find_seq(query_start_loc, num_seqs, t, 0, SEQ_TILE)
    q_start = tl.load(query_start_loc + b)
    q_end = tl.load(query_start_loc + b + 1)
    live = t < q_end  # False: a padded row past the batch's tokens
    slot = tl.load(slot_mapping + t).to(tl.int64)
    g = tl.arange(0, GROUP_PAD)
    offs_d = tl.arange(0, D_PAD)
    head = tl.zeros([1], tl.int32) + h
    write = (head * 0 + t < q_end) & (head * 0 + slot >= 0)  # vectors (see write_kv_kernel)
    _write_token(key, key_cache_out, t.to(tl.int64), head, write, slot, num_blocks, offs_d, NUM_KV_HEADS, HEAD_DIM,
                 BLOCK_SIZE, K_SCALE)
    _write_token(value, value_cache_out, t.to(tl.int64), head, write, slot, num_blocks, offs_d, NUM_KV_HEADS,
                 HEAD_DIM, BLOCK_SIZE, V_SCALE)
    valid = g < GROUP
    q_rows = t.to(tl.int64) * NUM_HEADS + h * GROUP + g
    q = _load_rows(query, q_rows, valid & (g * 0 + t < q_end), offs_d, HEAD_DIM, 1.0, query.dtype.element_ty)
    local = t - q_start
    past = tl.load(context_lens + b) - (q_end - q_start)
    qpos = tl.zeros([GROUP_PAD], tl.int32) + (past + local)
    lo = _window_start(past + local, SLIDING_WINDOW)
    m_i = tl.full([GROUP_PAD], float("-inf"), tl.float32)
    l_i = tl.zeros([GROUP_PAD], tl.float32)
    acc = tl.zeros([GROUP_PAD, D_PAD], tl.float32)
    table = block_tables + b.to(tl.int64) * max_blocks
    m_i, l_i, acc = _attend_pool(q, qpos, lo, tl.where(live, past, 0), key_cache, value_cache, table, h, num_blocks,
                                 m_i, l_i, acc, offs_d, HEAD_DIM, BLOCK_SIZE, BLOCK_N, SCALE, SOFTCAP, SLIDING_WINDOW,
                                 K_SCALE, V_SCALE)
    m_i, l_i, acc = _attend_new(q, qpos, tl.maximum(lo - past, 0), tl.where(live, local + 1, 0), past, q_start, key,
                                value, h, m_i, l_i, acc, offs_d, NUM_KV_HEADS, HEAD_DIM, BLOCK_N, SCALE, SOFTCAP,
                                SLIDING_WINDOW)
    l_i = tl.where(l_i == 0.0, 1.0, l_i)
    _store_rows(out, q_rows, valid, offs_d, acc / l_i[:, None], HEAD_DIM, 1.0)


KERNELS = {"write_kv": write_kv_kernel, "prefill": prefill_kernel, "decode": decode_kernel, "merge": merge_kernel,
           "fused": fused_kernel}
