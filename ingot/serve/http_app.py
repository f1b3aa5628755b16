"""HTTP on the same server: the OpenAI-compatible API and KServe v2 REST, as one FastAPI app.

Routes translate and delegate to the model manager and the served versions, the same handles
the gRPC servicer uses; errors become statuses in one place (`_error`): OpenAI's JSON error body
under /v1, KServe's `{"error": ...}` under /v2. A client that disconnects aborts its request:
Starlette cancels a streaming response (uvicorn speaks ASGI 2.3), and non-streamed generations
race the disconnect (`_until_disconnect`), as vLLM's `with_cancellation` does.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ValidationError

from ingot import __version__
from ingot.runtime.errors import RunError
from ingot.runtime.llm.errors import PromptTooLongError
from ingot.serve import openai_protocol as oa
from ingot.serve import tensors
from ingot.serve.errors import (
    InvalidArgument,
    ServeError,
    Unavailable,
    Unimplemented,
    classify,
)
from ingot.serve.served import LLMServed, Served, TensorServed

_STATUS = {"invalid": (400, "invalid_request_error"), "not_found": (404, "not_found_error"),
           "exhausted": (429, "rate_limit_error"), "deadline": (408, "timeout_error"),
           "unimplemented": (400, "invalid_request_error"), "unavailable": (503, "service_unavailable_error"),
           "internal": (500, "internal_error")}


def _error(e: BaseException, openai: bool) -> JSONResponse:
    invalid = isinstance(e, RequestValidationError | ValidationError)
    status, kind = _STATUS["invalid" if invalid else classify(e)]
    message = _message(e)
    if openai:
        body = oa.ErrorResponse(error=oa.ErrorBody(message=message, type=kind, code=status)).model_dump()
    else:
        body = {"error": message}
    return JSONResponse(body, status_code=status)


def _message(e: BaseException) -> str:
    if isinstance(e, RequestValidationError | ValidationError):
        err = e.errors()[0]
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        return f"{where}: {err['msg']}" if where else err["msg"]
    if isinstance(e, TimeoutError):
        return "the request's timeout passed before it finished"
    if isinstance(e, ServeError | RunError):
        return str(e)
    return f"internal error: {type(e).__name__}: {e}"


def create_app(manager, state, explicit: bool) -> FastAPI:
    app = FastAPI(title="ingot", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)

    async def on_error(request: Request, e: Exception) -> JSONResponse:
        return _error(e, request.url.path.startswith("/v1"))

    for kind in (RequestValidationError, ValidationError, RunError, TimeoutError, Exception):
        app.add_exception_handler(kind, on_error)  # Exception: a real bug, 500 (and logged)

    def llm(name: str) -> LLMServed:
        state.check()
        served = manager.get(name)
        if not isinstance(served, LLMServed):
            kind = served.manifest.model.kind
            raise InvalidArgument(f"model {name!r} is {'an' if kind[0] in 'aeiou' else 'a'} {kind}, not a causal LM: "
                                  "use /v1/embeddings "
                                  "or /v2/models/{name}/infer")
        return served

    # ---- OpenAI: models

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [
            {"id": s.name, "object": "model", "created": 0, "owned_by": "ingot", "version": str(s.version)}
            for s in _latest(manager)]}

    # ---- OpenAI: completions

    @app.post("/v1/completions")
    async def completions(body: oa.CompletionRequest, request: Request):
        served = llm(body.model)
        if body.echo:
            raise InvalidArgument("echo is not supported (prompt logprobs are not computed)")
        prompt, ids = _completion_prompt(served, body.prompt)
        gens = _start(served, prompt, ids, body)
        if body.stream:
            return _sse(_completion_chunks(body, gens))
        outs = await _until_disconnect(request, _collect(gens))
        choices = [oa.CompletionChoice(index=i, text=o.text, finish_reason=_reason(o),
                                       logprobs=None if o.logprobs is None else oa.CompletionLogprobs.of(o.logprobs))
                   for i, o in enumerate(outs)]
        return oa.CompletionResponse(model=body.model, choices=choices, usage=_usage(outs)).model_dump(exclude_none=True)

    @app.post("/v1/chat/completions")
    async def chat(body: oa.ChatCompletionRequest, request: Request):
        served = llm(body.model)
        text, ids = served.chat_prompt([{"role": m.role, "content": m.text()} for m in body.messages])
        gens = _start(served, text, ids, body)
        if body.stream:
            return _sse(_chat_chunks(body, gens))
        outs = await _until_disconnect(request, _collect(gens))
        choices = [oa.ChatChoice(index=i, message={"role": "assistant", "content": o.text}, finish_reason=_reason(o),
                                 logprobs=None if o.logprobs is None else oa.ChatLogprobs.of(o.logprobs))
                   for i, o in enumerate(outs)]
        return oa.ChatCompletionResponse(model=body.model, choices=choices, usage=_usage(outs)).model_dump(
            exclude_none=True)

    # ---- OpenAI: embeddings

    @app.post("/v1/embeddings")
    async def embeddings(body: oa.EmbeddingRequest):
        state.check()
        served = manager.get(body.model)
        if not isinstance(served, TensorServed) or served.manifest.model.kind != "encoder" \
                or "sentence_embedding" not in {o.name for o in served.manifest.outputs}:
            raise InvalidArgument(f"model {body.model!r} does not give sentence embeddings")
        if body.dimensions is not None:
            raise InvalidArgument("dimensions is not supported: the bundle's embedding size is fixed")
        texts = [body.input] if isinstance(body.input, str) else body.input
        if not texts or not all(isinstance(t, str) for t in texts):
            raise InvalidArgument("input: a string or a list of strings (token ids are not supported)")
        feeds = served.model.encode(texts)
        out = (await served.infer(feeds))["sentence_embedding"].astype(np.float32)
        data = [{"object": "embedding", "index": i,
                 "embedding": base64.b64encode(row.tobytes()).decode() if body.encoding_format == "base64"
                 else row.tolist()} for i, row in enumerate(out)]
        tokens = int(feeds["attention_mask"].sum()) if "attention_mask" in feeds else 0
        return {"object": "list", "model": body.model, "data": data,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    # ---- KServe v2 REST: health and metadata

    @app.get("/v2/health/live")
    async def live() -> Response:
        return Response(status_code=200)

    @app.get("/v2/health/ready")
    async def ready() -> Response:
        ok = not state.draining and all(manager.ready(m) for m in state.required)
        return Response(status_code=200 if ok else 503)

    @app.get("/v2/models/{name}/ready")
    @app.get("/v2/models/{name}/versions/{version}/ready")
    async def model_ready(name: str, version: str = "") -> Response:
        return Response(status_code=200 if not state.draining and manager.ready(name, version) else 503)

    @app.get("/v2")
    async def server_metadata() -> dict:
        from ingot.serve.grpc_service import EXTENSIONS

        return {"name": "ingot", "version": __version__, "extensions": EXTENSIONS}

    @app.get("/v2/models/{name}")
    @app.get("/v2/models/{name}/versions/{version}")
    async def model_metadata(name: str, version: str = "") -> dict:
        from ingot.serve.grpc_service import platform, signature

        served = manager.get(name, version)
        inputs, outputs = signature(served)
        as_json = lambda ts: [{"name": n, "datatype": d, "shape": s} for n, d, s in ts]
        return {"name": served.name, "versions": [str(v) for v in sorted(manager.serving.get(name, {}))],
                "platform": platform(served), "inputs": as_json(inputs), "outputs": as_json(outputs)}

    # ---- KServe v2 REST: inference

    @app.post("/v2/models/{name}/infer")
    @app.post("/v2/models/{name}/versions/{version}/infer")
    async def infer(name: str, request: Request, version: str = "") -> dict:
        body = InferRequest.model_validate_json(await request.body())  # any content type, as Triton
        state.check()
        served = manager.get(name, version)
        if served.decoupled:
            raise Unimplemented(f"model {name!r} is a causal LM: use /v2/models/{name}/generate(_stream) "
                                "or /v1/completions")
        inputs = {t.name: _json_tensor(t) for t in body.inputs}
        if len(inputs) != len(body.inputs):
            raise InvalidArgument("an input is given twice")
        outputs = await served.infer(inputs)
        wanted = [o.name for o in body.outputs or []] or [s.name for s in served.manifest.outputs]
        unknown = [n for n in wanted if n not in outputs]
        if unknown:
            raise InvalidArgument(f"unknown output(s) {', '.join(map(repr, unknown))}; outputs: {', '.join(outputs)}")
        return {"model_name": served.name, "model_version": str(served.version), "id": body.id or "",
                "outputs": [{"name": n, "datatype": tensors.datatype(outputs[n].dtype),
                             "shape": list(outputs[n].shape), "data": outputs[n].reshape(-1).tolist()}
                            for n in wanted]}

    @app.post("/v2/models/{name}/generate")
    async def generate(name: str, request: Request) -> dict:
        body = GenerateRequest.model_validate_json(await request.body())
        served = llm(name)
        gen = _generation(served, body)
        out = (await _until_disconnect(request, _collect([gen])))[0]
        return {"model_name": name, "model_version": str(served.version), "text_output": out.text}

    @app.post("/v2/models/{name}/generate_stream")
    async def generate_stream(name: str, request: Request):
        body = GenerateRequest.model_validate_json(await request.body())
        served = llm(name)
        gen = _generation(served, body)

        async def events() -> AsyncIterator[str]:
            async with contextlib.aclosing(gen):
                async for out in gen:
                    if out.delta_text or out.finished:
                        yield _data({"model_name": name, "model_version": str(served.version),
                                     "text_output": out.delta_text})

        return _sse(events(), done=False)

    # ---- KServe v2 REST: repository (Triton's extension)

    @app.post("/v2/repository/index")
    async def repository_index() -> list[dict]:
        return [{"name": n, **({"version": str(v)} if v is not None else {}), "state": st, "reason": r}
                for n, v, st, r in manager.index()]

    @app.post("/v2/repository/models/{name}/load")
    async def load(name: str) -> Response:
        _explicit(explicit)
        state.check()
        await manager.load(name)
        return Response(status_code=200)

    @app.post("/v2/repository/models/{name}/unload")
    async def unload(name: str) -> Response:
        _explicit(explicit)
        await manager.unload(name)
        return Response(status_code=200)

    return app


# ---- KServe v2 REST messages


class JsonTensor(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    data: list


class RequestedOutput(BaseModel):
    name: str


class InferRequest(BaseModel):
    id: str | None = None
    inputs: list[JsonTensor]
    outputs: list[RequestedOutput] | None = None


class GenerateRequest(BaseModel):
    """Triton's generate extension: `text_input` and the sampling fields, flat."""

    text_input: str
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    ignore_eos: bool | None = None
    parameters: dict | None = None  # the same fields nested, as the vLLM backend sends them


