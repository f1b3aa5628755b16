"""`LLM`: offline generation over one bundle. Add every prompt, step to completion, return
the final outputs in input order (vLLM's `LLM.generate`)."""

from __future__ import annotations

import itertools
import json
from collections import deque
from collections.abc import Sequence as Seq
from pathlib import Path
from typing import Any

from ingot.runtime.errors import InputError
from ingot.runtime.llm.engine import KVCacheReport, LLMEngine
from ingot.runtime.llm.errors import QueueFullError
from ingot.runtime.llm.outputs import RequestOutput
from ingot.runtime.llm.runner import Runner, load_runner
from ingot.runtime.llm.sampling import SamplingParams

Message = dict[str, Any]  # {"role": "user", "content": "..."}


class LLM:
    """Generate text from an LLM bundle on this machine.

    >>> llm = LLM("out/smollm2")
    >>> llm.generate("The capital of France is", SamplingParams(temperature=0, max_tokens=8))[0].text
    """

    def __init__(self, bundle: str | Path, *, kv_cache_memory: int | float | str | None = None,
                 threads: int | None = None, target: str | None = None, max_waiting: int = 1024,
                 max_num_tokens: int | None = None):
        runner = load_runner(bundle, kv_cache_memory=kv_cache_memory, target=target, threads=threads)
        self.engine = LLMEngine(runner, max_waiting=max_waiting, max_num_tokens=max_num_tokens)
        self._ids = itertools.count()

    @classmethod
    def from_runner(cls, runner: Runner, *, max_waiting: int = 1024, max_num_tokens: int | None = None) -> LLM:
        """Wrap a runner that is already loaded (e.g. shared with an AsyncLLM that is not running)."""
        llm = cls.__new__(cls)
        llm.engine = LLMEngine(runner, max_waiting=max_waiting, max_num_tokens=max_num_tokens)
        llm._ids = itertools.count()
        return llm

    @property
    def runner(self) -> Runner:
        return self.engine.runner

    def startup_report(self) -> KVCacheReport:
        """KV blocks, bytes and the tokens they hold."""
        return self.engine.kv_report()

    def generate(self, prompts: str | Seq[str] | Seq[Seq[int]],
                 params: SamplingParams | Seq[SamplingParams] | None = None) -> list[RequestOutput]:
        """Final outputs, in the order of `prompts` (text, or lists of token ids). Every
        prompt is checked before any work; more prompts than the waiting queue holds are
        admitted as requests finish."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        ids = [self.engine.tokenize(p) for p in prompts]
        return self._run(prompts, ids, _broadcast(params, len(prompts)))

    def chat(self, messages: Seq[Message] | Seq[Seq[Message]],
             params: SamplingParams | Seq[SamplingParams] | None = None) -> list[RequestOutput]:
        """Generate replies to one conversation or a list of them, with the bundle's chat template."""
        conversations = [messages] if messages and isinstance(messages[0], dict) else list(messages)
        template = chat_template(self.runner)
        prompts = [render_chat(template, c, **special_tokens(self.runner)) for c in conversations]
        # The template writes the special tokens (BOS) itself.
        ids = [self.engine.tokenize(p, add_special_tokens=False) for p in prompts]
        return self._run(prompts, ids, _broadcast(params, len(prompts)))

    def close(self) -> None:
        self.runner.close()

    def __enter__(self) -> LLM:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _run(self, prompts: list, ids: list[tuple[int, ...]], params: list[SamplingParams]) -> list[RequestOutput]:
        request_ids = [f"llm-{next(self._ids)}" for _ in prompts]
        pending = deque(zip(request_ids, prompts, ids, params, strict=True))
        finals: dict[str, RequestOutput] = {}
        try:
            while pending or self.engine.has_unfinished():
                self._admit(pending)
                finals.update((o.request_id, o) for o in self.engine.step() if o.finished)
        finally:  # an exception (or Ctrl-C) leaves no request holding blocks
            for request_id in request_ids:
                if request_id not in finals:
                    self.engine.abort(request_id)
        return [finals[r] for r in request_ids]

    def _admit(self, pending: deque) -> None:
        while pending:
            request_id, prompt, ids, params = pending[0]
            try:
                self.engine.add_request(request_id, prompt if isinstance(prompt, str) else ids, params,
                                        prompt_token_ids=ids)
            except QueueFullError:
                return
            pending.popleft()


def _broadcast(params: SamplingParams | Seq[SamplingParams] | None, n: int) -> list[SamplingParams]:
    if params is None or isinstance(params, SamplingParams):
        return [params or SamplingParams()] * n
    params = list(params)
    if len(params) != n:
        raise InputError(f"{len(params)} SamplingParams for {n} prompts")
    return params


# ---- chat templates (Hugging Face's Jinja conventions)


def chat_template(runner: Runner) -> str:
    template = runner.tokenizer.chat_template
    if not template:
        raise InputError("this bundle's tokenizer has no chat template (tokenizer_config.json "
                         "chat_template or chat_template.jinja); pass plain prompts")
    return template


def special_tokens(runner: Runner) -> dict[str, str]:
    """bos_token / eos_token strings for templates that write them."""
    tok, info = runner.tokenizer.tok, runner.info
    bos = tok.id_to_token(info.bos_token_id) if info.bos_token_id is not None else None
    eos = tok.id_to_token(info.eos_token_ids[0]) if info.eos_token_ids else None
    return {"bos_token": bos or "", "eos_token": eos or ""}


def render_chat(template: str, messages: Seq[Message], *, add_generation_prompt: bool = True, **tokens: str) -> str:
    """The prompt text for `messages`, as transformers' `apply_chat_template(tokenize=False)`."""
    import jinja2
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str):
        raise jinja2.TemplateError(message)

    def tojson(value, indent=None, ensure_ascii=False, sort_keys=False):
        return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    try:
        return env.from_string(template).render(
            messages=list(messages), add_generation_prompt=add_generation_prompt, **tokens)
    except jinja2.TemplateError as e:
        raise InputError(f"chat template: {e}") from None
