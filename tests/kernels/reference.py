"""The contract in numpy, float64: the oracle the kernels are checked against.

A batch is made here too: sequences with a past already in a pool of scattered blocks, each adding
a chunk of new tokens (a prefill from scratch, a chunk mid-sequence, a decode token), packed as the
runtime packs them (ingot.runtime.llm.batch).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Case:
    """One call's inputs, numpy; pools [kv_heads, num_blocks, block_size, head_dim]."""

    query: np.ndarray  # [T, heads, dim]
    key: np.ndarray  # [T, kv_heads, dim]
    value: np.ndarray
    key_cache: np.ndarray
    value_cache: np.ndarray
    slot_mapping: np.ndarray  # [T]
    block_tables: np.ndarray  # [B, max_blocks]
    context_lens: np.ndarray  # [B]
    query_start_loc: np.ndarray  # [B + 1]

    @property
    def past_lens(self) -> np.ndarray:
        return self.context_lens - np.diff(self.query_start_loc)


def make_case(past: list[int], new: list[int], *, heads: int = 4, kv_heads: int = 2, head_dim: int = 16,
              block_size: int = 4, spare_blocks: int = 3, seed: int = 0) -> Case:
    """Sequence b has past[b] tokens in the pool and adds new[b]; its blocks are scattered over a pool
    with `spare_blocks` more than needed (never used), in a random order; block tables padded with 0."""
    rng = np.random.default_rng(seed)
    need = [-(-(p + n) // block_size) for p, n in zip(past, new, strict=True)]
    num_blocks = sum(need) + spare_blocks
    ids = rng.permutation(num_blocks)
    tables = np.zeros((len(past), max(need)), np.int64)
    start = 0
    for b, n in enumerate(need):
        tables[b, :n] = ids[start:start + n]
        start += n
    qsl = np.concatenate([[0], np.cumsum(new)]).astype(np.int64)
    seq = np.repeat(np.arange(len(new)), new)
    positions = np.arange(qsl[-1]) - qsl[seq] + np.asarray(past)[seq]
    slots = tables[seq, positions // block_size] * block_size + positions % block_size
    tokens = int(qsl[-1])
    pool = (kv_heads, num_blocks, block_size, head_dim)
    return Case(
        query=rng.standard_normal((tokens, heads, head_dim)).astype(np.float32),
        key=rng.standard_normal((tokens, kv_heads, head_dim)).astype(np.float32),
        value=rng.standard_normal((tokens, kv_heads, head_dim)).astype(np.float32),
        key_cache=rng.standard_normal(pool).astype(np.float32),
        value_cache=rng.standard_normal(pool).astype(np.float32),
        slot_mapping=slots.astype(np.int64), block_tables=tables,
        context_lens=(np.asarray(past) + np.asarray(new)).astype(np.int64), query_start_loc=qsl,
    )


def write_kv(case: Case) -> tuple[np.ndarray, np.ndarray]:
    """The pools after the step's K/V are written at their slots (slots < 0 skipped)."""
    caches = []
    for cache, rows in ((case.key_cache, case.key), (case.value_cache, case.value)):
        kv, blocks, block, dim = cache.shape
        flat = cache.astype(np.float64).reshape(kv, blocks * block, dim).copy()
        keep = case.slot_mapping >= 0
        flat[:, case.slot_mapping[keep]] = rows[keep].transpose(1, 0, 2)
        caches.append(flat.reshape(cache.shape))
    return caches[0], caches[1]


def attention(case: Case, *, scale: float, sliding_window: int = 0, softcap: float = 0.0) -> np.ndarray:
    """[T, heads, dim] float64: each new token over its sequence's past (read from the pool through
    its block table) and its chunk up to itself; rows of no sequence are zeros."""
    heads, kv_heads = case.query.shape[1], case.key.shape[1]
    block = case.key_cache.shape[2]
    out = np.zeros(case.query.shape, np.float64)
    for b in range(len(case.context_lens)):
        start, stop = case.query_start_loc[b], case.query_start_loc[b + 1]
        past = int(case.past_lens[b])
        pos = np.arange(past)
        blocks = case.block_tables[b, pos // block]
        k = np.concatenate([case.key_cache[:, blocks, pos % block].transpose(1, 0, 2), case.key[start:stop]])
        v = np.concatenate([case.value_cache[:, blocks, pos % block].transpose(1, 0, 2), case.value[start:stop]])
        k = np.repeat(k.astype(np.float64), heads // kv_heads, axis=1)
        v = np.repeat(v.astype(np.float64), heads // kv_heads, axis=1)
        s = np.einsum("qhd,khd->hqk", case.query[start:stop].astype(np.float64), k) * scale
        if softcap:
            s = np.tanh(s / softcap) * softcap
        qpos, kpos = past + np.arange(stop - start)[:, None], np.arange(len(k))[None, :]
        hidden = (kpos > qpos) | ((kpos <= qpos - sliding_window) if sliding_window else False)
        s = np.where(hidden, -np.inf, s)
        p = np.exp(s - s.max(-1, keepdims=True))
        out[start:stop] = np.einsum("hqk,khd->qhd", p / p.sum(-1, keepdims=True), v)
    return out
