"""`ingot serve`: one process, one asyncio loop: the gRPC inference and health services, the
metrics endpoint, the model manager, and the signal handling of a graceful drain.

Start: load the models (all of them, or only `--load-model` in EXPLICIT mode), then print one
`READY grpc=HOST:PORT http=HOST:PORT metrics=HOST:PORT` line. SIGTERM/SIGINT: health NOT_SERVING, new requests
UNAVAILABLE, in-flight requests drain for up to `grace_period` seconds, exit 0. A second
signal exits at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ingot.serve.errors import ServeError
from ingot.serve.manager import ModelManager
from ingot.serve.repository import Repository
from ingot.serve.served import RuntimeOptions

log = logging.getLogger("ingot.serve")


class ServeOptions(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str
    host: str = "127.0.0.1"
    grpc_port: int = Field(8001, ge=0, le=65535)  # 0: any free port (printed on the READY line)
    http_port: int = Field(8000, ge=0, le=65535)
    metrics_port: int = Field(8002, ge=0, le=65535)
    model_control_mode: Literal["none", "explicit"] = "none"
    load_model: list[str] = []
    model_name: str | None = None
    grace_period: float = Field(30.0, ge=0)
    max_message_bytes: int = Field(64 << 20, ge=1024)
    runtime: RuntimeOptions = RuntimeOptions()


def run(options: ServeOptions) -> int:
    """Serve until a signal; the exit code."""
    return asyncio.run(_serve(options))


async def _serve(options: ServeOptions) -> int:
    import grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc
    from tritonclient.grpc import service_pb2_grpc

    from ingot.serve.grpc_service import InferenceServicer, ServerState
    from ingot.serve.metrics import Metrics

    repo = Repository(options.path, options.model_name)
    explicit = options.model_control_mode == "explicit"
    names = options.load_model if explicit else repo.names()
    if not explicit and options.load_model:
        raise ServeError("--load-model needs --model-control-mode explicit (mode none loads every model)")
    if not explicit and not names:
        raise ServeError(f"{options.path}: no models (expected REPO/<model>/<version>/manifest.json)")
    manager = ModelManager(repo, options.runtime)
    state = ServerState(required=list(names))
    metrics = Metrics(manager)
    manager.observer = metrics
    servicer = InferenceServicer(manager, state, explicit)

    server = grpc.aio.server(options=[("grpc.max_receive_message_length", options.max_message_bytes),
                                      ("grpc.max_send_message_length", options.max_message_bytes)])
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    try:
        grpc_port = server.add_insecure_port(f"{options.host}:{options.grpc_port}")
    except RuntimeError:
        grpc_port = 0
    if grpc_port == 0:
        raise ServeError(f"cannot bind gRPC to {options.host}:{options.grpc_port} (in use?)")
    try:
        metrics_port = metrics.start(options.host, options.metrics_port)
    except OSError as e:
        raise ServeError(f"cannot bind metrics to {options.host}:{options.metrics_port}: {e.strerror or e}") from e
    http = _http_server(manager, state, explicit, options)
    http_task = asyncio.get_running_loop().create_task(http.serve())
    while not http.started:
        if http_task.done():
            http_task.result()  # raises why it stopped
            raise ServeError(f"cannot bind HTTP to {options.host}:{options.http_port} (in use?)")
        await asyncio.sleep(0.01)
    http_port = http.servers[0].sockets[0].getsockname()[1]
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if stop.is_set():
            log.warning("second signal: exiting now")
            os._exit(1)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)

    try:
        for name in names:
            await _load(manager, name)
        await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        await health_servicer.set("inference.GRPCInferenceService", health_pb2.HealthCheckResponse.SERVING)
        print(f"READY grpc={options.host}:{grpc_port} http={options.host}:{http_port} metrics={options.host}:{metrics_port} "
              f"models={','.join(names) or '-'}", flush=True)
        await stop.wait()
    finally:
        state.draining = True
        await health_servicer.enter_graceful_shutdown()
        log.info("draining for up to %.0f s", options.grace_period)
        await manager.shutdown(options.grace_period)
        await server.stop(grace=1.0)
        http.should_exit = True
        await asyncio.gather(http_task, return_exceptions=True)
        metrics.stop()
    return 0


def _http_server(manager, state, explicit: bool, options: ServeOptions):
    """uvicorn on this loop, without its own signal handling (ours drains first)."""
    import uvicorn

    from ingot.serve.http_app import create_app

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self):
            yield

    # h11 whether or not httptools is installed (uvicorn[standard], which the `ray` extra brings, has it):
    # the same HTTP stack with and without the extra
    config = uvicorn.Config(create_app(manager, state, explicit), host=options.host, port=options.http_port,
                            log_level="warning", lifespan="off", timeout_graceful_shutdown=1, http="h11")
    return Server(config)


async def _load(manager: ModelManager, name: str) -> None:
    """A model that fails to load at start stops the server with its reason."""
    try:
        await manager.load(name)
    except ServeError as e:
        raise ServeError(f"cannot serve: {e}") from e


def setup_logging(debug: bool) -> None:
    logging.basicConfig(stream=sys.stderr, level=logging.DEBUG if debug else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
