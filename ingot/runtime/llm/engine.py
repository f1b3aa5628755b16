"""`LLMEngine`: the loop `step()` = schedule → execute → postprocess, over a runner.

The engine owns the requests (their detokenizers and times) and the scheduler; the runner
(runner.py) owns the KV pool and the model. `execute` touches only the runner, so an async
front end may run it in a worker thread while the event loop adds and aborts requests.
"""

from __future__ import annotations

import time
from collections.abc import Sequence as Seq
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ingot.runtime.errors import InputError
from ingot.runtime.llm.detokenizer import IncrementalDetokenizer
from ingot.runtime.llm.errors import PromptTooLongError
from ingot.runtime.llm.outputs import Logprob, RequestMetrics, RequestOutput, TokenLogprobs
from ingot.runtime.llm.runner import Runner, RunnerMemory
from ingot.runtime.llm.sampling import SampleLogprobs, Sampler, SamplingParams
from ingot.runtime.llm.scheduler import Scheduler, SchedulerConfig
from ingot.runtime.llm.scheduler_output import SchedulerOutput, SchedulerStats, StepResult
from ingot.runtime.llm.sequence import FinishReason, Sequence
from ingot.runtime.llm.token_texts import TokenTexts

if TYPE_CHECKING:
    from ingot.runtime.tokenizer import TextTokenizer

Prompt = str | Seq[int]


@dataclass(frozen=True)
class KVCacheReport:
    """The engine's limits and its runner's memory, reported at load."""

    num_blocks: int
    block_size: int
    max_model_len: int
    max_num_seqs: int
    max_num_tokens: int  # the token budget of a step
    memory: RunnerMemory

    @property
    def max_tokens(self) -> int:
        """Tokens of KV the pool holds across all sequences."""
        return self.num_blocks * self.block_size

    def __str__(self) -> str:
        return (f"kv cache: {self.num_blocks} blocks x {self.block_size} tokens = {self.max_tokens} tokens, "
                f"{self.memory} (max_model_len {self.max_model_len}, max_num_seqs {self.max_num_seqs}, "
                f"max_num_tokens {self.max_num_tokens} a step)")


@dataclass(eq=False)
class _Request:
    """Engine-side state of one unfinished request."""

    prompt: str | None
    seq: Sequence
    detok: IncrementalDetokenizer
    arrival_time: float
    scheduled_time: float | None = None  # first scheduled (the end of its queue time)
    first_token_time: float | None = None
    text: str = ""  # output text handed out so far (the deltas, joined)
    num_sent_tokens: int = 0  # output tokens handed out so far
    logprobs: list[TokenLogprobs] | None = None  # one per output token, when the request asks


# Token budget of a step unless asked otherwise (vLLM's max_num_batched_tokens), capped by the
# plan's limit. Every decode in flight waits for a step: shorter steps let decodes run between
# prefill chunks (lower time to first token under load) but make more, smaller plan calls. 768
# is where SmolLM2 on 2 cores met both the TTFT and the throughput targets (measured:
# `git show 954c8cb:BENCHMARKS.md`, LLM serving).
DEFAULT_STEP_TOKENS = 768