def _json_tensor(t: JsonTensor) -> np.ndarray:
    if t.datatype not in tensors.DATATYPES:
        raise InvalidArgument(f"input {t.name!r}: unknown datatype {t.datatype!r}")
    flat = np.array(t.data, dtype=object).reshape(-1) if t.data else np.array([], dtype=object)
    if any(d < 0 for d in t.shape) or flat.size != int(np.prod(t.shape)):
        raise InvalidArgument(f"input {t.name!r}: {flat.size} values, shape {t.shape} needs {int(np.prod(t.shape))}")
    if t.datatype == "BYTES":
        return np.array([str(v).encode() for v in flat], dtype=object).reshape(t.shape)
    try:
        return flat.astype(tensors.DATATYPES[t.datatype]).reshape(t.shape)
    except (TypeError, ValueError, OverflowError) as e:
        raise InvalidArgument(f"input {t.name!r}: values are not {t.datatype}") from e


def _generation(served: LLMServed, body: GenerateRequest):
    from ingot.serve.llm_request import DEFAULT_MAX_TOKENS

    fields = {k: v for k, v in (body.parameters or {}).items()}
    fields |= body.model_dump(exclude={"text_input", "parameters"}, exclude_none=True)
    try:
        params = oa.CompletionRequest(model=served.name, prompt=body.text_input,
                                      **{k: v for k, v in fields.items() if k in _GENERATE_FIELDS}).sampling_params(
            DEFAULT_MAX_TOKENS)
    except ValidationError as e:
        raise InvalidArgument(_message(e)) from None
    return served.generate(body.text_input, params)


