"""`BlockManager`: fixed-size KV blocks, ref counts, an LRU free queue and a prefix cache.

Pure Python, no device state: it hands out block ids; the model runner owns the KV
tensors they index. Check-then-act: `allocate` and `append_slots` return False and change
nothing when the blocks do not fit; only the scheduler decides whom to preempt.

Prefix caching (as vLLM v1): a full block whose KV is computed is registered under the
chained hash of its tokens. A freed block keeps its hash while it waits in the free
queue, so a later request with the same prefix can claim it back; reusing it for new
data evicts the hash. Blocks are freed to the queue tail in reverse order, so the most
specific block of a sequence is evicted first.
"""

from __future__ import annotations

import hashlib
import struct
from collections import OrderedDict
from dataclasses import dataclass

from ingot.plans.llm import blocks_needed
from ingot.runtime.llm.sequence import Sequence

ROOT_HASH = b""  # parent of the first block: chains are reproducible across processes


@dataclass(eq=False)
class Block:
    block_id: int
    ref_count: int = 0  # sequences whose block table holds this block
    hash: bytes | None = None  # set while the block is in the prefix cache


def hash_block(parent: bytes, token_ids: list[int]) -> bytes:
    """sha256(parent hash ‖ token ids as little-endian int64)."""
    return hashlib.sha256(parent + struct.pack(f"<{len(token_ids)}q", *token_ids)).digest()


def update_block_hashes(seq: Sequence, block_size: int) -> list[bytes]:
    """Extend `seq.block_hashes` to every full block of its tokens (a pure function of them)."""
    for index in range(len(seq.block_hashes), seq.num_tokens // block_size):
        parent = seq.block_hashes[-1] if index else ROOT_HASH
        seq.block_hashes.append(hash_block(parent, seq.block_token_ids(index, block_size)))
    return seq.block_hashes


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        assert num_blocks > 0 and block_size > 0, (num_blocks, block_size)
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        # Blocks with ref_count 0, head = next to reuse (least recently freed). An ordered
        # dict gives O(1) removal from the middle when a prefix hit claims a free block.
        self.free_queue: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self.cached: dict[bytes, int] = {}  # block hash → block id, full blocks only
        self._num_offered: dict[str, int] = {}  # request id → leading blocks already offered to the cache
        self.prefix_cache_queries = 0  # tokens looked up on admission
        self.prefix_cache_hits = 0  # of which found in the cache

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def num_free_blocks(self) -> int:
        return len(self.free_queue)

    def cached_prefix(self, seq: Sequence) -> list[int]:
        """Block ids of the longest cached prefix of full blocks, leaving ≥ 1 token to compute."""
        if not self.enable_prefix_caching:
            return []
        hits = []
        for block_hash in update_block_hashes(seq, self.block_size)[: (seq.num_tokens - 1) // self.block_size]:
            block_id = self.cached.get(block_hash)
            if block_id is None:
                break
            hits.append(block_id)
        return hits

    def num_cached_tokens(self, seq: Sequence) -> int:
        """Tokens `allocate(seq, ...)` would find in the prefix cache now."""
        return len(self.cached_prefix(seq)) * self.block_size

    def allocate(self, seq: Sequence, num_new_tokens: int) -> bool:
        """Admit `seq`: claim its cached prefix plus blocks for `num_new_tokens` more tokens.

        Sets `seq.num_computed_tokens` to the cached token count. Returns False, changing
        nothing, when the free queue cannot cover the new blocks and the free prefix hits.
        """
        assert not seq.block_table and seq.num_computed_tokens == 0, seq.request_id
        hits = self.cached_prefix(seq)
        num_cached = len(hits) * self.block_size
        assert 0 < num_new_tokens <= seq.num_tokens - num_cached, (num_new_tokens, seq.num_tokens, num_cached)
        num_new_blocks = blocks_needed(num_cached + num_new_tokens, self.block_size) - len(hits)
        num_free_hits = sum(self.blocks[b].ref_count == 0 for b in hits)
        if num_new_blocks + num_free_hits > self.num_free_blocks:
            return False
        for block_id in hits:
            self._claim(block_id)
        seq.block_table = hits + self._pop_free(num_new_blocks)
        seq.num_computed_tokens = seq.num_cached_tokens = num_cached
        self._num_offered[seq.request_id] = len(hits)
        self.prefix_cache_queries += seq.num_tokens
        self.prefix_cache_hits += num_cached
        return True

    def can_append(self, seq: Sequence, num_new_tokens: int) -> bool:
        return self._num_missing(seq, num_new_tokens) <= self.num_free_blocks

    def append_slots(self, seq: Sequence, num_new_tokens: int) -> bool:
        """Grow a running `seq` by `num_new_tokens` slots (decode or the next prefill chunk)."""
        if not self.can_append(seq, num_new_tokens):
            return False
        seq.block_table += self._pop_free(self._num_missing(seq, num_new_tokens))
        return True

    def cache_full_blocks(self, seq: Sequence) -> None:
        """Register the blocks of `seq` that are now full of computed KV in the prefix cache.

        Called after a step, so a hit never points at KV that is not written yet.
        """
        if not self.enable_prefix_caching:
            return
        start, stop = self._num_offered[seq.request_id], seq.num_computed_tokens // self.block_size
        if stop <= start:
            return
        hashes = update_block_hashes(seq, self.block_size)
        for index in range(start, stop):
            block = self.blocks[seq.block_table[index]]
            assert block.hash is None and block.ref_count > 0, block
            if hashes[index] not in self.cached:  # else an identical block is cached already; keep that one
                block.hash = hashes[index]
                self.cached[block.hash] = block.block_id
        self._num_offered[seq.request_id] = stop

    def free(self, seq: Sequence) -> None:
        """Release the blocks of `seq`: last block first to the queue tail (evicted first)."""
        for block_id in reversed(seq.block_table):
            block = self.blocks[block_id]
            block.ref_count -= 1
            assert block.ref_count >= 0, block
            if block.ref_count == 0:
                self.free_queue[block_id] = None
        seq.block_table = []
        self._num_offered.pop(seq.request_id, None)

    def _num_missing(self, seq: Sequence, num_new_tokens: int) -> int:
        needed = blocks_needed(seq.num_computed_tokens + num_new_tokens, self.block_size)
        return max(needed - len(seq.block_table), 0)

    def _claim(self, block_id: int) -> None:
        """A prefix hit: one more reference; a free block leaves the free queue."""
        block = self.blocks[block_id]
        if block.ref_count == 0:
            del self.free_queue[block_id]
        block.ref_count += 1

    def _pop_free(self, count: int) -> list[int]:
        """Take `count` blocks from the queue head for new data, evicting their cached hashes; in
        ascending order of id, so the blocks a sequence frees (last first) come back in runs of
        consecutive ids (the cpu runner maps a run of blocks in one call: page_map.py)."""
        assert count <= self.num_free_blocks, (count, self.num_free_blocks)
        block_ids = []
        for _ in range(count):
            block_id, _ = self.free_queue.popitem(last=False)
            block = self.blocks[block_id]
            assert block.ref_count == 0, block
            if block.hash is not None:
                del self.cached[block.hash]
                block.hash = None
            block.ref_count = 1
            block_ids.append(block_id)
        return sorted(block_ids)
