"""`Sequence`: the state of one request as the scheduler and block manager see it."""

from __future__ import annotations

import enum
import itertools
from dataclasses import dataclass, field

import numpy as np

from ingot.runtime.llm.sampling import SamplingParams


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class FinishReason(str, enum.Enum):
    STOP = "stop"  # EOS, a stop token id or a stop string
    LENGTH = "length"  # max_tokens or max_model_len
    ABORT = "abort"  # cancelled by the client


_ids = itertools.count()


@dataclass(eq=False)
class Sequence:
    """Prompt and output tokens, how many have KV computed, and where that KV lives.

    `num_computed_tokens` counts tokens whose KV is in the cache (prefix hits included);
    the tokens from there to `num_tokens` are what the next steps must feed.
    """

    request_id: str
    prompt_token_ids: tuple[int, ...]
    params: SamplingParams = field(default_factory=SamplingParams)
    eos_token_id: int | None = None
    output_token_ids: list[int] = field(default_factory=list)
    status: SequenceStatus = SequenceStatus.WAITING
    finish_reason: FinishReason | None = None
    num_computed_tokens: int = 0
    num_cached_tokens: int = 0  # prefix-cache hit at the last admission (for metrics)
    block_table: list[int] = field(default_factory=list)  # physical block ids, in logical order
    block_hashes: list[bytes] = field(default_factory=list, repr=False)  # chained hashes of full blocks, filled lazily
    arrival: int = -1  # FCFS order, set by the scheduler on `add`
    num_preemptions: int = 0
    generator: np.random.Generator = field(init=False, repr=False)
    seq_id: int = field(default_factory=lambda: next(_ids), init=False)  # unique in this process, unlike request ids

    def __post_init__(self):
        self.prompt_token_ids = tuple(self.prompt_token_ids)
        assert self.prompt_token_ids, "a prompt needs at least one token"
        self.generator = np.random.default_rng(self.params.seed)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def num_tokens(self) -> int:
        return self.num_prompt_tokens + self.num_output_tokens

    @property
    def num_uncomputed_tokens(self) -> int:
        return self.num_tokens - self.num_computed_tokens

    @property
    def last_token_id(self) -> int:
        return self.output_token_ids[-1] if self.output_token_ids else self.prompt_token_ids[-1]

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    def token_ids(self, start: int = 0, stop: int | None = None) -> list[int]:
        """Prompt + output tokens [start, stop)."""
        stop = self.num_tokens if stop is None else stop
        prompt = self.prompt_token_ids[start:stop]
        outputs = self.output_token_ids[max(start - self.num_prompt_tokens, 0):max(stop - self.num_prompt_tokens, 0)]
        return [*prompt, *outputs]

    def block_token_ids(self, index: int, block_size: int) -> list[int]:
        """Tokens of logical block `index` (fewer than block_size for the last, partial one)."""
        return self.token_ids(index * block_size, min((index + 1) * block_size, self.num_tokens))

    def append_token(self, token_id: int) -> None:
        assert self.status is SequenceStatus.RUNNING, self.status
        self.output_token_ids.append(token_id)
