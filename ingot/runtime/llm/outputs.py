"""`RequestOutput`: what the engine hands back for a request after each step (vLLM's shape)."""

from __future__ import annotations

from dataclasses import dataclass

from ingot.runtime.llm.sequence import FinishReason


@dataclass(frozen=True)
class RequestMetrics:
    """Times on the `time.perf_counter` clock, and the prefix-cache hit at admission."""

    arrival_time: float  # when the request was added (or the caller's arrival time)
    first_token_time: float | None = None  # when its first output token was sampled
    finish_time: float | None = None
    num_cached_tokens: int = 0  # prompt tokens whose KV came from the prefix cache
    scheduled_time: float | None = None  # when a step first took it (after waiting)

    @property
    def ttft_s(self) -> float | None:
        """Time to first token, queueing included."""
        return None if self.first_token_time is None else self.first_token_time - self.arrival_time

    @property
    def queue_s(self) -> float | None:
        """Time waiting before the first step that took the request."""
        return None if self.scheduled_time is None else self.scheduled_time - self.arrival_time

    @property
    def e2e_s(self) -> float | None:
        return None if self.finish_time is None else self.finish_time - self.arrival_time

    def tpot_s(self, num_output_tokens: int) -> float | None:
        """Mean time per output token after the first (None with fewer than 2 tokens)."""
        if self.finish_time is None or self.first_token_time is None or num_output_tokens < 2:
            return None
        return (self.finish_time - self.first_token_time) / (num_output_tokens - 1)


@dataclass(frozen=True)
class Logprob:
    """A token at an output position and its log-probability under the model."""

    token_id: int
    token: str  # the token decoded alone, special tokens included ("</s>"); U+FFFD for part of a character
    token_bytes: bytes  # the token's own bytes (token_texts.py): an output's join to the UTF-8 of its text
    logprob: float


@dataclass(frozen=True)
class TokenLogprobs:
    """An output token's logprob, and the `SamplingParams.logprobs` most likely tokens at its
    position (most likely first; the output token may or may not be among them). Logprobs are
    of the model's raw distribution, before temperature, top-k and top-p."""

    chosen: Logprob
    top: tuple[Logprob, ...]


@dataclass(frozen=True)
class RequestOutput:
    """A request's state after a step: the full text and tokens so far, and what is new.

    The `delta_*` fields of successive outputs concatenate to `text`, `token_ids` and `logprobs`. With
    stop strings the text ends before the stop string, and while running its last
    characters are held back until they cannot start one; `token_ids` keeps every
    sampled token.
    """

    request_id: str
    prompt: str | None  # None when the request was given as token ids
    prompt_token_ids: tuple[int, ...]
    text: str
    token_ids: tuple[int, ...]
    delta_text: str
    delta_token_ids: tuple[int, ...]
    finished: bool
    finish_reason: FinishReason | None
    metrics: RequestMetrics
    logprobs: tuple[TokenLogprobs, ...] | None = None  # one per token of `token_ids`, when the request asked
    delta_logprobs: tuple[TokenLogprobs, ...] | None = None  # those of `delta_token_ids`

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids)
