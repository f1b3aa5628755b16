"""One loaded model version: a causal LM behind `AsyncLLM`, or any other bundle behind
`ingot.runtime.load` and a dynamic batcher. Each counts its requests in flight, so a swap or an
unload can drain it before closing."""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ingot.plans import DynamicDim, Manifest, read_manifest
from ingot.runtime import InputError, load
from ingot.runtime.inputs import check_feeds, expected
from ingot.runtime.model import Model
from ingot.serve.batcher import BatchShape, DynamicBatcher, Feeds
from ingot.serve.config import ServeConfig
from ingot.serve.errors import InvalidArgument
from ingot.serve.stats import VersionStats

TEXT_INPUT = "text"  # the BYTES input of a bundle with a tokenizer


@dataclass(frozen=True)
class RuntimeOptions:
    """What `ingot serve` passes to every load, before a model's config overrides it."""

    threads: int | None = None
    kv_cache_memory: int | float | None = None
    max_num_tokens: int | None = None
    target: str | None = None


class Served:
    """In-flight accounting shared by both kinds."""

    decoupled = False

    def __init__(self, name: str, version: int, manifest: Manifest, config: ServeConfig):
        self.name, self.version, self.manifest, self.config = name, version, manifest, config
        self.stats = VersionStats()
        self.observer = None  # metrics: finished(served, output) and aborted(served), LLMs only
        self.in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def enter(self) -> None:
        self.in_flight += 1
        self._idle.clear()

    def leave(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self._idle.set()

    async def drain(self, timeout: float | None = None) -> bool:
        """Wait until no request is in flight; False if `timeout` passed first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except TimeoutError:
            return False

    async def close(self) -> None:
        raise NotImplementedError


class TensorServed(Served):
    """Encoders, classifiers and generic bundles: ModelInfer through a dynamic batcher."""

    def __init__(self, name: str, version: int, model: Model, config: ServeConfig):
        super().__init__(name, version, model.manifest, config)
        self.model = model
        shape = batch_shape(model.manifest, model.tokenizer is not None)
        batching = config.dynamic_batching
        if batching is None:
            shape = BatchShape(1)
        elif batching.max_batch_size is not None:
            shape = BatchShape(min(shape.max_batch, batching.max_batch_size), shape.pad_inputs, shape.pad_outputs,
                               shape.mask)
        self.batch_shape = shape
        self.batcher = DynamicBatcher(model.run, shape, batching.max_queue_delay_us if batching else 0,
                                      config.max_queue_size, self.stats)

    @property
    def has_text_input(self) -> bool:
        return self.model.tokenizer is not None

    def feeds(self, inputs: dict[str, np.ndarray]) -> Feeds:
        """Request inputs → plan feeds: a `text` BYTES input is tokenized; names, dtypes and
        shapes are checked against the manifest (InvalidArgument lists what is expected)."""
        if TEXT_INPUT in inputs and self.has_text_input and TEXT_INPUT not in {s.name for s in self.manifest.inputs}:
            if len(inputs) != 1:
                raise InvalidArgument(f"send either {TEXT_INPUT!r} alone or the tensors; {self.expected()}")
            from ingot.serve.tensors import text_of

            texts = text_of(TEXT_INPUT, inputs[TEXT_INPUT])
            try:
                inputs = self.model.encode(texts)
            except InputError as e:
                raise InvalidArgument(str(e)) from e
        try:
            check_feeds(self.manifest.inputs, inputs)
        except InputError as e:
            raise InvalidArgument(f"{e}{self._or_text()}") from e
        return inputs

    def expected(self) -> str:
        return expected(self.manifest.inputs) + self._or_text()

    def _or_text(self) -> str:
        return f"; or {TEXT_INPUT!r} BYTES [batch] (text, tokenized by the server)" if self.has_text_input else ""

    async def infer(self, inputs: dict[str, np.ndarray]) -> Feeds:
        feeds = self.feeds(inputs)
        started = time.perf_counter()
        self.enter()
        try:
            out = await self.batcher.infer(feeds)
            self.stats.request_done(started, True)
            return out
        except BaseException:
            self.stats.request_done(started, False)
            raise
        finally:
            self.leave()

    async def warm_up(self) -> None:
        feeds = {s.name: np.zeros([d if isinstance(d, int) else max(d.min, 1) for d in s.shape], dtype=s.dtype)
                 for s in self.manifest.inputs}
        await asyncio.to_thread(self.model.run, feeds)

    async def close(self) -> None:
        await self.batcher.close()


class LLMServed(Served):
    """Causal LMs: decoupled, streamed through ModelStreamInfer."""

    decoupled = True

    def __init__(self, name: str, version: int, manifest: Manifest, engine, config: ServeConfig):
        super().__init__(name, version, manifest, config)
        self.engine = engine  # AsyncLLM
        self._ids = itertools.count()

    def generate(self, prompt, params, timeout: float | None = None, *,
                 prompt_token_ids: list[int] | None = None) -> Generation:
        """Submit a request now and return its outputs (RequestOutput), for every front end.
        Submission errors (QueueFullError, PromptTooLongError, InputError) raise here; the
        deadline (`timeout` seconds, default the model's) raises TimeoutError while iterating;
        `aclose()` before the end (or a cancelled consumer) aborts it and frees its blocks."""
        timeout = self.config.default_timeout_s if timeout is None else timeout
        request_id = f"{self.name}-{self.version}-{next(self._ids)}"
        self.engine.submit(prompt, params, request_id, prompt_token_ids=prompt_token_ids)
        self.enter()
        return Generation(self, request_id, timeout)

    def _finished(self, out) -> None:
        if out.metrics.queue_s is not None:
            self.stats.queue.add(out.metrics.queue_s)
        if self.observer is not None:
            self.observer.finished(self, out)

    def tokenize(self, text: str) -> list[int]:
        return list(self.engine.engine.tokenize(text))

    @property
    def max_model_len(self) -> int:
        """Prompt + output tokens of a request, at most (the plan's limit)."""
        return self.engine.engine.config.max_model_len

    def chat_prompt(self, messages: list[dict]) -> tuple[str, list[int]]:
        """A conversation rendered with the bundle's chat template: (text, token ids)."""
        from ingot.runtime.llm.llm import chat_template, render_chat, special_tokens

        runner = self.engine.engine.runner
        text = render_chat(chat_template(runner), messages, **special_tokens(runner))
        return text, list(self.engine.engine.tokenize(text, add_special_tokens=False))

    async def warm_up(self) -> None:
        from ingot.runtime.llm import SamplingParams

        async for _ in self.engine.generate("Hello", SamplingParams(temperature=0, max_tokens=2)):
            pass

    async def close(self) -> None:
        await self.engine.shutdown()


class Generation:
    """One submitted LLM request: an async iterator of its outputs that accounts for it once
    it ends, however it ends (finished, deadline, error, closed early)."""

    def __init__(self, served: LLMServed, request_id: str, timeout: float | None):
        self.served, self.request_id = served, request_id
        loop = asyncio.get_running_loop()
        self.deadline = None if timeout is None else loop.time() + timeout
        self.started = time.perf_counter()
        self._outputs = served.engine.stream(request_id)
        self._ended = False

    def __aiter__(self) -> Generation:
        return self

    async def __anext__(self):
        if self._ended:
            raise StopAsyncIteration
        try:
            left = None if self.deadline is None else self.deadline - asyncio.get_running_loop().time()
            if left is not None and left <= 0:
                raise TimeoutError
            out = await asyncio.wait_for(anext(self._outputs), left)
        except StopAsyncIteration:
            self._end(ok=True)
            raise
        except BaseException:
            self._end(ok=False)
            raise
        if out.finished:
            self.served._finished(out)
            self._end(ok=True)  # done, whether or not the consumer asks for more
        return out

    async def aclose(self) -> None:
        self._end(ok=False)
        await self._outputs.aclose()

    def _end(self, ok: bool) -> None:
        if self._ended:
            return
        self._ended = True
        served = self.served
        served.engine.abort(self.request_id)  # no-op when finished; frees the blocks of a cancelled one
        served.stats.request_done(self.started, ok)
        if ok:
            served.stats.executed(1, time.perf_counter() - self.started)
        elif served.observer is not None:
            served.observer.aborted(served)
        served.leave()


def batch_shape(manifest: Manifest, has_tokenizer: bool) -> BatchShape:
    """Axis 0 is a batch dim when every input's axis 0 is the same dynamic dim; a sequence
    dim (axis 1, shared by every input) may be padded when the plan takes an attention mask."""
    dims0 = {s.shape[0].name if s.shape and isinstance(s.shape[0], DynamicDim) else None for s in manifest.inputs}
    if len(dims0) != 1 or None in dims0:
        return BatchShape(1)
    batch = next(s.shape[0] for s in manifest.inputs)
    dims1 = {s.shape[1].name if len(s.shape) > 1 and isinstance(s.shape[1], DynamicDim) else None
             for s in manifest.inputs}
    mask = next((s.name for s in manifest.inputs if s.name == "attention_mask"), None)
    if len(dims1) != 1 or None in dims1 or mask is None:
        return BatchShape(batch.max)
    seq = dims1.pop()
    outputs = frozenset(s.name for s in manifest.outputs
                        if len(s.shape) > 1 and isinstance(s.shape[1], DynamicDim) and s.shape[1].name == seq)
    return BatchShape(batch.max, frozenset(s.name for s in manifest.inputs), outputs, mask)


def open_version(name: str, version: int, path: Path, config: ServeConfig, options: RuntimeOptions) -> Served:
    """Verify checksums, select the target and load (blocking: run it in a thread)."""
    if read_manifest(path).llm is None:
        model = load(path, target=options.target, threads=options.threads)
        return TensorServed(name, version, model, config)
    from ingot.runtime.llm import AsyncLLM
    from ingot.runtime.llm.kv_cache import parse_memory

    llm = config.llm
    memory = llm.kv_cache_memory if isinstance(llm.kv_cache_memory, float) else \
        parse_memory(llm.kv_cache_memory, "llm.kv_cache_memory")
    engine = AsyncLLM.from_bundle(
        path, kv_cache_memory=options.kv_cache_memory if memory is None else memory, threads=options.threads,
        target=options.target, max_waiting=config.max_queue_size,
        max_num_tokens=llm.max_num_tokens or options.max_num_tokens, max_num_seqs=llm.max_num_seqs)
    return LLMServed(name, version, read_manifest(path), engine, config)
