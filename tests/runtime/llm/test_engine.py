"""LLMEngine, LLM and AsyncLLM end to end on the tiny random Llama plan (paged KV, cpu target)."""

import asyncio
import subprocess
import sys

import pytest

from ingot.runtime import InputError
from ingot.runtime.llm import (
    LLM,
    AsyncLLM,
    EngineDeadError,
    FinishReason,
    LLMEngine,
    PromptTooLongError,
    QueueFullError,
    SamplingParams,
    blocks_needed,
    load_runner,
)
from ingot.runtime.llm.llm import render_chat

PROMPTS = ["The quick brown fox", "A man is eating food.", "Plans are bundles with manifests, checksums and targets."]
GREEDY = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)


@pytest.fixture(scope="module")
def runner(llama_bundle):
    return load_runner(llama_bundle)


@pytest.fixture
def llm(runner) -> LLM:
    """A fresh engine (empty queues, empty prefix cache) over the shared runner."""
    return LLM.from_runner(runner)


def hf_greedy(folder, prompt_ids, max_new_tokens) -> tuple[int, ...]:
    import torch
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(folder).eval()
    ids = torch.tensor([prompt_ids])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                         min_new_tokens=max_new_tokens, do_sample=False, eos_token_id=None, pad_token_id=1)
    return tuple(out[0, len(prompt_ids):].tolist())


def all_blocks_free(engine: LLMEngine) -> bool:
    bm = engine.scheduler.block_manager
    return bm.num_free_blocks == bm.num_blocks and not engine.has_unfinished()


def test_import_does_not_load_the_backend():
    code = "import sys, ingot.runtime.llm; print([m for m in ('onnxruntime', 'torch', 'jinja2') if m in sys.modules])"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]"


def test_greedy_generate_equals_transformers(llm, tiny_llama_dir):
    outputs = llm.generate(PROMPTS, GREEDY)
    assert [o.prompt for o in outputs] == PROMPTS
    for out in outputs:
        assert out.prompt_token_ids[0] == 0  # BOS, as the Hugging Face tokenizer adds it
        assert out.token_ids == hf_greedy(tiny_llama_dir, list(out.prompt_token_ids), 12)
        assert out.finished and out.finish_reason is FinishReason.LENGTH
        full = llm.runner.tokenizer.tok.decode(list(out.token_ids))
        # The text is the full decode, less a last character whose bytes the 12 tokens did not complete.
        assert full.startswith(out.text) and not full[len(out.text):].strip("\ufffd")
        m = out.metrics
        assert m.arrival_time <= m.first_token_time <= m.finish_time
    assert all_blocks_free(llm.engine)


def test_logprobs_equal_transformers_log_softmax_at_each_output_position(llm, tiny_llama_dir):
    """The chosen token's logprob and the top k are of the model's raw distribution (a tempered,
    top-k request too), within 1e-4 of transformers' forward pass; a request that does not ask
    gets none."""
    import numpy as np
    import torch
    from transformers import LlamaForCausalLM

    params = [GREEDY.model_copy(update={"logprobs": 3}),
              SamplingParams(temperature=1.8, top_k=6, seed=4, max_tokens=12, ignore_eos=True, logprobs=0), GREEDY]
    outs = llm.generate(PROMPTS, params)
    assert outs[2].logprobs is None
    model = LlamaForCausalLM.from_pretrained(tiny_llama_dir).eval()
    decode = llm.runner.tokenizer.tok.decode
    for out, p in zip(outs[:2], params):
        ids = [*out.prompt_token_ids, *out.token_ids]
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0].double()
        ref = torch.log_softmax(logits, -1)[len(out.prompt_token_ids) - 1:-1].numpy()  # (12, vocab): output positions
        assert len(out.logprobs) == len(out.token_ids) == 12
        # Each token's own bytes, whole characters or not, join to the output's UTF-8.
        joined = b"".join(t.chosen.token_bytes for t in out.logprobs)
        assert joined.decode(errors="replace") == decode(list(out.token_ids)) and "\ufffd" in decode(list(out.token_ids))
        for t, token, row in zip(out.logprobs, out.token_ids, ref):
            assert t.chosen.token_id == token and t.chosen.token == decode([token], skip_special_tokens=False)
            assert abs(t.chosen.logprob - row[token]) < 1e-4
            top = [lp.token_id for lp in t.top]
            assert len(top) == p.logprobs
            np.testing.assert_allclose([lp.logprob for lp in t.top], row[top], atol=1e-4)
            if top:  # the top k: sorted, and no other token more likely than the last of them
                assert all(a.logprob >= b.logprob for a, b in zip(t.top, t.top[1:]))
                assert np.delete(row, top).max() <= t.top[-1].logprob + 1e-4
                assert top[0] == token  # greedy
                assert np.exp([lp.logprob for lp in t.top]).sum() <= 1
    assert all_blocks_free(llm.engine)


