"""Typed messages out of the scheduler: what to run this step, and what each step produced."""

from __future__ import annotations

from dataclasses import dataclass

from ingot.runtime.llm.sequence import FinishReason


@dataclass(frozen=True)
class ScheduledSequence:
    """One sequence's share of a step: `len(token_ids)` new tokens after `num_computed_tokens`.

    A runner packs these into the ragged batch (batch.pack_step), which derives each new
    token's position and KV slot from `num_computed_tokens` and the block table.
    """

    request_id: str
    token_ids: tuple[int, ...]  # (num_new_tokens,) to feed
    num_computed_tokens: int  # tokens already in the KV cache before this step
    block_table: tuple[int, ...]  # physical block ids covering positions [0, context_len)
    samples: bool  # the step reaches the last known token, so a token is sampled from its logits
    seq_id: int  # Sequence.seq_id: unique, where a request id may come again after its request ended

    @property
    def num_new_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def context_len(self) -> int:
        return self.num_computed_tokens + self.num_new_tokens


@dataclass(frozen=True)
class SchedulerOutput:
    """A step: scheduled sequences (running ones first, in FCFS order), then totals."""

    sequences: tuple[ScheduledSequence, ...]
    preempted: tuple[str, ...] = ()  # request ids sent back to WAITING this step

    @classmethod
    def make_empty(cls) -> SchedulerOutput:
        return cls(sequences=())

    @property
    def is_empty(self) -> bool:
        return not self.sequences

    @property
    def num_seqs(self) -> int:
        return len(self.sequences)

    @property
    def num_tokens(self) -> int:
        """Tokens fed this step (≤ the token budget)."""
        return sum(s.num_new_tokens for s in self.sequences)

    @property
    def sampling(self) -> tuple[ScheduledSequence, ...]:
        """Sequences that sample this step; `Scheduler.update` takes one token id per entry, in order."""
        return tuple(s for s in self.sequences if s.samples)


@dataclass(frozen=True)
class StepResult:
    """A token appended to a request, and its finish reason if that token ended it."""

    request_id: str
    token_id: int
    num_output_tokens: int
    finish_reason: FinishReason | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass(frozen=True)
class SchedulerStats:
    """The engine's gauges and counters, for metrics (vLLM's names in comments)."""

    num_running: int  # num_requests_running
    num_waiting: int  # num_requests_waiting
    num_blocks: int
    num_free_blocks: int
    num_preemptions: int  # num_preemptions_total
    prefix_cache_queries: int  # prefix_cache_queries (tokens)
    prefix_cache_hits: int  # prefix_cache_hits (tokens)

    @property
    def kv_cache_usage(self) -> float:
        """kv_cache_usage_perc, 0..1: blocks held by a request."""
        return 1.0 - self.num_free_blocks / self.num_blocks

    @property
    def prefix_cache_hit_rate(self) -> float:
        return self.prefix_cache_hits / self.prefix_cache_queries if self.prefix_cache_queries else 0.0
