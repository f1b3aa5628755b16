"""Attention windows mapped onto the KV pool's pages (ingot/runtime/llm/page_map.py): the kernel
reads the pool itself. A tiny Llama with 64-dim heads, so a block of 16 tokens of one head is one
4 KiB page."""

import os

import numpy as np
import pytest

from ingot.plans import llm as names
from ingot.runtime.llm import page_map
from ingot.runtime.llm.batch import pack
from ingot.runtime.llm.cpu_lowering import plan_feeds, window_feeds
from ingot.runtime.llm.runner import load_runner
from tests import models
from tests.conftest import built

pytestmark = pytest.mark.skipif(not hasattr(os, "memfd_create"), reason="page mapping needs Linux")


@pytest.fixture(scope="module")
def wide_llama_dir(tmp_path_factory):
    return models.make_tiny_llama(tmp_path_factory.mktemp("wide-llama"), hidden_size=256, num_heads=4)


@pytest.fixture(scope="module")
def wide_bundle(wide_llama_dir, tmp_path_factory):
    return built(wide_llama_dir, tmp_path_factory.mktemp("b") / "wide-llama")


def random_pool(runner, seed=0):
    rng = np.random.default_rng(seed)
    runner.kv.pool[...] = rng.standard_normal(runner.kv.pool.shape, dtype=np.float32)
    return rng


def test_windows_are_the_pools_pages_not_a_copy(wide_bundle):
    runner = load_runner(wide_bundle, kv_cache_memory=8 << 20)
    assert runner.info.head_dim == 64 and runner.mapped is not None
    random_pool(runner)
    batch = pack([[5]], [40], [[7, 3, 9]], 16, [[0]], [1])
    order, windows, _ = runner.mapped.decode(batch)
    key = windows[names.window(1, "key")]
    pool_key = runner.kv.caches[names.key_cache(1)]  # [kv, blocks, block, dim]
    np.testing.assert_array_equal(key[0, :, :48].reshape(2, 3, 16, 64), pool_key[:, [7, 3, 9]])
    pool_key[1, 3, 5] = 123.0  # written in the pool, seen through the window: the same memory
    assert (key[0, 1, 16 + 5] == 123.0).all()
    assert not key[0, :, 48:].any()  # past the blocks: zeros, nothing mapped
    assert runner.mapped.mappings == 2 * 2 * 2 * 3  # layers x k|v x heads x runs of consecutive blocks: [7], [3], [9]
    runner.mapped.decode(pack([[5]], [40], [[3, 4, 5]], 16, [[0]], [1]))  # one run: one mapping per span
    assert runner.mapped.mappings == 2 * 2 * 2 * 1
    np.testing.assert_array_equal(key[0, :, :48].reshape(2, 3, 16, 64), pool_key[:, [3, 4, 5]])


def test_mapped_windows_give_the_plain_run_logits(wide_bundle):
    """Decode rows kept from step to step (sequences joining, staying, leaving, coming back, a
    block table that changes under a row), a chunk and prefills between: every call's logits
    equal a plain run of the plan over windows gathered from the pool, and the kernel's in-place
    append lands in the pool at the new tokens' slots."""
    runner = load_runner(wide_bundle, kv_cache_memory=8 << 20)
    rng = random_pool(runner)
    backend, info, bs = runner.model.backend, runner.info, 16
    tables = {1: [1, 2, 3], 2: [4, 5], 3: [6, 7, 8], 4: [9, 10], 5: [20, 21]}

    def decode(ids, pasts):
        return pack([[int(rng.integers(2, 200))] for _ in ids], pasts, [tables[i] for i in ids], bs, [[0]] * len(ids), ids)

    steps = [(decode([1, 2, 3], [40, 17, 33]), [1, 2, 3]),  # all three join
             (decode([1, 2, 3], [41, 18, 34]), [1, 2, 3]),  # the same group: nothing mapped
             (pack([[5, 6, 7, 8]], [30], [[11, 12, 13]], bs, [[3]]), None),  # a chunk after a past
             (decode([3, 1, 4], [35, 42, 20]), [1, 4, 3]),  # 2 leaves, 4 joins in its row, new order
             (pack([[5, 6, 7], [1, 2, 3]], [0, 0], [[14], [15]], bs, [[2], [2]]), None),  # prefills from scratch
             (decode([3, 1, 4], [47, 42, 31]), [1, 4, 3]),  # 3 enters its third block, 4 its second
             (decode([1, 3], [43, 45]), [1, 3]),  # 4 leaves: the last row (3) takes its row
             (decode([2], [19]), [2])]  # 2 comes back alone
    for batch, rows in steps:
        plain = backend.run(plan_feeds(batch) | window_feeds(batch, info, runner.kv.caches))
        logits = runner.forward(batch)  # the kernel appends into the pool; the runner writes the same rows
        np.testing.assert_allclose(logits, plain[names.LOGITS], atol=1e-5)
        new_keys = runner.kv.pool[1, 0].reshape(info.num_kv_heads, -1, info.head_dim)[:, batch.slot_mapping]
        np.testing.assert_allclose(new_keys, plain[names.present_key(1)].transpose(1, 0, 2), atol=1e-6)
        if rows is not None:
            assert runner.mapped.seq_ids == rows
            assert runner.windows.seq_ids == []  # nothing gathered
    tables[5] = [22, 23]
    tables[2] = [30, 4]  # the same sequence id with another table (freed and admitted again): remapped
    for batch in (decode([2], [20]), decode([2, 5], [21, 25])):
        plain = backend.run(plan_feeds(batch) | window_feeds(batch, info, runner.kv.caches))
        np.testing.assert_allclose(runner.forward(batch), plain[names.LOGITS], atol=1e-5)