def test_a_first_step_that_is_a_chunk_without_logits_runs(llm, llama_bundle):
    """A fresh runner whose first call is a prompt's first chunk (no logits wanted: the budget
    is shorter than the prompt) gives the tokens of the shared runner's unchunked run."""
    prompt = PROMPTS[2]
    chunked = LLM.from_runner(load_runner(llama_bundle), max_num_tokens=4)
    assert chunked.engine.config.max_num_tokens == 4 and len(chunked.engine.tokenize(prompt)) > 4
    assert chunked.generate([prompt], GREEDY)[0].token_ids == llm.generate([prompt], GREEDY)[0].token_ids
    assert all_blocks_free(chunked.engine)


def test_more_prompts_than_the_queue_holds_all_finish_in_order(runner):
    llm = LLM.from_runner(runner, max_waiting=2)
    prompts = [f"{p} {i}" for i, p in enumerate(PROMPTS * 3)]
    outputs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=3, ignore_eos=True))
    assert [o.prompt for o in outputs] == prompts and all(len(o.token_ids) == 3 for o in outputs)
    alone = LLM.from_runner(runner).generate(prompts[4], SamplingParams(temperature=0, max_tokens=3, ignore_eos=True))
    assert outputs[4].token_ids == alone[0].token_ids


def test_max_tokens_and_stop_token_ids(llm):
    (full,) = llm.generate(PROMPTS[0], GREEDY)
    (short,) = llm.generate(PROMPTS[0], GREEDY.model_copy(update={"max_tokens": 5}))
    assert short.token_ids == full.token_ids[:5] and short.finish_reason is FinishReason.LENGTH
    stop_id = full.token_ids[3]
    first = full.token_ids.index(stop_id)
    (stopped,) = llm.generate(PROMPTS[0], GREEDY.model_copy(update={"stop_token_ids": (stop_id,)}))
    assert stopped.token_ids == full.token_ids[:first + 1] and stopped.finish_reason is FinishReason.STOP


def test_stop_string_cuts_the_text_and_finishes_early(llm):
    (full,) = llm.generate(PROMPTS[1], GREEDY.model_copy(update={"max_tokens": 24}))
    text = full.text
    start = next(i for i in range(4, len(text) - 2) if text.find(text[i:i + 2]) == i)  # first occurrence
    stop = text[start:start + 2]
    (cut,) = llm.generate(PROMPTS[1], GREEDY.model_copy(update={"max_tokens": 24, "stop": (stop,)}))
    assert cut.text == text[:start] and cut.finish_reason is FinishReason.STOP
    assert len(cut.token_ids) < len(full.token_ids) and full.token_ids[:len(cut.token_ids)] == cut.token_ids
    assert all_blocks_free(llm.engine)


def test_seeded_sampling_is_reproducible_alone_and_in_a_batch(llm):
    seeded = SamplingParams(temperature=1.0, top_p=0.95, seed=7, max_tokens=16, ignore_eos=True)
    (alone,) = llm.generate(PROMPTS[0], seeded)
    (again,) = llm.generate(PROMPTS[0], seeded)
    batch = llm.generate(PROMPTS, [seeded, GREEDY, seeded.model_copy(update={"seed": 8})])
    (other_seed,) = llm.generate(PROMPTS[0], seeded.model_copy(update={"seed": 8}))
    assert alone.token_ids == again.token_ids == batch[0].token_ids
    assert other_seed.token_ids != alone.token_ids
    assert batch[1].token_ids == llm.generate(PROMPTS[1], GREEDY)[0].token_ids


def test_prefix_cache_hit_gives_the_cold_tokens(llm):
    prompt = " ".join(PROMPTS * 3)  # > 3 blocks of 16 tokens
    (cold,) = llm.generate(prompt, GREEDY)
    (warm,) = llm.generate(prompt + " More text.", GREEDY)
    (cold_again,) = LLM.from_runner(llm.runner).generate(prompt + " More text.", GREEDY)
    assert cold.metrics.num_cached_tokens == 0 and warm.metrics.num_cached_tokens >= 32
    assert warm.token_ids == cold_again.token_ids
    assert llm.engine.stats().prefix_cache_hit_rate > 0


