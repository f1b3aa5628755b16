"""BlockManager: exact block ids, free-queue order, chained hashes, prefix hits, eviction."""

import hashlib
import struct

from ingot.runtime.llm import BlockManager, Sequence, hash_block


def seq(request_id: str, tokens) -> Sequence:
    return Sequence(request_id, tuple(tokens))


def compute(bm: BlockManager, s: Sequence, num_tokens: int | None = None) -> None:
    """What a step does: the KV of the scheduled tokens is now written."""
    s.num_computed_tokens = s.num_tokens if num_tokens is None else num_tokens
    bm.cache_full_blocks(s)


def sha(parent: bytes, tokens) -> bytes:
    return hashlib.sha256(parent + struct.pack(f"<{len(tokens)}q", *tokens)).digest()


def free_ids(bm: BlockManager) -> list[int]:
    return list(bm.free_queue)


def test_allocate_takes_queue_head_and_free_returns_reversed_to_tail():
    bm = BlockManager(num_blocks=10, block_size=4)
    a, b = seq("a", range(10)), seq("b", range(100, 105))
    assert bm.allocate(a, 10) and a.block_table == [0, 1, 2] and a.num_computed_tokens == 0
    assert bm.allocate(b, 5) and b.block_table == [3, 4]
    assert free_ids(bm) == [5, 6, 7, 8, 9] and bm.num_free_blocks == 5
    bm.free(a)
    assert a.block_table == [] and free_ids(bm) == [5, 6, 7, 8, 9, 2, 1, 0]
    bm.free(b)
    assert free_ids(bm) == [5, 6, 7, 8, 9, 2, 1, 0, 4, 3]
    assert all(block.ref_count == 0 for block in bm.blocks)


def test_block_hashes_chain_with_sha256():
    bm = BlockManager(num_blocks=10, block_size=4)
    a = seq("a", range(10))
    bm.allocate(a, 10)
    compute(bm, a)
    h0 = sha(b"", [0, 1, 2, 3])
    h1 = sha(h0, [4, 5, 6, 7])
    assert hash_block(b"", [0, 1, 2, 3]) == h0
    assert a.block_hashes == [h0, h1]  # the partial third block has no hash
    assert bm.cached == {h0: 0, h1: 1}
    assert [b.hash for b in bm.blocks[:3]] == [h0, h1, None]


def test_blocks_are_cached_only_once_computed():
    bm = BlockManager(num_blocks=10, block_size=4)
    a = seq("a", range(12))
    bm.allocate(a, 12)
    assert bm.cached == {}
    compute(bm, a, 6)  # a chunk of 6: only block 0 is full of computed KV
    assert list(bm.cached.values()) == [0]
    compute(bm, a, 12)
    assert list(bm.cached.values()) == [0, 1, 2]


def test_prefix_hit_shares_blocks_and_counts_tokens():
    bm = BlockManager(num_blocks=10, block_size=4)
    a = seq("a", range(10))
    bm.allocate(a, 10)
    compute(bm, a)
    b = seq("b", [*range(8), 50, 51, 52])
    assert bm.num_cached_tokens(b) == 8
    assert bm.allocate(b, 3)
    assert b.block_table == [0, 1, 3] and b.num_computed_tokens == 8 and b.num_cached_tokens == 8
    assert [bm.blocks[i].ref_count for i in range(4)] == [2, 2, 1, 1]
    assert (bm.prefix_cache_queries, bm.prefix_cache_hits) == (10 + 11, 8)
    bm.free(a)
    assert [bm.blocks[i].ref_count for i in range(4)] == [1, 1, 0, 1]
    assert free_ids(bm) == [4, 5, 6, 7, 8, 9, 2]  # shared blocks stay out of the queue
    bm.free(b)
    assert free_ids(bm) == [4, 5, 6, 7, 8, 9, 2, 3, 1, 0]


def test_hit_on_free_cached_block_leaves_the_queue():
    bm = BlockManager(num_blocks=6, block_size=4)
    a = seq("a", range(9))
    bm.allocate(a, 9)
    compute(bm, a)
    bm.free(a)
    assert free_ids(bm) == [3, 4, 5, 2, 1, 0]
    c = seq("c", [*range(8), 9, 9])
    assert bm.allocate(c, 2)
    assert c.block_table == [0, 1, 3] and c.num_computed_tokens == 8
    assert free_ids(bm) == [4, 5, 2]