_GENERATE_FIELDS = {"max_tokens", "temperature", "top_p", "top_k", "seed", "stop", "ignore_eos", "min_tokens"}


# ---- helpers


def _latest(manager) -> list[Served]:
    return [versions[max(versions)] for _, versions in sorted(manager.serving.items()) if versions]


def _explicit(explicit: bool) -> None:
    if not explicit:
        raise Unavailable("explicit model load / unload is not allowed: start the server with "
                          "--model-control-mode explicit")


def _completion_prompt(served: LLMServed, prompt) -> tuple[str, list[int] | None]:
    """(text, token ids or None): one prompt, a string or token ids."""
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], str | list):
        if len(prompt) != 1:
            raise InvalidArgument("prompt: one prompt per request (a string or a list of token ids)")
        prompt = prompt[0]
    if isinstance(prompt, str):
        return prompt, None
    return "", list(prompt)


def _start(served: LLMServed, prompt: str, ids: list[int] | None, body) -> list:
    """n generations, submitted now (a full queue or too long a prompt raises before any response).
    With a seed, choice i samples with seed + i."""
    ids = served.tokenize(prompt) if ids is None else ids  # as the engine would: the length is checked here
    params = body.sampling_params(_max_tokens(served, len(ids), body))
    gens = []
    try:
        for i in range(body.n):
            p = params if params.seed is None or i == 0 else params.model_copy(update={"seed": params.seed + i})
            gens.append(served.generate(prompt or ids, p, prompt_token_ids=ids))  # the text, if any, and its ids
    except BaseException:
        for g in gens:
            g._end(ok=False)
        raise
    return gens


