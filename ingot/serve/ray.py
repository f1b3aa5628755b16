"""`ingot serve` on Ray Serve: the same engine and HTTP routes, in replicas that Ray scales, with
requests routed to the replica that already holds their prompt's prefix.

    serve run ingot.serve.ray:build_app model=out/smol num_replicas=2
    serve run deploy/ray/serve_config.yaml

Two deployments:

- `IngotEngine`: what one `ingot serve` process runs, the model manager and the HTTP app (the
  OpenAI API and KServe v2 REST, `http_app.create_app`), minus the sockets: HTTP calls reach it
  through a deployment handle and its responses stream back. `num_replicas` or
  `autoscaling_config` (Ray's) scale it; each replica's engine has its own KV cache and prefix cache.
- `IngotIngress`: the HTTP entry behind Ray's proxy. It reads the prompt of a call (completion,
  chat, v2 generate) and forwards the call through the handle, whose request router picks the
  replica.

Routing (`routing`):

- `prefix_aware` (default): Ray Serve LLM's `PrefixCacheAffinityRouter`, after SGLang's
  cache-aware router: an approximate prefix tree per replica of the prompts routed to it; a prompt
  goes to the replica with the longest match when at least `match_rate_threshold` of it matches,
  otherwise to the replica holding the least text; when the longest queue exceeds the shortest by
  more than `imbalanced_threshold` requests, to the shorter queue of two random replicas instead.
- `round_robin`: replicas in turn (the baseline of scripts/bench_ray_prefix.py).
- `power_of_two`: Ray Serve's default, the shorter queue of two random replicas.

Each response carries `x-ingot-replica` (the replica that ran it). Each replica exports ingot's
engine series to Ray's metrics (`ray_ingot_*`, tagged with deployment, replica and application):
requests running and waiting, KV cache usage, prefix cache queries and hits, tokens, TTFT.
"""

# no `from __future__ import annotations`: Ray Serve's ingress rewrites the route's signature, and
# FastAPI must see `Request` itself, not a string it can no longer resolve
import asyncio
import contextlib
import itertools
import json
import logging
from dataclasses import dataclass, field
from typing import Literal

try:
    from ray import serve
    from ray.llm._internal.serve.routing_policies.prefix_aware.prefix_aware_router import (
        PrefixCacheAffinityRouter,  # public as ray.serve.llm.request_router, which needs vLLM
    )
    from ray.serve.config import RequestRouterConfig
    from ray.serve.request_router import PendingRequest, RequestRouter, RunningReplica
except ImportError as e:  # pragma: no cover - the extra is missing
    raise ImportError(f"ingot.serve.ray needs Ray Serve: pip install 'ingot[ray]' ({e})") from None

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from ingot.serve.metrics import Metrics

log = logging.getLogger("ingot.serve")

REPLICA_HEADER = "x-ingot-replica"


class RayServeOptions(BaseModel):
    """The application's arguments (`serve run ingot.serve.ray:build_app key=value ...` or a
    config file's `args`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str  # a bundle or a model repository, at this path on every node
    model_name: str | None = None  # a single bundle's model name (default: its folder's name)
    num_replicas: int = Field(1, ge=1)
    autoscaling_config: dict | None = None  # Ray's AutoscalingConfig; replaces num_replicas
    max_ongoing_requests: int = Field(64, ge=1)  # per engine replica (its engine queues beyond max_num_seqs)
    routing: Literal["prefix_aware", "round_robin", "power_of_two"] = "prefix_aware"
    imbalanced_threshold: float = Field(16, ge=0)  # queue-length gap beyond which load wins over prefix
    match_rate_threshold: float = Field(0.1, ge=0, le=1)
    engine_num_cpus: float = Field(1, ge=0)  # Ray CPUs reserved per engine replica
    threads: int | None = Field(None, ge=1)  # ONNX Runtime intra-op threads per replica
    kv_cache_memory: str | float | None = None  # per replica, as `ingot serve --kv-cache-memory`
    max_num_tokens: int | None = Field(None, ge=1)
    target: str | None = None
    metrics_interval_s: float = Field(2.0, gt=0)  # how often a replica copies its series to Ray's metrics


@dataclass(frozen=True)
class HTTPCall:
    """One HTTP request, forwarded to an engine replica. `prompt` is what the prefix router
    reads (Ray's router looks for a `prompt` attribute; None: route by load alone)."""

    method: str
    path: str
    query: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    prompt: str | None = None


@dataclass(frozen=True)
class ResponseStart:
    status: int
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


# ---- routers


class PrefixAwareRouter(PrefixCacheAffinityRouter):
    """Ray Serve LLM's prefix-cache affinity router over `HTTPCall.prompt`; calls without a
    prompt (health, models, metadata) are routed by load alone."""

    def _extract_text_from_request(self, pending_request: PendingRequest) -> str | None:
        # by attribute, as Ray's own router reads requests (an isinstance check on HTTPCall did not match here)
        prompt = next((a.prompt for a in pending_request.args if hasattr(a, "prompt")), None)
        return prompt if isinstance(prompt, str) and prompt else None


class RoundRobinRouter(RequestRouter):
    """Replicas in turn, in a fixed order: the baseline that ignores prefixes and queues."""

    def initialize_state(self, **kwargs) -> None:
        self._turn = itertools.count()

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None) -> list[list[RunningReplica]]:
        replicas = sorted(candidate_replicas, key=lambda r: r.replica_id.unique_id)
        return [[replicas[next(self._turn) % len(replicas)]]] if replicas else []


