"""`Scheduler`: which tokens of which requests run each step (continuous batching).

Policy, as vLLM v1: no prefill or decode phases. Each sequence has `num_computed_tokens`
and each step spends a token budget so that it catches up with `num_tokens`.
- RUNNING first, in arrival (FCFS) order: a decode gets its 1 token, a chunked prefill
  the rest of its prompt, both capped by the remaining budget.
- Then WAITING, FCFS, with what is left of the budget; a long prompt is split across
  steps (chunked prefill); a prefix-cache hit starts it past the cached blocks.
- When a running sequence cannot get a block, the most recently arrived running
  sequence is preempted by recompute: its blocks are freed and it goes back to the
  front of WAITING (its prefix-cache blocks may still hit on readmission). No waiting
  sequence is admitted in a step that preempted.
"""

from __future__ import annotations

import bisect
import itertools
from collections import deque
from collections.abc import Sequence as Seq

from pydantic import BaseModel, ConfigDict, Field

from ingot.runtime.llm.block_manager import BlockManager
from ingot.runtime.llm.errors import QueueFullError
from ingot.runtime.llm.scheduler_output import ScheduledSequence, SchedulerOutput, SchedulerStats, StepResult
from ingot.runtime.llm.sequence import FinishReason, Sequence, SequenceStatus


class SchedulerConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    max_num_tokens: int = Field(2048, ge=1, description="token budget of one step")
    max_num_seqs: int = Field(128, ge=1, description="running sequences at most")
    max_model_len: int = Field(4096, ge=1, description="prompt + output tokens at most")
    max_waiting: int = Field(1024, ge=1, description="bound of the waiting queue; `add` beyond it raises")
    block_size: int = Field(16, ge=1, description="tokens per KV block")
    enable_prefix_caching: bool = True