def _max_tokens(served: LLMServed, prompt_tokens: int, body) -> int:
    """As vLLM: max_tokens the client gave must fit max_model_len with the prompt (else 400); left out,
    completions take 16 and chat the room left, each at most that room."""
    limit = served.max_model_len
    room = limit - prompt_tokens
    if room < 1:
        raise PromptTooLongError(f"This model's maximum context length (max_model_len) is {limit} tokens. However, your prompt has "
                                 f"{prompt_tokens} tokens, which leaves no room for a completion.")
    chat = isinstance(body, oa.ChatCompletionRequest)
    given = body.max_new_tokens() if chat or "max_tokens" in body.model_fields_set else None
    if given is not None and prompt_tokens + given > limit:
        raise PromptTooLongError(f"This model's maximum context length (max_model_len) is {limit} tokens. However, you requested "
                                 f"{prompt_tokens + given} tokens ({prompt_tokens} in the prompt, {given} in the "
                                 f"completion). Please reduce the length of the prompt or completion.")
    if given is not None:
        return given
    return room if chat else min(room, 16)


async def _collect(gens: list) -> list:
    """The last output of each generation."""
    async def last(gen):
        out = None
        async with contextlib.aclosing(gen):
            async for out in gen:
                pass
        return out

    tasks = [asyncio.ensure_future(last(g)) for g in gens]
    try:
        return await asyncio.gather(*tasks)
    finally:
        for t in tasks:
            t.cancel()


