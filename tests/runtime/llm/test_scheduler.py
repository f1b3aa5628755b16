"""Scheduler: token budget, decode first, chunked prefill, preemption, finishing, queue bounds."""

import numpy as np
import pytest

from ingot.runtime.llm import (
    FinishReason,
    QueueFullError,
    SamplingParams,
    Scheduler,
    SchedulerConfig,
    SchedulerOutput,
    Sequence,
    SequenceStatus,
)
from ingot.runtime.llm.batch import pack_step


def make(num_blocks=64, **config) -> Scheduler:
    defaults = dict(max_num_tokens=8, max_num_seqs=8, max_model_len=32, max_waiting=8, block_size=4)
    return Scheduler(SchedulerConfig(**{**defaults, **config}), num_blocks)


def request(request_id: str, prompt, max_tokens=4, **params) -> Sequence:
    return Sequence(request_id, tuple(prompt), SamplingParams(max_tokens=max_tokens, **params))


def fake_model(output: SchedulerOutput) -> list[int]:
    """Test double for the model: a token from the last fed token and its position, so a
    recomputed sequence samples exactly what it would have without preemption."""
    return [(7 * (s.context_len - 1) + s.token_ids[-1]) % 50 + 10 for s in output.sampling]


def step(sched: Scheduler):
    output = sched.schedule()
    return output, sched.update(output, fake_model(output))


def chunks(output: SchedulerOutput) -> dict[str, int]:
    return {s.request_id: s.num_new_tokens for s in output.sequences}


def run(sched: Scheduler, max_steps=200) -> list[SchedulerOutput]:
    outputs = []
    while sched.has_unfinished:
        assert len(outputs) < max_steps, "no progress"
        outputs.append(step(sched)[0])
    return outputs


def test_chunked_prefill_splits_a_long_prompt_by_the_budget():
    sched = make()
    a = request("a", range(20), max_tokens=2)
    sched.add(a)
    out1, res1 = step(sched)
    (s1,) = out1.sequences
    assert (s1.num_computed_tokens, s1.token_ids, s1.samples, res1) == (0, tuple(range(8)), False, [])
    assert s1.block_table == (0, 1) and pack_step(out1, 4).slot_mapping.tolist() == list(range(8))
    out2, _ = step(sched)
    (s2,) = out2.sequences
    assert s2.num_computed_tokens == 8 and pack_step(out2, 4).positions.tolist() == list(range(8, 16))
    assert s2.block_table == (0, 1, 2, 3) and pack_step(out2, 4).slot_mapping.tolist() == list(range(8, 16))
    out3, res3 = step(sched)
    (s3,) = out3.sequences
    assert s3.num_computed_tokens == 16 and s3.samples and s3.block_table == (0, 1, 2, 3, 4)
    assert [(r.request_id, r.token_id, r.num_output_tokens) for r in res3] == [("a", 12, 1)]  # (7 * 19 + 19) % 50 + 10
    out4, res4 = step(sched)
    assert out4.sequences[0].token_ids == (res3[0].token_id,) and out4.sequences[0].num_computed_tokens == 20
    assert res4[0].finish_reason is FinishReason.LENGTH and a.output_token_ids == [12, 12]


def test_budget_is_shared_and_never_exceeded():
    sched = make()
    for i, name in enumerate("abc"):
        sched.add(request(name, range(10 * i, 10 * i + 5)))
    out = sched.schedule()
    assert chunks(out) == {"a": 5, "b": 3} and out.num_tokens == 8
    sched.update(out, fake_model(out))
    out = sched.schedule()
    assert chunks(out) == {"a": 1, "b": 2, "c": 5}  # decode first, then the rest of b's prefill, then c


def test_decode_first_then_waiting_with_the_rest():
    sched = make()
    sched.add(request("a", range(3), max_tokens=8))
    step(sched)
    sched.add(request("b", range(100, 120)))
    out = sched.schedule()
    assert [(s.request_id, s.num_new_tokens, s.samples) for s in out.sequences] == [("a", 1, True), ("b", 7, False)]


def test_packed_slots_follow_the_block_table():
    sched = make(block_size=2)
    sched.add(request("a", range(3)))
    sched.add(request("b", range(10, 13)))
    out = sched.schedule()
    a, b = out.sequences
    assert (a.block_table, b.block_table) == ((0, 1), (2, 3))
    assert pack_step(out, 2).slot_mapping.tolist() == [0, 1, 2, 4, 5, 6]
    sched.update(out, fake_model(out))
    out = sched.schedule()
    a, b = out.sequences
    assert (a.block_table, b.block_table) == ((0, 1), (2, 3))
    batch = pack_step(out, 2)
    assert (batch.positions.tolist(), batch.slot_mapping.tolist()) == ([3, 3], [3, 7])


def test_max_num_seqs_caps_running():
    sched = make(max_num_seqs=2)
    for name in "abc":
        sched.add(request(name, [1]))
    assert chunks(sched.schedule()) == {"a": 1, "b": 1}


