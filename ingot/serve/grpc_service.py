"""`inference.GRPCInferenceService` (KServe v2 / Triton) on grpc.aio, over the stubs tritonclient ships.

RPCs translate and delegate to the model manager and the served versions; every error becomes
a status code in one place (`status_of`). Causal LMs are decoupled: they stream through
ModelStreamInfer, with `triton_final_response` on every response and errors in-band.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging

import grpc
import numpy as np
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from ingot import __version__
from ingot.plans import DynamicDim, TensorSpec
from ingot.runtime.errors import RunError
from ingot.serve import llm_request, tensors
from ingot.serve.errors import (
    InvalidArgument,
    Unavailable,
    Unimplemented,
    classify,
)
from ingot.serve.manager import ModelManager
from ingot.serve.served import TEXT_INPUT, LLMServed, Served, TensorServed

log = logging.getLogger("ingot.serve")

EXTENSIONS = ["model_repository", "model_configuration", "statistics", "parameters"]
_CODES = {"invalid": grpc.StatusCode.INVALID_ARGUMENT, "not_found": grpc.StatusCode.NOT_FOUND,
          "exhausted": grpc.StatusCode.RESOURCE_EXHAUSTED, "deadline": grpc.StatusCode.DEADLINE_EXCEEDED,
          "unimplemented": grpc.StatusCode.UNIMPLEMENTED, "unavailable": grpc.StatusCode.UNAVAILABLE,
          "internal": grpc.StatusCode.INTERNAL}


def status_of(e: BaseException) -> tuple[grpc.StatusCode, str]:
    """The one mapping of errors to gRPC status codes; an unexpected error is INTERNAL."""
    if isinstance(e, TimeoutError):
        return grpc.StatusCode.DEADLINE_EXCEEDED, "the request's timeout passed before it finished"
    if isinstance(e, RunError):
        return _CODES[classify(e)], str(e)
    log.exception("internal error", exc_info=e)
    return grpc.StatusCode.INTERNAL, f"internal error: {type(e).__name__}: {e}"


def unary(method):
    """Run a unary RPC; an error aborts the call with its status code."""

    @functools.wraps(method)
    async def wrapper(self, request, context):
        try:
            return await method(self, request, context)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - mapped to a status code
            code, message = status_of(e)
            await context.abort(code, message)

    return wrapper


class ServerState:
    """What the health service and ServerReady report; `draining` refuses new requests."""

    def __init__(self, required: list[str]):
        self.required = required  # models that must be ready for the server to be ready
        self.draining = False

    def check(self) -> None:
        if self.draining:
            raise Unavailable("the server is shutting down")


class InferenceServicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, manager: ModelManager, state: ServerState, explicit: bool):
        self.manager, self.state, self.explicit = manager, state, explicit

    # ---- health and metadata

    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self.is_ready())

    def is_ready(self) -> bool:
        return not self.state.draining and all(self.manager.ready(m) for m in self.state.required)

    async def ModelReady(self, request, context):
        return pb.ModelReadyResponse(ready=not self.state.draining
                                     and self.manager.ready(request.name, request.version))

    async def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(name="ingot", version=__version__, extensions=EXTENSIONS)

    @unary
    async def ModelMetadata(self, request, context):
        served = self.manager.get(request.name, request.version)
        inputs, outputs = signature(served)
        return pb.ModelMetadataResponse(
            name=served.name, versions=[str(v) for v in sorted(self.manager.serving.get(served.name, {}))],
            platform=platform(served),
            inputs=[pb.ModelMetadataResponse.TensorMetadata(name=n, datatype=d, shape=s) for n, d, s in inputs],
            outputs=[pb.ModelMetadataResponse.TensorMetadata(name=n, datatype=d, shape=s) for n, d, s in outputs])

    @unary
    async def ModelConfig(self, request, context):
        return pb.ModelConfigResponse(config=model_config(self.manager.get(request.name, request.version)))

    @unary
    async def ModelStatistics(self, request, context):
        served = self.manager.loaded()
        if request.name:
            served = [s for s in served if s.name == request.name
                      and (not request.version or str(s.version) == request.version)]
            if not served:
                self.manager.get(request.name, request.version)  # raises NOT_FOUND / UNAVAILABLE
        return pb.ModelStatisticsResponse(model_stats=[statistics(s) for s in served])

    # ---- repository

    @unary
    async def RepositoryIndex(self, request, context):
        rows = self.manager.index(ready_only=request.ready)
        return pb.RepositoryIndexResponse(models=[
            pb.RepositoryIndexResponse.ModelIndex(name=n, version="" if v is None else str(v), state=st, reason=r)
            for n, v, st, r in rows])

    @unary
    async def RepositoryModelLoad(self, request, context):
        self._check_explicit()
        self.state.check()
        await self.manager.load(request.model_name)
        return pb.RepositoryModelLoadResponse()

    @unary
    async def RepositoryModelUnload(self, request, context):
        self._check_explicit()
        await self.manager.unload(request.model_name)
        return pb.RepositoryModelUnloadResponse()

    def _check_explicit(self) -> None:
        if not self.explicit:
            raise Unavailable("explicit model load / unload is not allowed: start the server with "
                              "--model-control-mode explicit")

    # ---- inference

    @unary
    async def ModelInfer(self, request, context):
        self.state.check()
        served = self.manager.get(request.model_name, request.model_version)
        if served.decoupled:
            raise Unimplemented(f"model {served.name!r} is decoupled (a causal LM): ModelInfer cannot return its "
                                "responses; use ModelStreamInfer (tritonclient: start_stream + async_stream_infer)")
        return await self._infer(served, request)

    async def _infer(self, served: TensorServed, request) -> pb.ModelInferResponse:
        inputs = decode_inputs(request)
        wanted = [o.name for o in request.outputs]
        names = {s.name for s in served.manifest.outputs}
        unknown = [n for n in wanted if n not in names]
        if unknown:
            raise InvalidArgument(f"unknown output(s) {', '.join(map(repr, unknown))}; outputs: {', '.join(sorted(names))}")
        async with asyncio.timeout(timeout_s(request, served)):
            outputs = await served.infer(inputs)
        response = pb.ModelInferResponse(model_name=served.name, model_version=str(served.version), id=request.id)
        for name in wanted or [s.name for s in served.manifest.outputs]:
            dt, shape, raw = tensors.encode(outputs[name])
            response.outputs.add(name=name, datatype=dt, shape=shape)
            response.raw_output_contents.append(raw)
        return response

    async def ModelStreamInfer(self, request_iterator, context):
        """Requests on one stream run concurrently; responses go out as they come."""
        responses: asyncio.Queue = asyncio.Queue()
        tasks: set[asyncio.Task] = set()

        async def read() -> None:
            async for request in request_iterator:
                task = asyncio.get_running_loop().create_task(self._stream_one(request, responses))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            await asyncio.gather(*list(tasks), return_exceptions=True)
            responses.put_nowait(None)

        reader = asyncio.get_running_loop().create_task(read())
        try:
            while True:
                item = await responses.get()
                if item is None:
                    break
                yield item
            await reader
        finally:  # the client cancelled or dropped the stream: abort everything it started
            reader.cancel()
            for task in list(tasks):
                task.cancel()
            await asyncio.gather(reader, *list(tasks), return_exceptions=True)

    async def _stream_one(self, request, responses: asyncio.Queue) -> None:
        try:
            self.state.check()
            served = self.manager.get(request.model_name, request.model_version)
            if isinstance(served, LLMServed):
                await self._generate(served, request, responses)
            else:
                response = await self._infer(served, request)
                response.parameters["triton_final_response"].bool_param = True
                responses.put_nowait(pb.ModelStreamInferResponse(infer_response=response))
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - errors go in-band on a stream
            code, message = status_of(e)
            responses.put_nowait(pb.ModelStreamInferResponse(
                error_message=f"{message}" if code != grpc.StatusCode.DEADLINE_EXCEEDED else f"deadline exceeded: {message}",
                infer_response=pb.ModelInferResponse(model_name=request.model_name, id=request.id,
                                                     parameters={"triton_final_response": pb.InferParameter(bool_param=True)})))

    async def _generate(self, served: LLMServed, request, responses: asyncio.Queue) -> None:
        gen = llm_request.parse(decode_inputs(request), parameters(request))
        empty_final = bool(parameters(request).get("triton_enable_empty_final_response", False))

        def respond(text: str | None, final: bool) -> None:
            response = pb.ModelInferResponse(model_name=served.name, model_version=str(served.version), id=request.id)
            if text is not None:
                dt, shape, raw = tensors.encode(np.array([text.encode()], dtype=object))
                response.outputs.add(name=llm_request.TEXT_OUTPUT, datatype=dt, shape=shape)
                response.raw_output_contents.append(raw)
            response.parameters["triton_final_response"].bool_param = final
            responses.put_nowait(pb.ModelStreamInferResponse(infer_response=response))

        text = ""
        async with contextlib.aclosing(served.generate(gen.prompt, gen.params, timeout_s(request, served))) as outs:
            async for out in outs:
                if gen.stream and (out.delta_text or (out.finished and not empty_final)):
                    respond(out.delta_text, out.finished and not empty_final)
                text = out.text
        if not gen.stream:
            respond(text if gen.exclude_input else gen.prompt + text, not empty_final)
        if empty_final:
            respond(None, True)


# ---- translation helpers


def parameters(request) -> dict[str, object]:
    return {k: getattr(v, v.WhichOneof("parameter_choice")) for k, v in request.parameters.items()
            if v.WhichOneof("parameter_choice")}


def timeout_s(request, served: Served) -> float | None:
    """The request's `timeout` parameter (µs, Triton's), else the model's default."""
    value = parameters(request).get("timeout")
    if value is not None:
        if not isinstance(value, int) or value <= 0:
            raise InvalidArgument("parameter 'timeout': a positive number of microseconds")
        return value / 1e6
    return served.config.default_timeout_s