def test_tiny_kv_pool_preempts_and_every_request_finishes_correctly(llama_bundle, runner):
    info = runner.info
    one_sequence = blocks_needed(info.max_model_len, info.kv_block_size) * info.kv_bytes_per_block
    small = load_runner(llama_bundle, kv_cache_memory=one_sequence)
    llm = LLM.from_runner(small)
    assert llm.startup_report().max_tokens == info.max_model_len
    params = SamplingParams(temperature=0, max_tokens=60, ignore_eos=True)
    prompts = [f"{p} {i}" for i, p in enumerate(PROMPTS * 2)]
    outputs = llm.generate(prompts, params)
    assert llm.engine.stats().num_preemptions > 0
    expected = LLM.from_runner(runner).generate(prompts, params)
    assert [o.token_ids for o in outputs] == [o.token_ids for o in expected]
    assert all_blocks_free(llm.engine)


def test_over_long_prompt_is_refused_before_any_work(llm):
    too_long = "fox " * (llm.engine.config.max_model_len + 1)
    with pytest.raises(PromptTooLongError, match="max_model_len"):
        llm.generate([PROMPTS[0], too_long], GREEDY)
    stats = llm.engine.stats()
    assert stats.prefix_cache_queries == 0 and all_blocks_free(llm.engine)  # the good prompt never ran
    with pytest.raises(InputError, match="empty"):
        llm.generate([[]], GREEDY)
    with pytest.raises(InputError, match="within 0..319"):
        llm.generate([[5, 320]], GREEDY)


def test_full_queue_rejects_and_leaves_nothing_behind(runner):
    engine = LLMEngine(runner, max_waiting=2)
    engine.add_request("a", PROMPTS[0], GREEDY)
    engine.add_request("b", PROMPTS[1], GREEDY)
    with pytest.raises(QueueFullError, match="full"):
        engine.add_request("c", PROMPTS[2], GREEDY)
    assert sorted(engine.requests) == ["a", "b"] and len(engine.scheduler.waiting) == 2
    while engine.has_unfinished():
        engine.step()
    engine.add_request("c", PROMPTS[2], GREEDY)  # room again


def test_chat_without_a_template_is_a_clear_error(llm):
    with pytest.raises(InputError, match="no chat template"):
        llm.chat([{"role": "user", "content": "hi"}])


