"""OpenAI API messages as pydantic models: what `/v1/completions`, `/v1/chat/completions` and
`/v1/embeddings` take and return (the fields vLLM takes, its extras included: `top_k`,
`ignore_eos`, `min_tokens`)."""

from __future__ import annotations

import time
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ingot.runtime.llm import SamplingParams
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

    def sampling_params(self, default_max_tokens: int) -> SamplingParams:
        """Raises InvalidArgument naming the field."""
        max_tokens = self.max_new_tokens() or default_max_tokens
        if 0 < self.min_tokens < max_tokens:
            raise InvalidArgument("min_tokens below max_tokens is not supported: use min_tokens equal to max_tokens "
                                  "(or ignore_eos) for a fixed length")
        stop = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        fields = {"max_tokens": max_tokens, "stop": tuple(stop),
                  "ignore_eos": self.ignore_eos or self.min_tokens >= max_tokens}
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
    logprobs: int | None = None

    def max_new_tokens(self) -> int | None:
        return self.max_tokens


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
    top_logprobs: int | None = None

    def max_new_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


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


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: str | None = None
    logprobs: None = None


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
    logprobs: None = None


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