def decode_inputs(request) -> dict[str, np.ndarray]:
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise InvalidArgument(f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs: send one per input")
    inputs = {}
    for i, tensor in enumerate(request.inputs):
        if tensor.name in inputs:
            raise InvalidArgument(f"input {tensor.name!r} given twice")
        inputs[tensor.name] = tensors.decode(tensor.name, tensor.datatype, list(tensor.shape),
                                             raw[i] if raw else None, tensor.contents if not raw else None)
    return inputs


def platform(served: Served) -> str:
    return "ingot_llm" if served.decoupled else "ingot_onnxruntime"


def _dims(spec: TensorSpec) -> list[int]:
    return [-1 if isinstance(d, DynamicDim) else d for d in spec.shape]


def signature(served: Served) -> tuple[list[tuple[str, str, list[int]]], list[tuple[str, str, list[int]]]]:
    """(inputs, outputs) as (name, datatype, shape with -1 for a dynamic dim)."""
    if served.decoupled:
        return [(n, d, s) for n, d, s in llm_request.INPUTS], [(llm_request.TEXT_OUTPUT, "BYTES", [-1])]
    inputs = [(s.name, tensors.datatype(s.dtype), _dims(s)) for s in served.manifest.inputs]
    if isinstance(served, TensorServed) and served.has_text_input:
        inputs.append((TEXT_INPUT, "BYTES", [-1]))
    return inputs, [(s.name, tensors.datatype(s.dtype), _dims(s)) for s in served.manifest.outputs]


def _config_type(datatype: str) -> int:
    return mc.DataType.Value("TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}")


def model_config(served: Served) -> mc.ModelConfig:
    inputs, outputs = signature(served)
    cfg = served.config
    config = mc.ModelConfig(
        name=served.name, platform=platform(served), backend="ingot", max_batch_size=0,
        input=[mc.ModelInput(name=n, data_type=_config_type(d), dims=s, optional=served.decoupled and n != "text_input")
               for n, d, s in inputs],
        output=[mc.ModelOutput(name=n, data_type=_config_type(d), dims=s) for n, d, s in outputs],
        model_transaction_policy=mc.ModelTransactionPolicy(decoupled=served.decoupled),
    )
    policy = cfg.version_policy
    if policy.all is not None:
        config.version_policy.all.SetInParent()
    elif policy.specific is not None:
        config.version_policy.specific.versions.extend(policy.specific.versions)
    else:
        config.version_policy.latest.num_versions = policy.latest.num_versions if policy.latest else 1
    if isinstance(served, TensorServed) and cfg.dynamic_batching is not None and served.batch_shape.max_batch > 1:
        config.dynamic_batching.max_queue_delay_microseconds = cfg.dynamic_batching.max_queue_delay_us
        config.dynamic_batching.default_queue_policy.max_queue_size = cfg.max_queue_size
    return config


def _duration(x) -> pb.StatisticDuration:
    return pb.StatisticDuration(count=x.count, ns=x.ns)


def statistics(served: Served) -> pb.ModelStatistics:
    s, d = served.stats, _duration
    return pb.ModelStatistics(
        name=served.name, version=str(served.version), last_inference=s.last_inference_ms,
        inference_count=s.inference_count, execution_count=s.execution_count,
        inference_stats=pb.InferStatistics(success=d(s.success), fail=d(s.fail), queue=d(s.queue),
                                           compute_infer=d(s.compute_infer)),
        batch_stats=[pb.InferBatchStatistics(batch_size=b, compute_infer=d(x)) for b, x in sorted(s.batch_sizes.items())])
