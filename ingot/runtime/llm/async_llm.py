"""`AsyncLLM`: asyncio front end that streams tokens while the engine batches in flight.

One background task steps the engine while requests are pending. Scheduling and
postprocessing run on the event loop; the model runs in a worker thread
(`asyncio.to_thread`), so the loop keeps accepting, streaming and cancelling requests
during a step. A request cancelled mid-step is aborted at once (its blocks are freed);
the scheduler discards its token when the step commits.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator
from pathlib import Path

from ingot.runtime.errors import RunError
from ingot.runtime.llm.engine import KVCacheReport, LLMEngine, Prompt
from ingot.runtime.llm.llm import chat_template, render_chat, special_tokens
from ingot.runtime.llm.outputs import RequestOutput
from ingot.runtime.llm.runner import Runner, load_runner
from ingot.runtime.llm.sampling import SamplingParams


# Loop turns given to the streams after a step, before the next one: a server relays an output
# through a few tasks (HTTP: stream -> choice merger -> SSE body -> socket), and once the next
# step's execute has taken every core, a token handed over just before it waits for it. At
# concurrency 1 over HTTP the first token came ~4 ms later without these turns; they cost
# microseconds when nobody waits.
STREAM_TURNS = 6


class EngineDeadError(RunError):
    """The engine loop stopped (shut down, or the model failed); pending requests end with this."""


class AsyncLLM:
    def __init__(self, engine: LLMEngine):
        self.engine = engine
        # request id → its outputs; None ends a stream (aborted), an exception fails it
        self._streams: dict[str, asyncio.Queue[RequestOutput | BaseException | None]] = {}
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task | None = None
        self._dead: BaseException | None = None  # set by shutdown() or a failed step
        self._ids = itertools.count()

    @classmethod
    def from_bundle(cls, bundle: str | Path, *, kv_cache_memory: int | float | str | None = None,
                    threads: int | None = None, target: str | None = None, max_waiting: int = 1024,
                    max_num_tokens: int | None = None, max_num_seqs: int | None = None) -> AsyncLLM:
        runner = load_runner(bundle, kv_cache_memory=kv_cache_memory, target=target, threads=threads)
        return cls(LLMEngine(runner, max_waiting=max_waiting, max_num_tokens=max_num_tokens, max_num_seqs=max_num_seqs))

    @classmethod
    def from_runner(cls, runner: Runner, *, max_waiting: int = 1024) -> AsyncLLM:
        return cls(LLMEngine(runner, max_waiting=max_waiting))

    def startup_report(self) -> KVCacheReport:
        return self.engine.kv_report()

    # ---- requests

    def submit(self, prompt: Prompt, params: SamplingParams | None = None, request_id: str | None = None, *,
               prompt_token_ids: list[int] | None = None,
               arrival_time: float | None = None) -> str:
        """Queue a request now; raises QueueFullError, PromptTooLongError or InputError at once.
        Read its outputs with `stream(request_id)`."""
        if self._dead is not None:
            raise EngineDeadError(f"the engine is not running: {self._dead}")
        request_id = f"async-{next(self._ids)}" if request_id is None else request_id
        self.engine.add_request(request_id, prompt, params, prompt_token_ids=prompt_token_ids,
                                arrival_time=arrival_time)
        self._streams[request_id] = asyncio.Queue()
        self._start()
        return request_id

    async def stream(self, request_id: str) -> AsyncIterator[RequestOutput]:
        """Outputs of a submitted request, one per step that gave it a token; the last is
        `finished`. Leaving early (break + aclose, or cancelling the task) aborts it."""
        queue = self._streams[request_id]
        finished = False
        try:
            while not finished:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                if item is None:  # aborted by `abort()`
                    return
                finished = item.finished
                yield item
        finally:
            self._streams.pop(request_id, None)
            if not finished:
                self.engine.abort(request_id)

    async def generate(self, prompt: Prompt, params: SamplingParams | None = None,
                       request_id: str | None = None) -> AsyncIterator[RequestOutput]:
        """Submit a request and yield its streamed outputs (`delta_text` is what is new).
        Errors of submission (QueueFullError, ...) raise at the first iteration; use
        `submit` + `stream` to have them raise at once."""
        request_id = self.submit(prompt, params, request_id)
        async with contextlib.aclosing(self.stream(request_id)) as outputs:  # closing us aborts at once
            async for output in outputs:
                yield output

    async def chat(self, messages: list[dict], params: SamplingParams | None = None,
                   request_id: str | None = None) -> AsyncIterator[RequestOutput]:
        """`generate` for one conversation, rendered with the bundle's chat template."""
        runner = self.engine.runner
        prompt = render_chat(chat_template(runner), messages, **special_tokens(runner))
        ids = list(self.engine.tokenize(prompt, add_special_tokens=False))
        request_id = self.submit(prompt, params, request_id, prompt_token_ids=ids)
        async with contextlib.aclosing(self.stream(request_id)) as outputs:
            async for output in outputs:
                yield output

    def abort(self, request_id: str) -> bool:
        """Finish a request now and free its blocks; its stream ends with no further output."""
        queue = self._streams.pop(request_id, None)
        if queue is not None:
            queue.put_nowait(None)
        return self.engine.abort(request_id)

    # ---- lifecycle

    async def shutdown(self) -> None:
        """Abort every pending request (their streams raise EngineDeadError), let the
        step in flight finish (the runner may be mid-execute in its thread), close the runner."""
        if self._dead is None:
            self._fail(EngineDeadError("the engine was shut down"))
        self._wake.set()
        if self._loop_task is not None:
            await asyncio.gather(self._loop_task, return_exceptions=True)
            self._loop_task = None
        self.engine.runner.close()

    async def __aenter__(self) -> AsyncLLM:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.shutdown()

    def _start(self) -> None:
        self._wake.set()
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = asyncio.get_running_loop().create_task(self._run(), name="ingot-llm-engine")

    async def _run(self) -> None:
        try:
            while self._dead is None:
                if not self.engine.has_unfinished():
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                await self._step()
        except Exception as e:  # the model failed: every pending request ends with the error
            self._fail(EngineDeadError(f"engine step failed: {type(e).__name__}: {e}"))

    async def _step(self) -> None:
        """schedule → execute (worker thread) → postprocess, then hand outputs to streams."""
        out = self.engine.schedule()
        if out.is_empty:  # nothing fits this step (not expected: the pool holds max_model_len)
            await asyncio.sleep(0.001)
            return
        logits = await asyncio.to_thread(self.engine.execute, out)
        for output in self.engine.postprocess(out, logits):
            queue = self._streams.get(output.request_id)
            if queue is not None:
                queue.put_nowait(output)
        for _ in range(STREAM_TURNS):  # see STREAM_TURNS
            await asyncio.sleep(0)

    def _fail(self, error: BaseException) -> None:
        self._dead = error
        for request_id, queue in list(self._streams.items()):
            queue.put_nowait(error)
            self.engine.abort(request_id)
        self._streams.clear()