class LLMEngine:
    def __init__(self, runner: Runner, *, max_waiting: int = 1024, max_num_tokens: int | None = None,
                 max_num_seqs: int | None = None):
        """`max_num_tokens`: the token budget per step (default DEFAULT_STEP_TOKENS), at most
        the plan's limit. Shorter steps let decodes run between prefill chunks: lower time to
        first token under load; longer ones prefill long prompts in fewer calls.
        `max_num_seqs`: sequences in flight, at most (and by default) the plan's limit."""
        info = runner.info
        self.runner = runner
        budget = min(DEFAULT_STEP_TOKENS if max_num_tokens is None else max_num_tokens, info.max_num_tokens)
        seqs = min(info.max_num_seqs if max_num_seqs is None else max_num_seqs, info.max_num_seqs)
        assert budget >= 1 and seqs >= 1, (max_num_tokens, max_num_seqs)
        self.config = SchedulerConfig(
            max_num_tokens=budget, max_num_seqs=seqs, max_model_len=info.max_model_len,
            max_waiting=max_waiting, block_size=info.kv_block_size, enable_prefix_caching=True,
        )
        self.scheduler = Scheduler(self.config, runner.num_blocks)
        self.sampler = Sampler()
        self.requests: dict[str, _Request] = {}  # unfinished, by request id
        self._token_texts: TokenTexts | None = None  # made at the first request for logprobs

    @property
    def tokenizer(self) -> TextTokenizer:
        return self.runner.tokenizer

    # ---- requests

    def tokenize(self, prompt: Prompt, add_special_tokens: bool = True) -> tuple[int, ...]:
        """Prompt token ids; raises InputError for an empty prompt or an id outside the vocab,
        PromptTooLongError beyond max_model_len."""
        if isinstance(prompt, str):
            # BOS as the model's Hugging Face tokenizer adds it (recorded at build as add_bos).
            info = self.runner.info
            bos = (info.bos_token_id,) if add_special_tokens and info.add_bos and info.bos_token_id is not None else ()
            ids = (*bos, *self.tokenizer.tok.encode(prompt, add_special_tokens=False).ids)
        else:
            ids = tuple(int(t) for t in prompt)
            vocab = self.runner.info.vocab_size
            if any(not 0 <= t < vocab for t in ids):
                raise InputError(f"prompt token ids must be within 0..{vocab - 1}")
        if not ids:
            raise InputError("the prompt is empty (0 tokens)")
        limit = self.config.max_model_len
        if len(ids) > limit:
            raise PromptTooLongError(f"prompt has {len(ids)} tokens, more than max_model_len {limit}")
        return ids

    def add_request(self, request_id: str, prompt: Prompt, params: SamplingParams | None = None, *,
                    prompt_token_ids: Seq[int] | None = None, arrival_time: float | None = None) -> None:
        """Queue a request. Raises PromptTooLongError, QueueFullError or InputError before
        any work: a refused request leaves nothing behind. With `prompt_token_ids` (already
        tokenized, e.g. a rendered chat), `prompt` is only the text reported back. The engine
        checks the prompt and the request id; the scheduler only asserts them."""
        if request_id in self.requests:
            raise InputError(f"request id {request_id!r} is already in use")
        ids = self.tokenize(prompt if prompt_token_ids is None else prompt_token_ids)
        seq = self._sequence(request_id, ids, params or SamplingParams())
        detok = IncrementalDetokenizer(self.tokenizer.tok, ids, stop=seq.params.stop)
        self.scheduler.add(seq)
        arrival = time.perf_counter() if arrival_time is None else arrival_time
        self.requests[request_id] = _Request(prompt if isinstance(prompt, str) else None, seq, detok, arrival,
                                             logprobs=None if seq.params.logprobs is None else [])

    def abort(self, request_id: str) -> bool:
        """Finish a request now and free its KV blocks; False if unknown or already finished."""
        self.requests.pop(request_id, None)
        return self.scheduler.abort(request_id)

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished

    # ---- the loop

    def step(self) -> list[RequestOutput]:
        """One iteration: the outputs of the requests that got a token."""
        out = self.schedule()
        if out.is_empty:
            return []
        return self.postprocess(out, self.execute(out))

    def schedule(self) -> SchedulerOutput:
        out = self.scheduler.schedule()
        now = time.perf_counter()
        for s in out.sequences:
            req = self.requests.get(s.request_id)
            if req is not None and req.scheduled_time is None:
                req.scheduled_time = now
        return out

    def execute(self, out: SchedulerOutput) -> np.ndarray:
        """(len(out.sampling), vocab) float32 logits; writes the step's K/V into the pool."""
        return self.runner.execute(out)

    def postprocess(self, out: SchedulerOutput, logits: np.ndarray) -> list[RequestOutput]:
        """Sample, commit the step, detokenize and apply stop strings."""
        assert logits.shape[0] == len(out.sampling), (logits.shape, len(out.sampling))
        tokens, logprobs = self._sample(out, logits)
        results = self.scheduler.update(out, tokens)
        now = time.perf_counter()
        return [self._output(r, now, logprobs.get(r.request_id)) for r in results if r.request_id in self.requests]

    # ---- reports

    def stats(self) -> SchedulerStats:
        return self.scheduler.stats()

    def kv_report(self) -> KVCacheReport:
        c = self.config
        return KVCacheReport(self.runner.num_blocks, c.block_size, c.max_model_len, c.max_num_seqs, c.max_num_tokens,
                             self.runner.memory())

    # ---- helpers

    def _sequence(self, request_id: str, ids: tuple[int, ...], params: SamplingParams) -> Sequence:
        """EOS from the bundle: the first id is the sequence's EOS, others stop it too."""
        eos = list(self.runner.info.eos_token_ids)
        if params.ignore_eos or not eos:
            return Sequence(request_id, ids, params)
        extra = tuple(t for t in eos[1:] if t not in params.stop_token_ids)
        if extra:
            params = params.model_copy(update={"stop_token_ids": (*params.stop_token_ids, *extra)})
        return Sequence(request_id, ids, params, eos_token_id=eos[0])

    def _sample(self, out: SchedulerOutput, logits: np.ndarray) -> tuple[np.ndarray, dict[str, SampleLogprobs]]:
        """Token ids, one per `out.sampling` entry, and the logprobs of the requests that ask, by request id."""
        # A request aborted since schedule() still gets a (discarded) greedy token.
        reqs = [self.requests.get(s.request_id) for s in out.sampling]
        params = [r.seq.params if r else _GREEDY for r in reqs]
        generators = [r.seq.generator if r else _NO_RNG for r in reqs]
        tokens = self.sampler(logits, params, generators)
        logprobs = self.sampler.logprobs(logits, params, tokens)
        return tokens, {s.request_id: lp for s, lp in zip(out.sampling, logprobs) if lp is not None}

    def _token_logprobs(self, sample: SampleLogprobs) -> TokenLogprobs:
        if self._token_texts is None:
            self._token_texts = TokenTexts(self.tokenizer.tok)
        texts = self._token_texts
        top = zip(sample.top_ids, sample.top_logprobs)
        return TokenLogprobs(Logprob(sample.token_id, *texts(sample.token_id), sample.logprob),
                             tuple(Logprob(t, *texts(t), v) for t, v in top))

    def _output(self, result: StepResult, now: float, sample: SampleLogprobs | None = None) -> RequestOutput:
        req = self.requests[result.request_id]
        if req.logprobs is not None:
            assert sample is not None and sample.token_id == result.token_id, (sample, result)
            req.logprobs.append(self._token_logprobs(sample))
        req.first_token_time = req.first_token_time or now
        reason = result.finish_reason
        if req.detok.update([result.token_id]) is not None:  # a stop string ended the text
            if reason is None:
                self.scheduler.finish(result.request_id, FinishReason.STOP)
            reason = FinishReason.STOP
        finished = reason is not None
        if finished:
            del self.requests[result.request_id]
        token_ids = tuple(req.seq.output_token_ids)
        sent, req.num_sent_tokens = req.num_sent_tokens, len(token_ids)
        delta_text = req.detok.take_new_text(finished)
        req.text += delta_text
        metrics = RequestMetrics(req.arrival_time, req.first_token_time, now if finished else None,
                                 req.seq.num_cached_tokens, req.scheduled_time)
        logprobs = None if req.logprobs is None else tuple(req.logprobs)
        return RequestOutput(
            request_id=result.request_id, prompt=req.prompt, prompt_token_ids=req.seq.prompt_token_ids,
            text=req.text, token_ids=token_ids, delta_text=delta_text,
            delta_token_ids=token_ids[sent:], finished=finished, finish_reason=reason, metrics=metrics,
            logprobs=logprobs, delta_logprobs=None if logprobs is None else logprobs[sent:],
        )


_GREEDY = SamplingParams(temperature=0)
_NO_RNG = np.random.default_rng(0)