async def _until_disconnect(request: Request, work):
    """Run `work`; if the client disconnects first, cancel it (which aborts its requests)."""
    task = asyncio.ensure_future(work)

    async def disconnected() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                return

    watcher = asyncio.ensure_future(disconnected())
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise asyncio.CancelledError
    finally:
        watcher.cancel()
        task.cancel()


def _reason(out) -> str | None:
    return None if out.finish_reason is None else ("length" if out.finish_reason.value == "length" else "stop")


def _usage(outs: list) -> oa.Usage:
    prompt = outs[0].num_prompt_tokens
    return oa.usage(prompt, sum(o.num_output_tokens for o in outs), outs[0].metrics.num_cached_tokens)


def _data(obj) -> str:
    return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n"


def _sse(events: AsyncIterator[str], done: bool = True) -> StreamingResponse:
    async def body() -> AsyncIterator[str]:
        try:
            async for event in events:
                yield event
        except Exception as e:  # noqa: BLE001 - after the headers, an error goes in the stream
            yield _data(json.loads(_error(e, True).body))
        if done:
            yield "data: [DONE]\n\n"

    return StreamingResponse(body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


async def _merged(gens: list) -> AsyncIterator[tuple[int, object]]:
    """(choice index, output) from n generations as they come; closing it closes them all."""
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(i: int, gen) -> None:
        try:
            async with contextlib.aclosing(gen):
                async for out in gen:
                    queue.put_nowait((i, out))
        except BaseException as e:  # noqa: BLE001
            queue.put_nowait((i, e))
        finally:
            queue.put_nowait((i, None))

    tasks = [asyncio.ensure_future(pump(i, g)) for i, g in enumerate(gens)]
    try:
        left = len(gens)
        while left:
            i, item = await queue.get()
            if item is None:
                left -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield i, item
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _completion_chunks(body: oa.CompletionRequest, gens: list) -> AsyncIterator[str]:
    head = oa.CompletionResponse(model=body.model, choices=[])
    last, offsets = {}, [0] * len(gens)  # offsets: characters of token text sent, per choice
    async for i, out in _merged(gens):
        last[i] = out
        if out.delta_text or out.finished or out.delta_logprobs:
            logprobs = None
            if out.delta_logprobs is not None:
                logprobs = oa.CompletionLogprobs.of(out.delta_logprobs, offsets[i])
                offsets[i] += sum(len(t) for t in logprobs.tokens)
            choice = oa.CompletionChoice(index=i, text=out.delta_text, finish_reason=_reason(out), logprobs=logprobs)
            yield _data(head.model_copy(update={"choices": [choice]}).model_dump(exclude_none=True))
    if body.stream_options and body.stream_options.include_usage and last:
        outs = [last[i] for i in sorted(last)]
        yield _data(head.model_copy(update={"usage": _usage(outs)}).model_dump(exclude_none=True))


async def _chat_chunks(body: oa.ChatCompletionRequest, gens: list) -> AsyncIterator[str]:
    head = oa.ChatCompletionResponse(model=body.model, object="chat.completion.chunk", choices=[])
    for i in range(len(gens)):
        role = oa.ChatChoice(index=i, delta=oa.Delta(role="assistant", content=""))
        yield _data(head.model_copy(update={"choices": [role]}).model_dump(exclude_none=True))
    last = {}
    async for i, out in _merged(gens):
        last[i] = out
        if out.delta_text or out.finished or out.delta_logprobs:
            logprobs = None if out.delta_logprobs is None else oa.ChatLogprobs.of(out.delta_logprobs)
            choice = oa.ChatChoice(index=i, delta=oa.Delta(content=out.delta_text), finish_reason=_reason(out),
                                   logprobs=logprobs)
            yield _data(head.model_copy(update={"choices": [choice]}).model_dump(exclude_none=True))
    if body.stream_options and body.stream_options.include_usage and last:
        outs = [last[i] for i in sorted(last)]
        yield _data(head.model_copy(update={"usage": _usage(outs)}).model_dump(exclude_none=True))

