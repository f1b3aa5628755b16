"""`ingot bench --url URL`: the serving benchmark of ingot/runtime/llm/bench.py against a running
server, as `vllm bench serve` does: the same workload (N prompts of P tokens, G output tokens with
EOS ignored, at most C in flight, optional Poisson arrivals and shared prefix, one unmeasured
warm-up batch), streamed by stock clients, and the same `BenchResult` plus ITL and errors.

- `grpc://HOST:PORT`: KServe v2 / Triton, one `stream_infer` stream per request (tritonclient aio);
  the prompt goes as text decoded from its ids (the server tokenizes it back: about P tokens).
- `http://HOST:PORT`: the OpenAI API, streamed `/v1/completions` with the ids as the prompt (exactly P).

Times are the client's, from sending a request: TTFT to the first response that carries text,
ITL the gaps between such responses, TPOT (last - first) / (tokens - 1).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from ingot.runtime.errors import InputError, RunError
from ingot.runtime.llm.bench import (
    BenchConfig,
    BenchResult,
    arrivals,
    percentile,
    prompts_from,
)

CONNECT_TIMEOUT_S = 10.0
REQUEST_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class Endpoint:
    scheme: str  # "grpc" or "http"
    address: str  # grpc: HOST:PORT; http: the base URL

    @property
    def url(self) -> str:
        return self.address if self.scheme == "http" else f"grpc://{self.address}"


@dataclass(frozen=True)
class Timing:
    """One request as the client saw it; seconds from its send."""

    text_s: tuple[float, ...]  # when each response carrying text arrived
    end_s: float
    output_tokens: int
    prompt_tokens: int
    error: str | None = None


Send = Callable[[list[int]], Awaitable[Timing]]


def parse_url(url: str) -> Endpoint:
    """grpc://HOST:PORT or http(s)://HOST:PORT[/prefix]."""
    parts = urlsplit(url)
    if parts.scheme not in ("grpc", "http", "https"):
        raise InputError(f"--url {url}: the scheme must be grpc:// or http://")
    try:
        port = parts.port
    except ValueError:
        port = None
    if not parts.hostname or port is None:
        raise InputError(f"--url {url}: give a host and a port, e.g. {parts.scheme}://127.0.0.1:8001")
    if parts.scheme == "grpc":
        return Endpoint("grpc", parts.netloc)
    return Endpoint("http", url.rstrip("/"))


def load_tokenizer(folder: Path):
    """The `tokenizers.Tokenizer` of a bundle (DIR/tokenizer/tokenizer.json) or of a tokenizer folder."""
    from tokenizers import Tokenizer

    for path in (folder / "tokenizer" / "tokenizer.json", folder / "tokenizer.json"):
        if path.is_file():
            tok = Tokenizer.from_file(str(path))
            tok.no_truncation()
            tok.no_padding()
            return tok
    raise InputError(f"--tokenizer {folder}: no tokenizer/tokenizer.json or tokenizer.json there (give a bundle folder)")


def check_lengths(folder: Path, cfg: BenchConfig) -> None:
    """Refuse, as in process, a workload longer than a bundle's max_model_len (a server would cut the
    output short, and gRPC responses do not say by how much)."""
    from ingot.plans import open_bundle
    from ingot.plans.bundle import MANIFEST

    if not (folder / MANIFEST).is_file():
        return
    llm = getattr(open_bundle(folder, verify=False).manifest, "llm", None)
    if llm is not None and cfg.prompt_len + cfg.output_len > llm.max_model_len:
        raise InputError(f"--prompt-len + --output-len = {cfg.prompt_len + cfg.output_len} exceeds the "
                         f"bundle's max_model_len {llm.max_model_len}")


def run_server_bench(url: str, cfg: BenchConfig, tokenizer: Path, model: str | None = None) -> BenchResult:
    """Run the workload against the server at `url` and measure it from the client."""
    endpoint = parse_url(url)
    tok = load_tokenizer(tokenizer)
    check_lengths(tokenizer, cfg)
    special = [i for i, t in tok.get_added_tokens_decoder().items() if t.special]
    prompts, warmups, source = prompts_from(tok, tok.get_vocab_size(with_added_tokens=False), special, cfg)
    return asyncio.run(_bench(endpoint, tok, cfg, model, prompts, warmups, source))