def router_config(options: RayServeOptions) -> RequestRouterConfig | None:
    if options.routing == "prefix_aware":
        return RequestRouterConfig(request_router_class=PrefixAwareRouter,
                                   request_router_kwargs={"imbalanced_threshold": options.imbalanced_threshold,
                                                          "match_rate_threshold": options.match_rate_threshold})
    if options.routing == "round_robin":
        return RequestRouterConfig(request_router_class=RoundRobinRouter)
    return None  # Ray's default: power of two choices


# ---- the engine replica


class IngotEngine:
    """One replica: the models of `options.model`, loaded and warmed up, behind ingot's HTTP app."""

    async def __init__(self, options: dict):
        from ingot.runtime.llm.kv_cache import parse_memory
        from ingot.serve.grpc_service import ServerState
        from ingot.serve.http_app import create_app
        from ingot.serve.manager import ModelManager
        from ingot.serve.repository import Repository
        from ingot.serve.served import RuntimeOptions

        opts = RayServeOptions.model_validate(options)
        memory = opts.kv_cache_memory
        runtime = RuntimeOptions(threads=opts.threads, max_num_tokens=opts.max_num_tokens, target=opts.target,
                                 kv_cache_memory=parse_memory(memory) if isinstance(memory, str) else memory)
        repo = Repository(opts.model, opts.model_name)
        self.manager = ModelManager(repo, runtime)
        self.metrics = RayMetrics(self.manager)
        self.manager.observer = self.metrics
        self.state = ServerState(required=repo.names())
        for name in repo.names():
            await self.manager.load(name)
        self.app = create_app(self.manager, self.state, explicit=False)
        self.replica = serve.get_replica_context().replica_id.unique_id
        self._export = asyncio.get_running_loop().create_task(self.metrics.export_every(opts.metrics_interval_s))

    async def handle(self, call: HTTPCall):
        """Run `call` through the HTTP app: a ResponseStart, then the body's chunks. Closing the
        stream early (the client went away) disconnects the call, which aborts its generation."""
        sent: asyncio.Queue = asyncio.Queue()
        disconnected = asyncio.Event()
        body = [{"type": "http.request", "body": call.body, "more_body": False}]

        async def receive() -> dict:
            if body:
                return body.pop()
            await disconnected.wait()
            return {"type": "http.disconnect"}

        scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
                 "method": call.method, "scheme": "http", "path": call.path, "raw_path": call.path.encode(),
                 "query_string": call.query, "root_path": "", "headers": call.headers,
                 "client": ("127.0.0.1", 0), "server": ("127.0.0.1", 0)}
        task = asyncio.ensure_future(self.app(scope, receive, sent.put))
        task.add_done_callback(lambda _: sent.put_nowait(None))
        try:
            while (message := await sent.get()) is not None:
                if message["type"] == "http.response.start":
                    headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"content-length"]
                    yield ResponseStart(message["status"], [*headers, (REPLICA_HEADER.encode(), self.replica.encode())])
                elif message["type"] == "http.response.body":
                    if message.get("body"):
                        yield message["body"]
                    if not message.get("more_body"):
                        break
        finally:
            disconnected.set()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(task, 5)  # the app sees the disconnect and aborts; then it is cancelled

    async def __del__(self):
        self._export.cancel()
        await self.manager.shutdown(5.0)