def test_render_chat_follows_hugging_face_conventions():
    template = ("{% for m in messages %}{{ bos_token }}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}\n"
                "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
    text = render_chat(template, [{"role": "user", "content": "Hi"}], bos_token="<s>", eos_token="</s>")
    assert text == "<s><|user|>\nHi</s>\n<|assistant|>\n"
    with pytest.raises(InputError, match="chat template: no system"):
        render_chat("{{ raise_exception('no system') }}", [])


# ---- AsyncLLM


async def collect(agen) -> list:
    return [out async for out in agen]


def test_async_streamed_deltas_concatenate_to_the_full_text(runner, llm):
    async def main():
        async with AsyncLLM.from_runner(runner) as engine:
            return await asyncio.gather(*(collect(engine.generate(p, GREEDY)) for p in PROMPTS))

    streams = asyncio.run(main())
    expected = llm.generate(PROMPTS, GREEDY)
    for outs, final in zip(streams, expected, strict=True):
        assert len(outs) == 12 and outs[-1].finished and not any(o.finished for o in outs[:-1])
        assert "".join(o.delta_text for o in outs) == outs[-1].text == final.text
        assert sum((o.delta_token_ids for o in outs), ()) == outs[-1].token_ids == final.token_ids


def test_async_cancel_mid_stream_frees_all_blocks_at_once(runner):
    long = SamplingParams(temperature=0, max_tokens=200, ignore_eos=True)

    async def main():
        engine = AsyncLLM.from_runner(runner)
        seen, in_use = [], []

        async def consume():
            async for out in engine.generate(PROMPTS[2], long):
                seen.append(out)
                in_use.append(engine.engine.scheduler.block_manager.num_free_blocks)

        task = asyncio.create_task(consume())
        while len(seen) < 3:
            await asyncio.sleep(0.001)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        freed = all_blocks_free(engine.engine)  # right after the cancel, no step in between needed

        gen = engine.generate(PROMPTS[0], long)  # leaving with aclose() aborts too
        async for out in gen:
            if len(out.token_ids) >= 2:
                break
        await gen.aclose()
        freed_after_aclose = all_blocks_free(engine.engine)
        after = await collect(engine.generate(PROMPTS[1], GREEDY))  # the engine still serves
        await engine.shutdown()
        return seen, in_use, freed, freed_after_aclose, after

    seen, in_use, freed, freed_after_aclose, after = asyncio.run(main())
    assert len(seen) >= 3 and seen[-1].finished is False and len(seen[-1].token_ids) < 200
    assert min(in_use) < runner.num_blocks  # it did hold blocks while streaming
    assert freed and freed_after_aclose
    assert after[-1].token_ids == LLM.from_runner(runner).generate(PROMPTS[1], GREEDY)[0].token_ids


def test_async_full_queue_rejects_at_submission(runner):
    async def main():
        engine = AsyncLLM.from_runner(runner, max_waiting=2)
        first = [engine.submit(p, GREEDY) for p in PROMPTS[:2]]
        with pytest.raises(QueueFullError):
            engine.submit(PROMPTS[2], GREEDY)
        with pytest.raises(PromptTooLongError):
            await anext(engine.generate("fox " * 300, GREEDY))
        outs = [await collect(engine.stream(r)) for r in first]
        await engine.shutdown()
        return outs

    outs = asyncio.run(main())
    assert all(o[-1].finished and len(o[-1].token_ids) == 12 for o in outs)


def test_async_shutdown_ends_pending_streams(runner):
    async def main():
        engine = AsyncLLM.from_runner(runner)
        request_id = engine.submit(PROMPTS[0], SamplingParams(max_tokens=200, ignore_eos=True))
        stream = engine.stream(request_id)
        await anext(stream)
        await engine.shutdown()
        with pytest.raises(EngineDeadError, match="shut down"):
            await anext(stream)
        return engine

    engine = asyncio.run(main())
    assert all_blocks_free(engine.engine)


def test_a_mixed_step_runs_decodes_and_prefills_apart_with_the_same_logits(runner):
    """A prefill listed before a decode: two plan calls (GroupQueryAttention takes one query
    length per call), logits back in step order, equal to each sequence run alone."""
    import numpy as np

    from ingot.runtime.llm.batch import pack
    from ingot.runtime.llm.cpu_lowering import plan_calls
    from ingot.runtime.llm.scheduler_output import ScheduledSequence, SchedulerOutput

    bs = runner.info.kv_block_size

    def seq(rid, tokens, past, blocks, samples=True):
        return ScheduledSequence(rid, tuple(tokens), past, tuple(blocks), samples, seq_id=ord(rid))

    history = list(range(20, 20 + 2 * bs))  # the decode's past, written to the cache first
    runner.execute(SchedulerOutput((seq("d", history, 0, [1, 2, 3], samples=False),)))
    prefill = seq("p", list(range(40, 40 + bs + 3)), 0, [5, 6])
    decode = seq("d", [7], 2 * bs, [1, 2, 3])
    step = SchedulerOutput((prefill, decode))
    batch = pack([s.token_ids for s in step.sequences], [0, 2 * bs], [[5, 6], [1, 2, 3]], bs, [[bs + 2], [0]])
    assert [c.tolist() for c in plan_calls(batch)] == [[0], [1]]  # two calls: the prefill, the decode
    mixed = runner.execute(step)
    alone = np.concatenate([runner.execute(SchedulerOutput((s,))) for s in (prefill, decode)])
    assert mixed.shape == (2, runner.info.vocab_size)
    np.testing.assert_allclose(mixed, alone, rtol=1e-5, atol=1e-5 * np.abs(alone).max())


def test_bench_warms_up_with_one_unrelated_batch_of_the_workload(runner):
    """`run_bench` first runs `concurrency` requests of the workload's lengths (a server's steady
    state: its windows grown to the workload), prompts that share no leading block with the
    measured ones or with each other, so the warm-up leaves nothing for the prefix cache to reuse."""
    from ingot.runtime.llm.bench import BenchConfig, make_prompts, run_bench

    engine = LLMEngine(runner)
    cfg = BenchConfig(num_requests=5, prompt_len=40, output_len=3, concurrency=3, prefix_len=16)
    prompts, warmups, _ = make_prompts(engine, cfg)
    assert len(warmups) == 3 and {len(p) for p in warmups} == {40}
    firsts = [tuple(p[:16]) for p in prompts + warmups]
    assert len(set(firsts[len(prompts):])) == 3 and not set(firsts[len(prompts):]) & set(firsts[:len(prompts)])
    result = run_bench(engine, cfg)
    assert result.output_tokens == 15 and result.prefix_cache_hit_rate > 0  # the measured requests share 16 tokens
    assert engine.stats().num_running == 0 and all_blocks_free(engine)