async def _bench(endpoint: Endpoint, tok, cfg: BenchConfig, model: str | None, prompts: list[list[int]],
                 warmups: list[list[int]], source: str) -> BenchResult:
    client = GrpcClient(endpoint, tok) if endpoint.scheme == "grpc" else HttpClient(endpoint, cfg.concurrency)
    try:
        name = choose_model(await client.served_models(), model, endpoint.url)

        async def send(ids: list[int]) -> Timing:
            return await client.send(name, ids, cfg.output_len)

        if cfg.warmup:
            await _drive(send, warmups, np.zeros(len(warmups)), cfg.concurrency)
        start = time.perf_counter()
        timings = await _drive(send, prompts, arrivals(cfg), cfg.concurrency)
        wall = time.perf_counter() - start
    finally:
        await client.close()
    return _result(cfg, endpoint.url, name, source, timings, wall)


def choose_model(served: list[str], wanted: str | None, url: str) -> str:
    names = sorted(set(served))
    if wanted is not None:
        if wanted not in names:
            raise InputError(f"--model {wanted}: {url} does not serve it (it serves: {', '.join(names) or 'nothing'})")
        return wanted
    if len(names) != 1:
        raise InputError(f"{url} serves {len(names)} models ({', '.join(names) or 'none ready'}): "
                         "choose one with --model")
    return names[0]


async def _drive(send: Send, prompts: list[list[int]], at: np.ndarray, concurrency: int) -> list[Timing]:
    """Send each prompt once its arrival time has come and fewer than `concurrency` are in flight."""
    gate, start = asyncio.Semaphore(concurrency), time.perf_counter()

    async def one(i: int) -> Timing:
        await asyncio.sleep(max(at[i] - (time.perf_counter() - start), 0.0))
        async with gate:
            return await send(prompts[i])

    return list(await asyncio.gather(*(one(i) for i in range(len(prompts)))))


class _Watch:
    """The clock of one request, started at its send."""

    def __init__(self):
        self.start, self.text_s = time.perf_counter(), []

    def text(self, text: str | None) -> None:
        if text:
            self.text_s.append(time.perf_counter() - self.start)

    def done(self, output_tokens: int, prompt_tokens: int, error: str | None = None) -> Timing:
        return Timing(tuple(self.text_s), time.perf_counter() - self.start, output_tokens, prompt_tokens, error)

    def failed(self, error: str) -> Timing:
        return self.done(0, 0, " ".join(error.split()) or "failed")


class GrpcClient:
    """KServe v2 streaming through tritonclient's aio client: one stream per request."""

    def __init__(self, endpoint: Endpoint, tok):
        import tritonclient.grpc.aio as aioclient

        self.endpoint, self.tok = endpoint, tok
        self.client = aioclient.InferenceServerClient(endpoint.address)

    async def served_models(self) -> list[str]:
        from tritonclient.utils import InferenceServerException

        try:
            index = await self.client.get_model_repository_index(as_json=True, client_timeout=CONNECT_TIMEOUT_S)
        except InferenceServerException as e:
            raise RunError(f"cannot reach {self.endpoint.url}: {e.message() or e}") from None
        return [m["name"] for m in index.get("models", []) if m.get("state", "READY") == "READY"]

    async def send(self, model: str, ids: list[int], max_tokens: int) -> Timing:
        inputs = self._inputs(self.tok.decode(ids), max_tokens)

        async def requests():
            yield {"model_name": model, "inputs": inputs}

        watch = _Watch()
        try:
            async for result, error in self.client.stream_infer(requests(), stream_timeout=REQUEST_TIMEOUT_S):
                if error is not None:
                    return watch.failed(str(error))
                text = result.as_numpy("text_output")
                watch.text(None if text is None else text[0].decode(errors="replace"))
                if result.get_response().parameters["triton_final_response"].bool_param:
                    return watch.done(max_tokens, len(ids))
        except Exception as e:  # noqa: BLE001 - a failed request is counted, not fatal
            return watch.failed(f"{type(e).__name__}: {e}")
        return watch.failed("the stream ended without a final response")

    @staticmethod
    def _inputs(text: str, max_tokens: int) -> list:
        import tritonclient.grpc as grpcclient

        values = {"text_input": (np.array([text.encode()], dtype=object), "BYTES"),
                  "max_tokens": (np.array([max_tokens], dtype=np.int32), "INT32"),
                  "ignore_eos": (np.array([True]), "BOOL"),
                  "temperature": (np.array([0.0], dtype=np.float32), "FP32")}
        inputs = []
        for name, (array, dtype) in values.items():
            inputs.append(grpcclient.InferInput(name, [1], dtype))
            inputs[-1].set_data_from_numpy(array)
        return inputs

    async def close(self) -> None:
        await self.client.close()


