"""The engine loop through the `Runner` protocol alone, with a small counting runner in place of a plan.

`CountingRunner` keeps its own paged pool: each new token's id goes into the pool at its slot, and
the next token is a function of every token of the sequence's context, read back from the pool
through the block table. So a wrong slot, block table, chunk boundary, prefix-cache hit or
preemption shows as a wrong token against `reference`, which knows nothing of blocks. The
tokenizer is a real `tokenizers` word-level model, saved and loaded the way a bundle's is.
"""

from __future__ import annotations

import numpy as np
import pytest

from ingot.plans import TokenizerInfo
from ingot.plans.llm import LLMInfo
from ingot.runtime import InputError
from ingot.runtime.llm import (
    LLM,
    FinishReason,
    LLMEngine,
    PromptTooLongError,
    RunnerMemory,
    SamplingParams,
    SchedulerOutput,
)
from ingot.runtime.llm.batch import pack_step
from ingot.runtime.tokenizer import TextTokenizer

VOCAB = 64
EOS = 1


def next_token(context: list[int]) -> int:
    """The counting model: a function of the whole context, never EOS."""
    return 2 + (sum(t * (i + 1) for i, t in enumerate(context)) + len(context)) % (VOCAB - 2)


def reference(prompt: list[int], max_tokens: int) -> tuple[int, ...]:
    out = list(prompt)
    for _ in range(max_tokens):
        out.append(next_token(out))
    return tuple(out[len(prompt):])


