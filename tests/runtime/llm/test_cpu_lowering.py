"""The cpu lowering's runtime half (ingot/runtime/llm/cpu_lowering.py) and the ONNX Runtime runner:
packing a step, its plan calls and inputs, the windows gathered from the pool, the KV pool's limits."""

import numpy as np
import pytest

from ingot.plans import llm as names
from ingot.plans import open_bundle
from ingot.plans.llm import LLMInfo
from ingot.runtime.llm.batch import pack
from ingot.runtime.llm.cpu_lowering import plan_calls, plan_feeds, run_calls, select, window_feeds
from ingot.runtime.llm.runner import load_runner


@pytest.fixture(scope="module")
def hf(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype="float32").eval()


def info(**kw) -> LLMInfo:
    base = dict(num_layers=1, num_heads=4, num_kv_heads=2, head_dim=8, vocab_size=10, kv_block_size=4,
                max_num_tokens=64, max_num_seqs=4, max_model_len=32)
    return LLMInfo(**base | kw)


def test_pack_lays_out_a_ragged_step():
    b = pack([[7, 8, 9], [5]], past_lens=[0, 6], block_tables=[[3], [1, 4]], block_size=4, logits_rows=[[2], [0]])
    assert b.input_ids.tolist() == [7, 8, 9, 5] and b.positions.tolist() == [0, 1, 2, 6]
    assert b.slot_mapping.tolist() == [12, 13, 14, 18]  # block 3 offsets 0..2; block 4 offset 2
    assert b.logits_indices.tolist() == [2, 3] and b.query_start_loc.tolist() == [0, 3, 4]
    assert b.context_lens.tolist() == [3, 7] and b.block_tables.tolist() == [[3, 0], [1, 4]]


def test_plan_calls_split_a_step_the_way_group_query_attention_takes_it():
    b = pack([[7], [7, 8, 9], [5], [1, 2, 3], [4, 4]], past_lens=[6, 0, 2, 0, 3], block_tables=[[1, 4], [3], [2], [5], [6, 7]],
             block_size=4, logits_rows=[[0], [2], [0], [], [1]])
    assert [c.tolist() for c in plan_calls(b)] == [[0, 2], [1, 3], [4]]  # decodes; scratch prefills of 3; a chunk
    assert [c.tolist() for c in plan_calls(b, max_tokens=4)] == [[0, 2], [1], [3], [4]]  # at most 4 tokens a call
    sub, mine = select(b, np.array([1, 3]))
    assert sub.input_ids.tolist() == [7, 8, 9, 1, 2, 3] and sub.query_start_loc.tolist() == [0, 3, 6]
    assert sub.logits_indices.tolist() == [2] and mine.tolist() == [1]  # seq 3 samples nothing
    assert sub.slot_mapping.tolist() == [12, 13, 14, 20, 21, 22]
    logits = run_calls(b, lambda sub: sub.input_ids[sub.logits_indices][:, None].astype(np.float32))
    assert logits[:, 0].tolist() == [7, 9, 5, 4]  # each sampled row back in the step's order


def test_cpu_attention_inputs_and_windows_gather_each_past_block():
    b = pack([[7], [5]], past_lens=[6, 2], block_tables=[[1, 4], [3, 8]], block_size=4, logits_rows=[[0], [0]])
    feeds = plan_feeds(b)
    assert feeds[names.ATTN_QUERY_SHAPE].tolist() == [2, 1, -1]
    assert feeds[names.ATTN_SEQLENS_K].tolist() == [6, 2] and int(feeds[names.ATTN_TOTAL_LEN]) == 7
    with pytest.raises(AssertionError, match="plan_calls"):
        plan_feeds(pack([[7], [5, 6]], [6, 2], [[1, 4], [3]], 4, [[0], [1]]))
    cache = np.arange(2 * 9 * 4 * 8, dtype=np.float32).reshape(2, 9, 4, 8)  # [kv, blocks, block, dim]
    windows = window_feeds(b, info(), {names.key_cache(0): cache, names.value_cache(0): -cache})
    key = windows[names.window(0, "key")]
    assert key.shape == (2, 2, 8, 8)  # [B, kv, whole blocks, dim]: the kernel's present fits past + new
    np.testing.assert_array_equal(key[0, :, :6], cache[:, [1, 4]].reshape(2, 8, 8)[:, :6])  # blocks 1, then 4
    np.testing.assert_array_equal(key[1, :, :2], cache[:, 3, :2])  # block 8 holds no past: not read
    np.testing.assert_array_equal(windows[names.window(0, "value")][1, :, :2], -cache[:, 3, :2])