def test_past_the_mapping_budget_a_call_gathers_copies(wide_bundle):
    runner = load_runner(wide_bundle, kv_cache_memory=8 << 20)
    rng = random_pool(runner, 1)
    runner.mapped.budget = 16  # one sequence of one run: 2 layers x k|v x 2 heads x 1 run = 8
    one = pack([[int(rng.integers(2, 200))]], [20], [[1, 2]], 16, [[0]], [1])
    two = pack([[3], [4]], [20, 30], [[1, 2], [5, 9]], 16, [[0], [0]], [1, 2])
    for batch, gathered in ((one, []), (two, [1, 2]), (one, [1, 2])):
        plain = runner.model.backend.run(plan_feeds(batch) | window_feeds(batch, runner.info, runner.kv.caches))
        np.testing.assert_allclose(runner.forward(batch), plain[names.LOGITS], atol=1e-5)
        assert runner.windows.seq_ids == gathered
        assert runner.mapped.mappings <= 16


def test_generation_through_mapped_windows_equals_transformers(wide_bundle, wide_llama_dir):
    """Greedy tokens of the engine, several prompts in flight with a shared prefix (prefix cache
    hits), equal transformers' generate; the windows beside the pool are page tables only."""
    import torch
    from transformers import AutoModelForCausalLM

    from ingot.runtime.llm import LLM, SamplingParams

    hf = AutoModelForCausalLM.from_pretrained(wide_llama_dir, dtype="float32").eval()
    rng = np.random.default_rng(3)
    shared = rng.integers(2, 300, 40).tolist()
    prompts = [shared + rng.integers(2, 300, n).tolist() for n in (3, 17, 30)] + [rng.integers(2, 300, 21).tolist()]
    llm = LLM(str(wide_bundle), kv_cache_memory=8 << 20)
    assert llm.engine.runner.mapped is not None
    outs = llm.generate(prompts, SamplingParams(max_tokens=24, temperature=0, ignore_eos=True))
    for prompt, out in zip(prompts, outs):
        with torch.no_grad():
            want = hf.generate(torch.tensor([prompt]), max_new_tokens=24, do_sample=False, min_new_tokens=24)[0, len(prompt):]
        assert list(out.token_ids) == want.tolist()
    runner = llm.engine.runner
    assert runner.windows.seq_ids == [] and runner.windows.rows == {}  # no decode row was ever gathered
    # what the windows hold beside the pool: the prefills' scratch rows and page tables, under the
    # KV of the sequences in flight (4 x 90 tokens)
    assert runner.windows_bytes() < 4 * 90 * runner.info.kv_bytes_per_token


def test_plans_whose_blocks_are_not_whole_pages_gather(llama_bundle):
    runner = load_runner(llama_bundle, kv_cache_memory=1 << 20)
    assert runner.info.head_dim * runner.info.kv_block_size * 4 < 4096 and runner.mapped is None
    assert "attention windows up to" in str(runner.memory())