class CountingRunner:
    """A `Runner`: `execute` writes each new token into its pool and returns one-hot logits of
    `next_token(context)`, the context read from the pool through the block table."""

    def __init__(self, tokenizer: TextTokenizer, num_blocks: int = 64, **limits):
        base = dict(num_layers=1, num_heads=1, num_kv_heads=1, head_dim=1, vocab_size=VOCAB, kv_block_size=4,
                    max_num_tokens=32, max_num_seqs=8, max_model_len=48, eos_token_ids=[EOS])
        self.info = LLMInfo(**base | limits)
        self.num_blocks, self.tokenizer = num_blocks, tokenizer
        self.pool = np.full(num_blocks * self.info.kv_block_size, -1, np.int64)  # slot -> token id
        self.steps: list[SchedulerOutput] = []
        self.closed = False

    def execute(self, out: SchedulerOutput) -> np.ndarray:
        self.steps.append(out)
        bs = self.info.kv_block_size
        batch = pack_step(out, bs)
        self.pool[batch.slot_mapping] = batch.input_ids
        logits = np.zeros((len(out.sampling), VOCAB), np.float32)
        for row, s in enumerate(out.sampling):
            positions = np.arange(s.context_len)
            table = np.asarray(s.block_table)
            context = self.pool[table[positions // bs] * bs + positions % bs]
            assert (context >= 0).all(), "read a slot nothing was written to"
            logits[row, next_token(context.tolist())] = 1.0
        return logits

    def memory(self) -> RunnerMemory:
        return RunnerMemory(self.pool.nbytes)

    def close(self) -> None:
        self.closed = True


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> TextTokenizer:
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["<pad>", "</s>", *(f"w{i}" for i in range(2, VOCAB))]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    root = tmp_path_factory.mktemp("tok")
    (root / "tokenizer").mkdir()
    tok.save(str(root / "tokenizer" / "tokenizer.json"))
    return TextTokenizer(root, TokenizerInfo(files=[], input_map={"input_ids": "ids"}))


GREEDY = SamplingParams(temperature=0, max_tokens=10)
PROMPTS = [[5, 9, 3], list(range(2, 22)), [7] * 13, [40, 41]]


def test_generate_through_the_protocol_equals_the_reference(tokenizer):
    runner = CountingRunner(tokenizer)
    llm = LLM.from_runner(runner, max_num_tokens=8)  # 20-token prompt: chunked prefill over three steps
    outputs = llm.generate(PROMPTS, GREEDY)
    assert [o.token_ids for o in outputs] == [reference(p, 10) for p in PROMPTS]
    assert all(o.finish_reason is FinishReason.LENGTH for o in outputs)
    assert outputs[0].text.split() == [f"w{t}" for t in outputs[0].token_ids]  # detokenized by the real tokenizer
    assert max(step.num_tokens for step in runner.steps) <= 8
    assert any(not s.samples for step in runner.steps for s in step.sequences)  # a chunk that samples nothing
    llm.close()
    assert runner.closed


def test_prefix_hits_and_preemption_read_the_right_blocks(tokenizer):
    shared = list(range(10, 30))  # five full blocks
    prompts = [shared + [3], shared + [4, 5], shared + [6]]
    runner = CountingRunner(tokenizer)
    llm = LLM.from_runner(runner)
    (first,) = llm.generate([prompts[0]], GREEDY)
    rest = llm.generate(prompts[1:], GREEDY)
    assert [o.token_ids for o in (first, *rest)] == [reference(p, 10) for p in prompts]
    assert all(o.metrics.num_cached_tokens == 20 for o in rest)
    assert llm.engine.stats().prefix_cache_hits >= 40
    # 12 blocks hold one max_model_len sequence: four 31-token requests preempt one another
    small = CountingRunner(tokenizer, num_blocks=12)
    long = SamplingParams(temperature=0, max_tokens=25)
    crowded = LLM.from_runner(small).generate([[i, i + 1, i + 2, i + 3, i + 4, i + 5] for i in range(2, 6)], long)
    assert [o.token_ids for o in crowded] == [reference([i, i + 1, i + 2, i + 3, i + 4, i + 5], 25) for i in range(2, 6)]


def test_preemptions_are_counted(tokenizer):
    small = CountingRunner(tokenizer, num_blocks=12)
    llm = LLM.from_runner(small)
    llm.generate([[i] * 6 for i in range(2, 6)], SamplingParams(temperature=0, max_tokens=25))
    stats = llm.engine.stats()
    assert stats.num_preemptions > 0 and stats.num_free_blocks == stats.num_blocks == 12
    assert stats.kv_cache_usage == 0.0


def test_the_engine_checks_requests_and_the_report_carries_the_runner_memory(tokenizer):
    runner = CountingRunner(tokenizer)
    engine = LLMEngine(runner)
    engine.add_request("a", [5, 6], GREEDY)
    with pytest.raises(InputError, match="'a' is already in use"):
        engine.add_request("a", [7], GREEDY)
    with pytest.raises(PromptTooLongError, match="49 tokens, more than max_model_len 48"):
        engine.add_request("b", [3] * 49, GREEDY)
    with pytest.raises(InputError, match="within 0..63"):
        engine.add_request("c", [64], GREEDY)
    assert list(engine.requests) == ["a"] and len(engine.scheduler.waiting) == 1
    engine.step()
    assert engine.stats().num_running == 1 and engine.stats().num_free_blocks < 64
    assert engine.abort("a") and engine.stats().num_free_blocks == 64  # freed at once
    report = engine.kv_report()
    assert report.memory == RunnerMemory(64 * 4 * 8) and report.max_tokens == 256
    assert str(report).startswith("kv cache: 64 blocks x 4 tokens = 256 tokens, 0.0 MiB")


def test_text_prompts_get_bos_and_stop_at_eos(tokenizer):
    runner = CountingRunner(tokenizer, bos_token_id=0, add_bos=True)
    engine = LLMEngine(runner)
    assert engine.tokenize("w5 w9") == (0, 5, 9)
    runner.info = runner.info.model_copy(update={"eos_token_ids": [reference([0, 5, 9], 3)[2]]})
    (out,) = LLM.from_runner(runner).generate(["w5 w9"], SamplingParams(temperature=0, max_tokens=10))
    assert out.token_ids == reference([0, 5, 9], 3) and out.finish_reason is FinishReason.STOP