def test_a_sliding_layer_never_reads_blocks_before_its_window():
    # layer 0 attends the last 5 tokens, layer 1 the whole context; sequence 0 has 10 tokens past
    b = pack([[7], [5]], past_lens=[10, 2], block_tables=[[1, 4, 6], [3, 8, 0]], block_size=4, logits_rows=[[0], [0]])
    cache = np.arange(2 * 9 * 4 * 8, dtype=np.float32).reshape(2, 9, 4, 8)  # [kv, blocks, block, dim]
    poisoned = cache.copy()
    poisoned[:, 1] = np.nan  # tokens 0..3 of sequence 0: before the window of a query at 10 (it reaches 6..10)
    caches = {names.key_cache(i): poisoned for i in (0, 1)} | {names.value_cache(i): poisoned for i in (0, 1)}
    windows = window_feeds(b, info(num_layers=2, sliding_window=5, sliding_layers=[0]), caches)
    sliding, full = windows[names.window(0, "key")][0], windows[names.window(1, "key")][0]
    assert not np.isnan(sliding).any()  # never read, and the rows stay finite (the kernel masks them)
    np.testing.assert_array_equal(sliding[:, 4:10], cache[:, [4, 6]].reshape(2, 8, 8)[:, :6])  # blocks 4, 6: tokens 4..9
    assert np.isnan(full[:, :4]).all()  # the full layer reads the whole past
    with pytest.raises(ValueError):
        info(sliding_window=0)


@pytest.mark.parametrize("seq_ids", [None, [7]], ids=["gathered", "resident"])
def test_runner_decodes_through_the_cache_like_a_full_forward(llama_bundle, hf, seq_ids):
    """Without sequence ids each decode gathers its past from the pool; with them the decode
    window stays filled from one step to the next."""
    import torch

    runner = load_runner(llama_bundle, kv_cache_memory=1 << 20)
    tokens = [1, 57, 23, 99, 4, 18, 77, 3, 250, 41, 9, 12, 60]  # twice: 26 tokens over two blocks of 16
    with torch.no_grad():
        want = hf(torch.tensor([tokens * 2])).logits[0].numpy()
    table, seq = [5, 2, 7], tokens * 2
    got = [runner.forward(pack([seq[:9]], [0], [table], 16, [[8]]))[0]]
    for p in range(9, len(seq)):  # one token at a time, every earlier K/V read from the pool
        got.append(runner.forward(pack([[seq[p]]], [p], [table], 16, [[0]], seq_ids))[0])
    assert np.abs(np.array(got) - want[8:]).max() < 1e-4