def test_preemption_takes_the_most_recent_arrival_and_recomputes():
    sched = make(num_blocks=4, block_size=2, max_model_len=8, max_num_tokens=16)
    for name, start in (("a", 0), ("b", 10), ("c", 20)):
        sched.add(request(name, [start, start + 1], max_tokens=3))
    out1, _ = step(sched)
    assert [s.block_table for s in out1.sequences] == [(0,), (1,), (2,)]
    out2, _ = step(sched)  # every decode needs a new block; only block 3 is free
    assert out2.preempted == ("c",) and chunks(out2) == {"a": 1, "b": 1}
    assert [s.block_table for s in out2.sequences] == [(0, 3), (1, 2)]
    c = sched.requests["c"]
    assert (c.status, c.num_computed_tokens, c.block_table, list(sched.waiting)) == (SequenceStatus.WAITING, 0, [], [c])
    assert sched.num_preemptions == 1 and c.num_preemptions == 1
    out3, _ = step(sched)  # a, b finish; c cannot be admitted in this step (no free block)
    assert chunks(out3) == {"a": 1, "b": 1}
    out4, _ = step(sched)
    assert chunks(out4) == {"c": 3}  # the prompt and its first output token, recomputed
    assert out4.sequences[0].num_computed_tokens == 0  # c's cached block was reused by b: no hit
    run(sched)
    assert c.output_token_ids == expected_alone([20, 21], 3)


def test_preempted_sequence_waits_for_blocks_and_recomputes():
    sched = make(num_blocks=4, block_size=2, max_model_len=8, max_num_tokens=16)
    sched.add(request("a", [0, 1], max_tokens=6))
    sched.add(request("b", [5, 6, 7, 8, 9], max_tokens=6))
    trace = []
    while sched.has_unfinished:
        out, _ = step(sched)
        trace.append(([(s.request_id, s.num_computed_tokens, s.num_new_tokens, s.block_table) for s in out.sequences],
                      out.preempted, list(sched.block_manager.free_queue)))
    assert trace == [
        ([("a", 0, 2, (0,)), ("b", 0, 5, (1, 2, 3))], (), []),
        # a needs a block: b (the tail) goes, its blocks return last-first: [3, 2, 1]; a takes 3
        ([("a", 2, 1, (0, 3))], ("b",), [2, 1]),
        # b's cached blocks 1, 2 are free hits but it needs a third: not admitted
        ([("a", 3, 1, (0, 3))], (), [2, 1]),
        ([("a", 4, 1, (0, 3, 2))], (), [1]),  # reusing block 2 evicts b's second block
        ([("a", 5, 1, (0, 3, 2))], (), [1]),
        ([("a", 6, 1, (0, 3, 2, 1))], (), [1, 2, 3, 0]),  # a finishes by length and frees its blocks
        ([("b", 0, 6, (1, 2, 3))], (), [0]),  # b recomputes prompt + first output token
        ([("b", 6, 1, (1, 2, 3, 0))], (), [0, 3, 2, 1]),  # b reaches max_model_len
    ]
    assert sched.num_preemptions == 1 and sched.requests == {}


def expected_alone(prompt, max_tokens, max_model_len=32) -> list[int]:
    sched = make(num_blocks=64, max_model_len=max_model_len)
    seq = request("x", prompt, max_tokens=max_tokens)
    sched.add(seq)
    run(sched)
    return seq.output_token_ids


def test_simulated_run_finishes_everything_and_frees_all_blocks():
    sched = make(num_blocks=10, block_size=4, max_model_len=40, max_num_tokens=12, max_num_seqs=4, max_waiting=16)
    shared = list(range(50, 58))
    prompts = {f"r{i}": shared + list(range(i, i + 3 * i + 1)) for i in range(8)}
    seqs = [request(rid, prompt, max_tokens=5 + i) for i, (rid, prompt) in enumerate(prompts.items())]
    for seq in seqs:
        sched.add(seq)
    outputs = run(sched)
    assert all(out.num_tokens <= 12 and out.num_seqs <= 4 for out in outputs)
    for i, seq in enumerate(seqs):
        assert seq.status is SequenceStatus.FINISHED and seq.finish_reason is FinishReason.LENGTH
        assert seq.output_token_ids == expected_alone(prompts[seq.request_id], 5 + i, max_model_len=40)
    bm = sched.block_manager
    assert bm.num_free_blocks == 10 and all(b.ref_count == 0 for b in bm.blocks)
    assert not sched.requests and not sched.running and not sched.waiting
    assert bm.prefix_cache_hits > 0 and sched.num_preemptions > 0
    stats = sched.stats()
    assert (stats.num_running, stats.num_waiting, stats.kv_cache_usage) == (0, 0, 0.0)