class HttpClient:
    """The OpenAI API: streamed /v1/completions with token ids as the prompt, through httpx2."""

    def __init__(self, endpoint: Endpoint, concurrency: int):
        import httpx2

        self.endpoint = endpoint
        self.client = httpx2.AsyncClient(
            base_url=endpoint.address, timeout=httpx2.Timeout(REQUEST_TIMEOUT_S, connect=CONNECT_TIMEOUT_S),
            limits=httpx2.Limits(max_connections=concurrency, max_keepalive_connections=concurrency))

    async def served_models(self) -> list[str]:
        import httpx2

        try:
            response = await self.client.get("/v1/models", timeout=CONNECT_TIMEOUT_S)
        except httpx2.HTTPError as e:
            raise RunError(f"cannot reach {self.endpoint.url}: {type(e).__name__}: {e}") from None
        if response.status_code != 200:
            raise RunError(f"{self.endpoint.url}/v1/models: HTTP {response.status_code}: "
                           f"{_error_message(response.content)}")
        return [m["id"] for m in response.json().get("data", [])]

    async def send(self, model: str, ids: list[int], max_tokens: int) -> Timing:
        body = {"model": model, "prompt": ids, "max_tokens": max_tokens, "temperature": 0, "stream": True,
                "stream_options": {"include_usage": True}, "ignore_eos": True}
        watch, usage = _Watch(), {}
        try:
            async with self.client.stream("POST", "/v1/completions", json=body) as response:
                if response.status_code != 200:
                    return watch.failed(f"HTTP {response.status_code}: {_error_message(await response.aread())}")
                async for line in response.aiter_lines():
                    chunk = _event(line)
                    if chunk is None:
                        continue
                    if chunk == "[DONE]":
                        break
                    if "error" in chunk:
                        return watch.failed(_error_message(json.dumps(chunk).encode()))
                    usage = chunk.get("usage") or usage
                    watch.text(chunk["choices"][0].get("text") if chunk.get("choices") else None)
        except Exception as e:  # noqa: BLE001 - a failed request is counted, not fatal
            return watch.failed(f"{type(e).__name__}: {e}")
        return watch.done(usage.get("completion_tokens", max_tokens), usage.get("prompt_tokens", len(ids)))

    async def close(self) -> None:
        await self.client.aclose()


def _event(line: str) -> dict | str | None:
    """A server-sent event's payload: the chunk, "[DONE]", or None (blank lines, comments)."""
    if not line.startswith("data:"):
        return None
    payload = line[len("data:"):].strip()
    return payload if payload == "[DONE]" else json.loads(payload)


def _error_message(body: bytes) -> str:
    """The message of an OpenAI-shaped error body, else the body."""
    try:
        return str(json.loads(body)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return body.decode(errors="replace")[:200]


def _result(cfg: BenchConfig, url: str, model: str, source: str, timings: list[Timing], wall: float) -> BenchResult:
    ok = [t for t in timings if t.error is None]
    failed = [t.error for t in timings if t.error is not None]
    if not ok:
        raise RunError(f"all {len(timings)} requests to {url} failed, the first: {failed[0]}")
    ttft = np.array([t.text_s[0] if t.text_s else t.end_s for t in ok])
    tpot = np.array([(t.text_s[-1] - t.text_s[0]) / (t.output_tokens - 1)
                     for t in ok if len(t.text_s) > 1 and t.output_tokens > 1] or [0.0])
    itl = np.concatenate([np.diff(t.text_s) for t in ok])
    e2e = np.array([t.end_s for t in ok])
    out_tokens = sum(t.output_tokens for t in ok)
    in_tokens = sum(t.prompt_tokens for t in ok)
    return BenchResult(
        num_requests=cfg.num_requests, prompt_len=cfg.prompt_len, output_len=cfg.output_len,
        concurrency=cfg.concurrency, request_rate=cfg.request_rate, prefix_len=cfg.prefix_len, prompt_source=source,
        wall_s=wall, output_tokens=out_tokens, output_tokens_per_s=out_tokens / wall,
        total_tokens_per_s=(out_tokens + in_tokens) / wall, requests_per_s=len(ok) / wall,
        ttft_mean_s=float(ttft.mean()), ttft_p50_s=percentile(ttft, 50), ttft_p90_s=percentile(ttft, 90),
        ttft_p99_s=percentile(ttft, 99), tpot_mean_s=float(tpot.mean()), tpot_p50_s=percentile(tpot, 50),
        tpot_p90_s=percentile(tpot, 90), e2e_p50_s=percentile(e2e, 50),
        url=url, model=model, errors=len(failed), first_error=failed[0] if failed else None,
        **_itl(itl),
    )


def _itl(itl: np.ndarray) -> dict[str, float]:
    if not len(itl):
        return {}
    return {"itl_mean_s": float(itl.mean()), "itl_p50_s": percentile(itl, 50), "itl_p90_s": percentile(itl, 90),
            "itl_p99_s": percentile(itl, 99)}