def test_windows_bound_in_place_give_the_plain_run_logits(llama_bundle):
    """The runner binds each layer's window and GroupQueryAttention's present to one array (the
    kernel appends in place), and keeps decode windows from step to step: sequences joining,
    staying, leaving and coming back in any order, a chunk and prefills between. Every call's
    outputs equal a plain run of the plan over windows freshly gathered from the pool."""
    runner = load_runner(llama_bundle, kv_cache_memory=1 << 20)
    rng = np.random.default_rng(0)
    runner.kv.pool[...] = rng.standard_normal(runner.kv.pool.shape, dtype=np.float32)
    backend, info, bs = runner.model.backend, runner.info, 16
    tables = {1: [1, 2, 3], 2: [4, 5], 3: [6, 7, 8], 4: [9, 10]}

    def decode(ids, pasts):
        return pack([[int(rng.integers(2, 200))] for _ in ids], pasts, [tables[i] for i in ids], bs, [[0]] * len(ids), ids)

    steps = [(decode([1, 2, 3], [40, 17, 33]), [1, 2, 3]),  # all three join
             (decode([1, 2, 3], [41, 18, 34]), [1, 2, 3]),  # the same group: nothing gathered
             (pack([[5, 6, 7, 8]], [30], [[11, 12, 13]], bs, [[3]]), None),  # a chunk after a past
             (decode([3, 1, 4], [35, 42, 20]), [1, 3, 4]),  # 2 leaves (3 moves to its row), 4 joins, new order
             (pack([[5, 6, 7], [1, 2, 3]], [0, 0], [[14], [15]], bs, [[2], [2]]), None),  # prefills from scratch
             (decode([3, 1, 4], [35, 42, 20]), [1, 3, 4]),  # the same step again: rows refilled from the pool
             (decode([2], [19]), [2])]  # 2 comes back alone
    for batch, rows in steps:
        plain = backend.run(plan_feeds(batch) | window_feeds(batch, info, runner.kv.caches))
        assert not any(names.is_window(n) for n in plain)
        logits = runner.forward(batch)  # writes the new rows into the pool
        np.testing.assert_allclose(logits, plain[names.LOGITS], atol=1e-5)
        new_keys = runner.kv.pool[0, 0].reshape(info.num_kv_heads, -1, info.head_dim)[:, batch.slot_mapping]
        np.testing.assert_allclose(new_keys, plain[names.present_key(0)].transpose(1, 0, 2), atol=1e-6)
        if rows is None:
            continue
        assert runner.windows.seq_ids == rows
        for r, seq in enumerate(rows):  # a decode row: the sequence's past and the token just decoded
            b = batch.seq_ids.tolist().index(seq)
            n = int(batch.context_lens[b])
            want = window_feeds(pack([[0]], [n], [tables[seq]], bs, [[0]]), info, runner.kv.caches)[names.window(0, "key")][0]
            np.testing.assert_allclose(runner.windows.rows[names.window(0, "key")][r][:, :n], want[:, :n], atol=1e-6)


def test_decode_windows_grow_one_dimension_at_a_time(llama_bundle):
    """More sequences add rows, a longer past adds width; neither grows the other (a window
    as long as max_model_len for every row made decodes twice as slow)."""
    runner = load_runner(llama_bundle, kv_cache_memory=1 << 20)
    shape = lambda: runner.windows.rows[names.window(0, "key")].shape  # noqa: E731
    tables = [[1 + 8 * i + j for j in range(8)] for i in range(12)]
    for n in range(1, 13):  # one more sequence each step, all at past 20
        runner.forward(pack([[5]] * n, [20] * n, tables[:n], 16, [[0]] * n, list(range(n))))
        assert n <= shape()[0] <= max(2 * n, 4) and shape()[2] == 32, (n, shape())
    runner.forward(pack([[5]], [100], tables[:1], 16, [[0]], [0]))  # one sequence, a long past
    assert shape()[0] >= 12 and 101 <= shape()[2] <= 160 and shape()[2] % 16 == 0, shape()


def test_resident_rows_survive_each_growth_of_the_windows(llama_bundle):
    """A decode group that stays resident while its past outgrows the window: each growth
    moves every row to its new place (into a new buffer, or within the old one once it is big
    enough), and after every step each row still holds its sequence's past from the pool."""
    runner = load_runner(llama_bundle, kv_cache_memory=1 << 20)
    rng = np.random.default_rng(1)
    runner.kv.pool[...] = rng.standard_normal(runner.kv.pool.shape, dtype=np.float32)
    info, bs, ids = runner.info, 16, [4, 9, 2]
    tables = [[1 + 8 * i + j for j in range(8)] for i in range(3)]
    name = names.window(0, "value")
    widths, buffers = [], []
    for p in range(14, 110):
        runner.forward(pack([[int(rng.integers(2, 200))] for _ in ids], [p + i for i in range(3)], tables, bs, [[0]] * 3, ids))
        assert runner.windows.filled == [p + 1, p + 2, p + 3]  # resident: nothing was gathered again
        rows = runner.windows.rows[name]
        widths.append(rows.shape[2])
        buffers.append(runner.windows.buffers.flat[name])
        for r in range(3):
            n = p + r + 1
            want = window_feeds(pack([[0]], [n], [tables[r]], bs, [[0]]), info, runner.kv.caches)[name][0]
            np.testing.assert_array_equal(rows[r][:, :n], want[:, :n])
    grown = [i for i in range(1, len(widths)) if widths[i] > widths[i - 1]]
    assert any(buffers[i] is not buffers[i - 1] for i in grown), "no growth into a new buffer"
    assert any(buffers[i] is buffers[i - 1] for i in grown), "no growth within the buffer"