def test_prefix_hit_skips_cached_blocks():
    sched = make()
    sched.add(request("a", range(10), max_tokens=1))
    run(sched)
    sched.add(request("b", [*range(8), 40, 41], max_tokens=1))
    (b,) = sched.schedule().sequences
    assert (b.num_computed_tokens, b.token_ids) == (8, (40, 41))
    assert b.block_table[:2] == (0, 1)


def test_eos_and_stop_token_ids_finish_with_stop():
    token = (7 * 2 + 2) % 50 + 10  # what the fake model samples after prompt [0, 1, 2]
    sched = make(max_num_tokens=16)
    eos = Sequence("eos", (0, 1, 2), SamplingParams(max_tokens=9), eos_token_id=token)
    ignored = Sequence("ignored", (0, 1, 2), SamplingParams(max_tokens=2, ignore_eos=True), eos_token_id=token)
    stop_id = request("stop_id", [0, 1, 2], max_tokens=9, stop_token_ids=[token])
    for seq in (eos, ignored, stop_id):
        sched.add(seq)
    _, results = step(sched)
    assert [(r.request_id, r.finish_reason) for r in results] == [
        ("eos", FinishReason.STOP), ("ignored", None), ("stop_id", FinishReason.STOP)]
    run(sched)
    assert ignored.finish_reason is FinishReason.LENGTH and len(ignored.output_token_ids) == 2


def test_max_model_len_finishes_with_length():
    sched = make(max_model_len=6)
    seq = request("a", range(4), max_tokens=100)
    sched.add(seq)
    run(sched)
    assert seq.num_tokens == 6 and seq.finish_reason is FinishReason.LENGTH


def test_bounded_queue_rejects():
    sched = make(max_waiting=2)
    sched.add(request("a", [1]))
    sched.add(request("b", [1]))
    with pytest.raises(QueueFullError, match=r"waiting queue is full \(2 requests\)"):
        sched.add(request("c", [1]))
    assert [s.request_id for s in sched.waiting] == ["a", "b"] and "c" not in sched.requests


def test_pool_smaller_than_max_model_len_is_refused():
    with pytest.raises(ValueError, match="holds 16 tokens, fewer than max_model_len 32"):
        make(num_blocks=4, block_size=4, max_model_len=32)


def test_abort_frees_blocks_at_once():
    sched = make(num_blocks=16, max_num_tokens=16)
    a, b = request("a", range(10)), request("b", range(6))
    sched.add(a)
    sched.add(b)
    out = sched.schedule()
    assert sched.block_manager.num_free_blocks == 16 - 3 - 2
    assert sched.abort("a") and sched.block_manager.num_free_blocks == 16 - 2
    assert a.status is SequenceStatus.FINISHED and a.finish_reason is FinishReason.ABORT and a.block_table == []
    results = sched.update(out, fake_model(out))  # the step in flight still commits b, skips a
    assert [r.request_id for r in results] == ["b"] and b.num_computed_tokens == 6
    assert sched.abort("a") is False and sched.abort("nobody") is False
    assert sched.abort("b") and sched.block_manager.num_free_blocks == 16 and not sched.has_unfinished


def test_empty_output():
    sched = make()
    out = sched.schedule()
    assert out == SchedulerOutput.make_empty() and out.is_empty and sched.update(out, []) == []


def check_invariants(sched: Scheduler) -> None:
    bm = sched.block_manager
    refs = [0] * bm.num_blocks
    for seq in sched.running:
        assert seq.num_computed_tokens <= len(seq.block_table) * bm.block_size
        for block_id in seq.block_table:
            refs[block_id] += 1
    assert all(not seq.block_table for seq in sched.waiting)
    assert refs == [b.ref_count for b in bm.blocks]
    assert set(bm.free_queue) == {b.block_id for b in bm.blocks if b.ref_count == 0}
    assert all(bm.blocks[i].hash == h for h, i in bm.cached.items())
    assert [s.arrival for s in sched.running] == sorted(s.arrival for s in sched.running)


def test_seeded_stress_keeps_invariants():
    rng = np.random.default_rng(0)
    sched = make(num_blocks=12, block_size=4, max_model_len=48, max_num_tokens=16, max_num_seqs=6, max_waiting=64)
    prefixes = [list(range(100, 112)), list(range(200, 204))]
    for i in range(40):
        prompt = prefixes[i % 2] + rng.integers(0, 50, int(rng.integers(1, 20))).tolist()
        sched.add(request(f"r{i}", prompt, max_tokens=int(rng.integers(1, 12))))
    steps = 0
    while sched.has_unfinished:
        out, _ = step(sched)
        assert out.num_tokens <= 16 and out.num_seqs <= 6 and steps < 1000
        if steps % 7 == 3 and sched.running:
            sched.abort(sched.running[-1].request_id)
        check_invariants(sched)
        steps += 1
    assert sched.block_manager.num_free_blocks == 12
    assert sched.num_preemptions > 0 and sched.block_manager.prefix_cache_hits > 0