def test_whole_prompt_is_never_cached():
    bm = BlockManager(num_blocks=10, block_size=4)
    a = seq("a", range(8))
    bm.allocate(a, 8)
    compute(bm, a)
    same = seq("same", range(8))  # both blocks cached, yet the last token must be computed
    assert bm.num_cached_tokens(same) == 4
    assert bm.allocate(same, 4) and same.block_table == [0, 2] and same.num_computed_tokens == 4


def test_reusing_a_free_block_evicts_the_lru_hash():
    bm = BlockManager(num_blocks=4, block_size=2)
    a, b = seq("a", [1, 2, 3]), seq("b", [7, 8, 9])
    for s in (a, b):
        bm.allocate(s, 3)
        compute(bm, s)
    bm.free(a)
    bm.free(b)
    ha, hb = sha(b"", [1, 2]), sha(b"", [7, 8])
    assert free_ids(bm) == [1, 0, 3, 2] and bm.cached == {ha: 0, hb: 2}
    c = seq("c", [5, 5, 5])  # new data takes the head: 1 (uncached), then 0, the LRU cached block
    assert bm.allocate(c, 3) and c.block_table == [0, 1]  # in ascending order: one run of ids
    assert bm.cached == {hb: 2} and bm.blocks[0].hash is None
    assert bm.num_cached_tokens(seq("a2", [1, 2, 3])) == 0
    assert bm.num_cached_tokens(seq("b2", [7, 8, 9])) == 2


def test_refusal_changes_nothing():
    bm = BlockManager(num_blocks=4, block_size=4)
    big = seq("big", range(17))
    assert bm.allocate(big, 17) is False
    assert big.block_table == [] and bm.num_free_blocks == 4 and bm.prefix_cache_queries == 0
    a = seq("a", range(16))
    assert bm.allocate(a, 16) and a.block_table == [0, 1, 2, 3]
    compute(bm, a)
    a.status = a.status.RUNNING
    a.append_token(99)
    assert not bm.can_append(a, 1) and bm.append_slots(a, 1) is False
    assert a.block_table == [0, 1, 2, 3]


def test_free_prefix_hits_count_against_the_free_queue():
    bm = BlockManager(num_blocks=3, block_size=4)
    a = seq("a", range(9))
    bm.allocate(a, 9)
    compute(bm, a)
    bm.free(a)
    b = seq("b", [*range(8), *range(20, 28)])  # hits blocks 0, 1 (free); 8 new tokens need 2 more
    assert bm.allocate(b, 8) is False and bm.num_free_blocks == 3
    assert bm.allocate(b, 4) and b.block_table == [0, 1, 2] and bm.num_free_blocks == 0


def test_append_slots_grows_one_block_at_a_boundary():
    bm = BlockManager(num_blocks=4, block_size=4)
    a = seq("a", range(4))
    bm.allocate(a, 4)
    compute(bm, a)
    a.status = a.status.RUNNING
    a.append_token(7)
    assert bm.append_slots(a, 1) and a.block_table == [0, 1]
    compute(bm, a)
    a.append_token(8)
    assert bm.append_slots(a, 1) and a.block_table == [0, 1]  # position 5 is in block 1


def test_identical_blocks_computed_twice_are_cached_once():
    bm = BlockManager(num_blocks=6, block_size=4)
    a, b = seq("a", range(5)), seq("b", range(5))
    bm.allocate(a, 5)
    bm.allocate(b, 5)  # nothing cached yet: no hit, its own blocks
    assert b.block_table == [2, 3]
    compute(bm, a)
    compute(bm, b)
    assert bm.cached == {sha(b"", [0, 1, 2, 3]): 0} and bm.blocks[2].hash is None


def test_prefix_caching_off():
    bm = BlockManager(num_blocks=6, block_size=4, enable_prefix_caching=False)
    a = seq("a", range(9))
    bm.allocate(a, 9)
    compute(bm, a)
    assert bm.cached == {}
    b = seq("b", range(9))
    assert bm.allocate(b, 9) and b.num_computed_tokens == 0 and b.block_table == [3, 4, 5]