def test_manifest_records_the_limits_and_the_runtime_obeys_them(llama_bundle):
    m = open_bundle(llama_bundle).manifest
    assert (m.llm.max_num_tokens, m.llm.max_num_seqs, m.llm.kv_block_size) == (2048, 32, 16)
    assert m.llm.max_model_len == 256 and m.llm.eos_token_ids == [1]  # the tiny model's 256 positions
    runner = load_runner(llama_bundle, kv_cache_memory=1 << 20)
    assert runner.num_blocks == (1 << 20) // m.llm.kv_bytes_per_block
    assert runner.memory().kv_cache_bytes == runner.num_blocks * m.llm.kv_bytes_per_block


def test_kv_cache_smaller_than_one_sequence_is_refused(llama_bundle):
    from ingot.runtime.errors import RunError

    with pytest.raises(RunError, match="holds fewer tokens than max_model_len 256"):
        load_runner(llama_bundle, kv_cache_memory=4096)


def test_calls_of_more_tokens_than_max_model_len_run(llama_bundle):
    """A step may pack more tokens than one sequence holds (the budget is max_num_tokens); the
    fused rotary tables cover every packed token of a call, and a dense run of more rows than
    max_num_tokens is split into calls within it."""
    from ingot.runtime import load
    from ingot.runtime.llm import LLM, SamplingParams

    info = open_bundle(llama_bundle).manifest.llm
    assert info.max_model_len == 256 and info.max_num_tokens == 2048
    llm = LLM(llama_bundle, kv_cache_memory=1 << 24)
    prompts = [[5 + i] * 40 for i in range(10)]  # one scratch-prefill call of 400 tokens
    outs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=2, ignore_eos=True))
    alone = [llm.generate([p], SamplingParams(temperature=0, max_tokens=2, ignore_eos=True))[0] for p in prompts[:2]]
    assert [o.token_ids for o in outs[:2]] == [o.token_ids for o in alone]
    ids = np.random.default_rng(0).integers(2, 300, (9, 256))  # 2304 tokens > max_num_tokens
    logits = load(llama_bundle).run({"input_ids": ids, "attention_mask": np.ones_like(ids)})["logits"]
    one = load(llama_bundle).run({"input_ids": ids[8:], "attention_mask": np.ones_like(ids[8:])})["logits"]
    np.testing.assert_allclose(logits[8], one[0], atol=1e-4)


def test_kv_cache_memory_as_text_in_the_python_api(llama_bundle):
    """The API takes "256KiB" as the CLI's --kv-cache-memory does; a bad text is one InputError."""
    from ingot.runtime.errors import InputError

    per_block = open_bundle(llama_bundle).manifest.llm.kv_bytes_per_block
    assert load_runner(llama_bundle, kv_cache_memory="1MiB").num_blocks == (1 << 20) // per_block
    with pytest.raises(InputError, match="kv_cache_memory 'lots': expected bytes"):
        load_runner(llama_bundle, kv_cache_memory="lots")


def test_kv_cache_over_the_available_memory_is_one_clear_error(llama_bundle):
    from ingot.runtime.errors import RunError

    with pytest.raises(RunError, match=r"--kv-cache-memory 1\.0 TiB is more than the .* of memory available now"):
        load_runner(llama_bundle, kv_cache_memory=2**40)