class Scheduler:
    """Owns the request queues and the block manager; the engine loop calls
    `schedule()` → run the model → `update(output, sampled_token_ids)`."""

    def __init__(self, config: SchedulerConfig, num_blocks: int):
        capacity = num_blocks * config.block_size
        if capacity < config.max_model_len:
            raise ValueError(f"a KV cache of {num_blocks} blocks holds {capacity} tokens, "
                             f"fewer than max_model_len {config.max_model_len}")
        self.config = config
        self.block_manager = BlockManager(num_blocks, config.block_size, config.enable_prefix_caching)
        self.requests: dict[str, Sequence] = {}  # unfinished, by request id
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # sorted by arrival: the tail is the preemption victim
        self.num_preemptions = 0
        self._arrivals = itertools.count()

    @property
    def has_unfinished(self) -> bool:
        return bool(self.requests)

    def add(self, seq: Sequence) -> None:
        """Queue a new request; raises QueueFullError when the waiting queue is full. The caller
        (the engine) has checked the prompt: its length and a request id not in use."""
        if len(self.waiting) >= self.config.max_waiting:
            raise QueueFullError(f"waiting queue is full ({self.config.max_waiting} requests); retry later")
        assert seq.num_prompt_tokens <= self.config.max_model_len, (seq.num_prompt_tokens, self.config.max_model_len)
        assert seq.request_id not in self.requests, seq.request_id
        assert seq.status is SequenceStatus.WAITING and not seq.block_table and not seq.output_token_ids, seq
        seq.arrival = next(self._arrivals)
        self.requests[seq.request_id] = seq
        self.waiting.append(seq)

    def abort(self, request_id: str) -> bool:
        """Finish a request now and free its blocks; False if it is unknown or already finished."""
        return self.finish(request_id, FinishReason.ABORT)

    def finish(self, request_id: str, reason: FinishReason) -> bool:
        """Finish a request for `reason` (e.g. a stop string the detokenizer found) and free its blocks."""
        seq = self.requests.pop(request_id, None)
        if seq is None:
            return False
        (self.running if seq.status is SequenceStatus.RUNNING else self.waiting).remove(seq)
        self.block_manager.free(seq)
        seq.status, seq.finish_reason = SequenceStatus.FINISHED, reason
        return True

    def schedule(self) -> SchedulerOutput:
        """Pick this step's tokens: RUNNING first, then WAITING, within the token budget."""
        scheduled: list[tuple[Sequence, int]] = []
        preempted: list[Sequence] = []
        budget = self._schedule_running(self.config.max_num_tokens, scheduled, preempted)
        if not preempted:
            self._schedule_waiting(budget, scheduled)
        return SchedulerOutput(
            sequences=tuple(self._describe(seq, n) for seq, n in scheduled),
            preempted=tuple(seq.request_id for seq in preempted),
        )

    def update(self, output: SchedulerOutput, sampled_token_ids: Seq[int]) -> list[StepResult]:
        """Commit a step: advance computed tokens, append one sampled token per `output.sampling`
        entry (in order), finish requests on EOS, stop token ids or length."""
        assert len(sampled_token_ids) == len(output.sampling), (len(sampled_token_ids), len(output.sampling))
        tokens = iter(sampled_token_ids)
        results = []
        for scheduled in output.sequences:
            token_id = int(next(tokens)) if scheduled.samples else None
            seq = self.requests.get(scheduled.request_id)
            if seq is None:  # aborted since schedule()
                continue
            assert seq.num_computed_tokens == scheduled.num_computed_tokens, (seq, scheduled)
            seq.num_computed_tokens += scheduled.num_new_tokens
            self.block_manager.cache_full_blocks(seq)
            if token_id is not None:
                results.append(self._append(seq, token_id))
        return results

    def stats(self) -> SchedulerStats:
        bm = self.block_manager
        return SchedulerStats(len(self.running), len(self.waiting), bm.num_blocks, bm.num_free_blocks,
                              self.num_preemptions, bm.prefix_cache_queries, bm.prefix_cache_hits)

    def _schedule_running(self, budget: int, scheduled: list, preempted: list[Sequence]) -> int:
        index = 0
        while index < len(self.running) and budget > 0:
            seq = self.running[index]
            num_new = min(seq.num_uncomputed_tokens, budget)
            assert num_new > 0, seq
            if not self._make_room(seq, num_new, preempted):
                break  # `seq` was the tail and preempted itself
            scheduled.append((seq, num_new))
            budget -= num_new
            index += 1
        return budget

    def _make_room(self, seq: Sequence, num_new: int, preempted: list[Sequence]) -> bool:
        """Preempt from the RUNNING tail until `seq` gets its slots; False if `seq` itself went."""
        while not self.block_manager.append_slots(seq, num_new):
            victim = self.running.pop()  # latest arrival; never one scheduled earlier this step
            self._preempt(victim)
            preempted.append(victim)
            if victim is seq:
                return False
        return True

    def _preempt(self, seq: Sequence) -> None:
        self.block_manager.free(seq)
        seq.status, seq.num_computed_tokens = SequenceStatus.WAITING, 0
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(seq)

    def _schedule_waiting(self, budget: int, scheduled: list) -> None:
        while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
            seq = self.waiting[0]
            num_new = min(seq.num_tokens - self.block_manager.num_cached_tokens(seq), budget)
            if not self.block_manager.allocate(seq, num_new):
                break  # FCFS: nobody overtakes the head
            self.waiting.popleft()
            seq.status = SequenceStatus.RUNNING
            bisect.insort(self.running, seq, key=lambda s: s.arrival)
            scheduled.append((seq, num_new))
            budget -= num_new

    def _describe(self, seq: Sequence, num_new: int) -> ScheduledSequence:
        start, stop = seq.num_computed_tokens, seq.num_computed_tokens + num_new
        return ScheduledSequence(
            request_id=seq.request_id,
            token_ids=tuple(seq.token_ids(start, stop)),
            num_computed_tokens=start,
            block_table=tuple(seq.block_table),
            samples=stop == seq.num_tokens,
            seq_id=seq.seq_id,
        )

    def _append(self, seq: Sequence, token_id: int) -> StepResult:
        seq.append_token(token_id)
        reason = check_stop(seq, self.config.max_model_len)
        if reason is not None:
            self.finish(seq.request_id, reason)
        return StepResult(seq.request_id, token_id, seq.num_output_tokens, reason)


def check_stop(seq: Sequence, max_model_len: int) -> FinishReason | None:
    """Why `seq` finishes with its last token, if it does (stop strings are the detokenizer's)."""
    token, params = seq.last_token_id, seq.params
    if (token == seq.eos_token_id and not params.ignore_eos) or token in params.stop_token_ids:
        return FinishReason.STOP
    if seq.num_output_tokens >= params.max_tokens or seq.num_tokens >= max_model_len:
        return FinishReason.LENGTH
    return None