class RayMetrics(Metrics):
    """ingot's Prometheus series of this replica (serve/metrics.py), copied into Ray's metrics
    every few seconds, where Ray tags them with the deployment, replica and application."""

    def __init__(self, manager):
        super().__init__(manager)
        self._ray: dict[str, object] = {}
        self._totals: dict[tuple, float] = {}

    def finished(self, served, out) -> None:
        super().finished(served, out)
        if out.metrics.ttft_s is not None:
            self._metric("histogram", "time_to_first_token_seconds", "Time to first token, queueing included.",
                         ).observe(out.metrics.ttft_s, tags={"model_name": served.name,
                                                             "model_version": str(served.version)})

    async def export_every(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                self.export()
            except Exception:  # metrics never stop serving
                log.exception("copying metrics to Ray failed")

    def export(self) -> None:
        """Gauges as they are; counters by what they grew since the last copy."""
        for family in self.registry.collect():
            if not family.name.startswith("ingot:") or family.type not in ("gauge", "counter"):
                continue
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue
                name = sample.name.removeprefix("ingot:").removesuffix("_total")
                tags = dict(sample.labels)
                metric = self._metric(family.type, name, family.documentation, tuple(tags))
                if family.type == "gauge":
                    metric.set(sample.value, tags=tags)
                    continue
                key = (name, tuple(sorted(tags.items())))
                delta = sample.value - self._totals.get(key, 0.0)
                self._totals[key] = sample.value
                if delta > 0:
                    metric.inc(delta, tags=tags)

    def _metric(self, kind: str, name: str, doc: str, keys: tuple = ("model_name", "model_version")):
        from ray.serve import metrics as ray_metrics

        if name not in self._ray:
            if kind == "histogram":
                self._ray[name] = ray_metrics.Histogram(f"ingot_{name}", doc, boundaries=list(_TTFT_BUCKETS),
                                                        tag_keys=keys)
            else:
                cls = ray_metrics.Gauge if kind == "gauge" else ray_metrics.Counter
                self._ray[name] = cls(f"ingot_{name}", doc, tag_keys=keys)
        return self._ray[name]


_TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0)


# ---- the HTTP entry

_ingress_app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
# (the ingress class comes after every name it uses: Ray serializes it as it is decorated)


def routing_text(body: bytes) -> str | None:
    """The text a request's KV cache starts with, as far as the body says: a completion's prompt
    (text, or token ids as text), a chat's messages, a v2 generate's `text_input`."""
    try:
        doc = json.loads(body) if body else None
    except ValueError:
        return None
    if not isinstance(doc, dict):
        return None
    prompt = doc.get("prompt", doc.get("text_input"))
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and all(isinstance(t, int) for t in prompt):
        return " ".join(map(str, prompt)) + " "
    messages = doc.get("messages")
    if isinstance(messages, list):
        parts = []
        for m in messages:
            content = m.get("content") if isinstance(m, dict) else None
            if isinstance(content, list):
                content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
            parts.append(f"{m.get('role', '')}: {content or ''}\n" if isinstance(m, dict) else "")
        return "".join(parts) or None
    return None


@serve.ingress(_ingress_app)
class IngotIngress:
    def __init__(self, engine):
        self.engine = engine  # a DeploymentHandle, routed by the engine deployment's request router

    @_ingress_app.api_route("/{path:path}", methods=["GET", "POST"])
    async def forward(self, path: str, request: Request):
        body = await request.body()
        call = HTTPCall(method=request.method, path="/" + path, query=request.url.query.encode(),
                        headers=list(request.headers.raw), body=body, prompt=routing_text(body))
        stream = self.engine.options(stream=True).handle.remote(call)
        start = await stream.__anext__()
        assert isinstance(start, ResponseStart)

        async def chunks():
            async for chunk in stream:
                yield chunk

        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in start.headers}
        return StreamingResponse(chunks(), status_code=start.status, headers=headers,
                                 media_type=headers.get("content-type"))


# ---- the application


def build_app(args: dict):
    """The Ray Serve application: `serve run ingot.serve.ray:build_app model=PATH ...`, or
    `import_path: ingot.serve.ray:build_app` with `args:` in a config file. Bad arguments raise
    ValueError naming the argument."""
    options = parse_options(args)
    scaling = {"autoscaling_config": options.autoscaling_config} if options.autoscaling_config \
        else {"num_replicas": options.num_replicas}
    router = router_config(options)
    engine = serve.deployment(IngotEngine, name="IngotEngine").options(
        max_ongoing_requests=options.max_ongoing_requests, ray_actor_options={"num_cpus": options.engine_num_cpus},
        health_check_period_s=10, **scaling, **({"request_router_config": router} if router else {}))
    ingress = serve.deployment(IngotIngress, name="IngotIngress").options(
        ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1024)
    return ingress.bind(engine.bind(options.model_dump()))


def parse_options(args: dict) -> RayServeOptions:
    """The application's arguments, with Ray's autoscaling fields, checked before Ray starts a
    replica: one line naming what is wrong."""
    from pydantic import ValidationError
    from ray.serve.config import AutoscalingConfig

    try:
        options = RayServeOptions.model_validate(args)
        if options.autoscaling_config is not None:
            AutoscalingConfig(**options.autoscaling_config)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise ValueError(f"ingot.serve.ray: {where}: {err['msg']}" if where else f"ingot.serve.ray: {err['msg']}") from None
    except TypeError as e:
        raise ValueError(f"ingot.serve.ray: autoscaling_config: {e}") from None
    return options  # the model's path is checked where the replicas run: it need not exist here
