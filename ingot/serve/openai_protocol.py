"""OpenAI API messages as pydantic models: what `/v1/completions`, `/v1/chat/completions` and
`/v1/embeddings` take and return (the fields vLLM takes, its extras included: `top_k`,
`ignore_eos`, `min_tokens`)."""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Sequence as Seq
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ingot.runtime.llm import Logprob, SamplingParams, TokenLogprobs
from ingot.serve.errors import InvalidArgument


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI fields we do not act on are ignored, as vLLM does


class StreamOptions(BaseModel):
    include_usage: bool = False


class _Sampling(_Request):
    model: str
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=-1)
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = Field(1, ge=1, le=16)
    ignore_eos: bool = False
    min_tokens: int = Field(0, ge=0)
    stream: bool = False
    stream_options: StreamOptions | None = None

    def max_new_tokens(self) -> int | None:
        return None

    def num_logprobs(self) -> int | None:
        """SamplingParams.logprobs: None = off, k = the chosen token's and the top k."""
        return None

    def sampling_params(self, default_max_tokens: int) -> SamplingParams:
        """Raises InvalidArgument naming the field."""
        max_tokens = self.max_new_tokens() or default_max_tokens
        if 0 < self.min_tokens < max_tokens:
            raise InvalidArgument("min_tokens below max_tokens is not supported: use min_tokens equal to max_tokens "
                                  "(or ignore_eos) for a fixed length")
        stop = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        fields = {"max_tokens": max_tokens, "stop": tuple(stop),
                  "ignore_eos": self.ignore_eos or self.min_tokens >= max_tokens, "logprobs": self.num_logprobs()}
        for name in ("temperature", "top_p", "top_k", "seed"):
            if getattr(self, name) is not None:
                fields[name] = getattr(self, name)
        try:
            return SamplingParams(**fields)
        except ValueError as e:
            raise InvalidArgument(str(e).splitlines()[-1] if str(e) else "bad sampling options") from None


class CompletionRequest(_Sampling):
    prompt: str | list[int] | list[str] | list[list[int]]
    max_tokens: int | None = Field(16, ge=1)
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=5, description="the chosen token's logprob and the top k's")

    def max_new_tokens(self) -> int | None:
        return self.max_tokens

    def num_logprobs(self) -> int | None:
        return self.logprobs


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content or ""


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)

    def max_new_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def num_logprobs(self) -> int | None:
        if self.top_logprobs is not None and not self.logprobs:
            raise InvalidArgument("top_logprobs needs logprobs: true")
        return (self.top_logprobs or 0) if self.logprobs else None


class EmbeddingRequest(_Request):
    model: str
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int = 0
    total_tokens: int
    prompt_tokens_details: dict[str, int] | None = None


def usage(prompt: int, completion: int, cached: int | None = None) -> Usage:
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion,
                 prompt_tokens_details=None if cached is None else {"cached_tokens": cached})


# JSON has no -inf: a logprob below this is sent as this (vLLM's floor).
MIN_LOGPROB = -9999.0


def _logprob(value: float) -> float:
    return max(value, MIN_LOGPROB)


class CompletionLogprobs(BaseModel):
    """The legacy completions' logprobs: per output token its text, logprob, offset in the text,
    and {text: logprob} of the top k (plus the chosen token, as OpenAI: up to k + 1 entries)."""

    text_offset: list[int]
    token_logprobs: list[float]
    tokens: list[str]
    top_logprobs: list[dict[str, float]]

    @classmethod
    def of(cls, logprobs: Seq[TokenLogprobs], offset: int = 0) -> CompletionLogprobs:
        """`offset`: characters of token text before these tokens (earlier chunks of a stream)."""
        tokens = [t.chosen.token for t in logprobs]
        offsets = list(itertools.accumulate((len(t) for t in tokens[:-1]), initial=offset)) if tokens else []
        return cls(text_offset=offsets, token_logprobs=[_logprob(t.chosen.logprob) for t in logprobs],
                   tokens=tokens, top_logprobs=[_by_text((*t.top, t.chosen)) for t in logprobs])


def _by_text(logprobs: Seq[Logprob]) -> dict[str, float]:
    """{token text: logprob}; of two tokens with the same text, the first (the more likely) stays."""
    out: dict[str, float] = {}
    for lp in logprobs:
        out.setdefault(lp.token, _logprob(lp.logprob))
    return out


class ChatTokenLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]  # the token's own: an output's join to the UTF-8 of its text, where `token` may read U+FFFD

    @classmethod
    def of(cls, lp: Logprob) -> ChatTokenLogprob:
        return cls(token=lp.token, logprob=_logprob(lp.logprob), bytes=list(lp.token_bytes))


class ChatTokenLogprobs(ChatTokenLogprob):
    top_logprobs: list[ChatTokenLogprob]


class ChatLogprobs(BaseModel):
    content: list[ChatTokenLogprobs]

    @classmethod
    def of(cls, logprobs: Seq[TokenLogprobs]) -> ChatLogprobs:
        return cls(content=[ChatTokenLogprobs(**ChatTokenLogprob.of(t.chosen).model_dump(),
                                              top_logprobs=[ChatTokenLogprob.of(lp) for lp in t.top])
                            for t in logprobs])


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: str | None = None
    logprobs: CompletionLogprobs | None = None


class CompletionResponse(BaseModel):
    id: str = Field(default_factory=lambda: f"cmpl-{uuid.uuid4().hex}")
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChoice(BaseModel):
    index: int
    message: dict | None = None  # {"role": "assistant", "content": ...} (non-streamed)
    delta: Delta | None = None  # streamed
    finish_reason: str | None = None
    logprobs: ChatLogprobs | None = None


class ChatCompletionResponse(BaseModel):
    id: str = Field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex}")
    object: Literal["chat.completion", "chat.completion.chunk"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatChoice]
    usage: Usage | None = None


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: int


class ErrorResponse(BaseModel):
    error: ErrorBody
