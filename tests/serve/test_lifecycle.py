"""Versions, hot-swap, drain, backpressure, deadlines, cancellation and SIGTERM, on real
`ingot serve` processes with the stock tritonclient (aio streams)."""

from __future__ import annotations

import asyncio
import shutil
import signal
import threading

import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from tritonclient.utils import InferenceServerException

from ingot.runtime.llm import LLM, SamplingParams
from tests.serve.conftest import Server, make_repo
from tests.serve.test_grpc import expect_error, llm_inputs


async def generate(client: aioclient.InferenceServerClient, model: str, prompt: str, max_tokens: int,
                   **kw) -> tuple[str, list[str], list[str]]:
    """One streamed request on its own stream: (text, versions answering, errors)."""
    async def requests():
        yield {"model_name": model, "inputs": llm_inputs(prompt, max_tokens, ignore_eos=(True, "BOOL")), **kw}

    text, versions, errors = [], [], []
    async for result, error in client.stream_infer(requests()):
        if error is not None:
            errors.append(str(error))
            break
        response = result.get_response()
        versions.append(response.model_version)
        arr = result.as_numpy("text_output")
        if arr is not None:
            text.append(arr[0].decode())
        if response.parameters["triton_final_response"].bool_param:
            break
    else:
        errors.append("the stream ended without a final response")
    return "".join(text), versions, errors


def flip_a_byte(bundle) -> None:
    plan = next(bundle.glob("targets/*/model.onnx"))
    data = bytearray(plan.read_bytes())
    data[len(data) // 2] ^= 0xFF
    plan.write_bytes(bytes(data))


def test_hot_swap_under_load_then_a_corrupt_version_then_unload(llama_bundle, tmp_path):
    repo = make_repo(tmp_path / "repo", {"llama": {1: llama_bundle}})
    server = Server(repo, "--model-control-mode", "explicit", "--load-model", "llama")
    try:
        c = server.client()
        import httpx2

        assert httpx2.get(f"{server.http}/v2/models/llama/ready").status_code == 200
        results: list = []

        async def load_of_streams(n: int):
            client = server.aio_client()
            try:
                return await asyncio.gather(*(generate(client, "llama", f"The quick brown fox {i}", 200)
                                              for i in range(n)))
            finally:
                await client.close()

        worker = threading.Thread(target=lambda: results.extend(asyncio.run(load_of_streams(64))))
        worker.start()
        shutil.copytree(llama_bundle, repo / "llama" / "2")
        _wait_running(server, "llama")
        c.load_model("llama")  # loads 2 fully, swaps, then drains 1
        assert not results  # the load came back while the streams were still generating
        worker.join(120)
        assert len(results) == 64 and all(not errors for _, _, errors in results)  # 0 failed requests
        assert all(len(set(versions)) == 1 for _, versions, _ in results)  # a request stays on its version
        _, versions, _ = asyncio.run(_one(server, "llama"))
        assert set(versions) == {"2"}
        index = {(m.name, m.version): (m.state, m.reason) for m in c.get_model_repository_index().models}
        assert index[("llama", "2")][0] == "READY" and index[("llama", "1")][0] == "UNAVAILABLE"

        shutil.copytree(llama_bundle, repo / "llama" / "3")
        flip_a_byte(repo / "llama" / "3")
        message = expect_error(lambda: c.load_model("llama"), "StatusCode.INTERNAL", "version 3")
        assert "sha256" in message or "checksum" in message
        index = {(m.name, m.version): (m.state, m.reason) for m in c.get_model_repository_index().models}
        assert index[("llama", "3")][0] == "UNAVAILABLE" and "load failed" in index[("llama", "3")][1]
        _, versions, errors = asyncio.run(_one(server, "llama"))
        assert set(versions) == {"2"} and not errors  # version 2 keeps serving

        unload_done: list = []

        async def unload_while_streaming():
            client = server.aio_client()
            try:
                long = asyncio.ensure_future(generate(client, "llama", "A man is eating food.", 200))
                await asyncio.to_thread(_wait_running, server, "llama", "2")
                assert not long.done()
                await asyncio.to_thread(c.unload_model, "llama")
                unload_done.append(long.done())
                return await long
            finally:
                await client.close()

        text, _, errors = asyncio.run(unload_while_streaming())
        assert not errors and text and unload_done == [True]  # unload returned after the stream drained
        assert not c.is_model_ready("llama")
        assert httpx2.get(f"{server.http}/v2/models/llama/ready").status_code == 503  # unloaded
        shutil.rmtree(repo / "llama" / "3")
        assert httpx2.post(f"{server.http}/v2/repository/models/llama/load").status_code == 200  # REST control
        assert httpx2.get(f"{server.http}/v2/models/llama/ready").status_code == 200
    finally:
        code, err = server.stop()
    assert code == 0, err


async def _one(server: Server, model: str):
    client = server.aio_client()
    try:
        return await generate(client, model, "Plans are bundles", 4)
    finally:
        await client.close()


@pytest.fixture(scope="module")
def small_server(llama_bundle, tmp_path_factory):
    """One sequence at a time, one waiting: the queue fills at the third request."""
    repo = make_repo(tmp_path_factory.mktemp("small"), {"llama": {1: llama_bundle}},
                     {"llama": {"max_queue_size": 1, "llm": {"max_num_seqs": 1}}})
    s = Server(repo, "--max-message-bytes", "65536")
    yield s
    code, err = s.stop()
    assert code == 0, err


def test_a_message_over_the_limit_is_refused(small_server):
    c = small_server.client()
    huge = llm_inputs("x" * 100_000, 4)
    expect_error(lambda: c.infer("llama", huge), "StatusCode.RESOURCE_EXHAUSTED")
    assert c.is_server_live()


def test_a_full_queue_gets_resource_exhausted(small_server):
    async def three():
        client = small_server.aio_client()
        try:
            return await asyncio.gather(*(generate(client, "llama", f"The quick brown fox {i}", 150)
                                          for i in range(3)))
        finally:
            await client.close()

    errors = [e for _, _, es in asyncio.run(three()) for e in es]
    assert any("queue" in e and "full" in e for e in errors), errors
    assert small_server.metric("ingot:kv_cache_free_blocks", "llama") == small_server.metric("ingot:kv_cache_blocks", "llama")


def test_deadlines_end_requests_and_free_their_blocks(small_server):
    _, _, errors = asyncio.run(_timed(small_server, timeout=1000))  # 1 ms: the `timeout` parameter, in µs
    assert errors and "deadline" in errors[0].lower()
    c = grpcclient.InferenceServerClient(small_server.url)
    got: list = []
    c.start_stream(callback=lambda result, error: got.append(error), stream_timeout=0.5)  # a gRPC deadline
    c.async_stream_infer("llama", llm_inputs("The quick brown fox", 200, ignore_eos=(True, "BOOL")))
    for _ in range(100):
        if any(e is not None for e in got):
            break
        threading.Event().wait(0.05)
    c.stop_stream()
    assert any(e is not None and "DEADLINE_EXCEEDED" in str(e.status()) for e in got), got
    _wait_all_free(small_server)


async def _timed(server: Server, **kw):
    client = server.aio_client()
    try:
        return await generate(client, "llama", "The quick brown fox", 200, **kw)
    finally:
        await client.close()


def _wait_running(server: Server, model: str, version: str = "1", requests: int = 1) -> None:
    """Until the engine holds `requests` requests (running or waiting), one at least running."""
    for _ in range(400):
        running = server.metric("ingot:num_requests_running", model, version)
        if running > 0 and running + server.metric("ingot:num_requests_waiting", model, version) >= requests:
            return
        threading.Event().wait(0.01)
    raise AssertionError("no request started")


def _wait_all_free(server: Server, model: str = "llama") -> None:
    for _ in range(100):
        if server.metric("ingot:kv_cache_free_blocks", model) == server.metric("ingot:kv_cache_blocks", model) \
                and server.metric("ingot:num_requests_running", model) == 0:
            return
        threading.Event().wait(0.05)
    raise AssertionError(f"KV blocks still held: {server.metrics()}")


def test_a_storm_of_cancelled_streams_frees_every_block(server):
    async def storm():
        client = server.aio_client()

        async def one(i):
            async def requests():
                yield {"model_name": "llama", "inputs": llm_inputs(f"Plans {i}", 200, ignore_eos=(True, "BOOL"))}
                await asyncio.sleep(3600)  # keep the stream open

            call = client.stream_infer(requests())
            async for _result, _error in call:
                call.cancel()  # first token: cancel the stream mid-generation
                return

        try:
            tasks = [asyncio.ensure_future(one(i)) for i in range(100)]
            await asyncio.sleep(1.0)
            for t in tasks:
                t.cancel()  # cancel mid-generation, whether or not a token came
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            await client.close()

    aborted = 'ingot:request_success_total{finished_reason="abort",model_name="llama",model_version="1"}'
    before = server.metrics().get(aborted, 0)
    asyncio.run(storm())
    _wait_all_free(server)
    assert server.metrics()[aborted] - before == 100


def test_256_concurrent_streams_get_the_tokens_each_gets_alone(server, llama_bundle):
    prompts = [f"Ingot compiles models {i % 17} ahead of time {i}" for i in range(256)]
    alone = {p: o.text for p, o in zip(prompts[:8], LLM(llama_bundle).generate(
        prompts[:8], SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)))}

    async def load():
        client = server.aio_client()
        try:
            return await asyncio.gather(*(generate(client, "llama", p, 8) for p in prompts))
        finally:
            await client.close()

    results = asyncio.run(load())
    assert all(not errors for _, _, errors in results)
    for p, (text, _, _) in zip(prompts, results):
        if p in alone:
            assert text == alone[p], p
    assert len({text for text, _, _ in results}) > 1  # the prompts differ, and so do the answers


def test_sigterm_lets_streams_in_flight_finish(llama_bundle, tmp_path):
    server = Server(make_repo(tmp_path / "r", {"llama": {1: llama_bundle}}), "--grace-period", "30")
    results: list = []

    async def streams():
        client = server.aio_client()
        try:
            return await asyncio.gather(*(generate(client, "llama", f"The quick brown fox {i}", 200) for i in range(16)))
        finally:
            await client.close()

    worker = threading.Thread(target=lambda: results.extend(asyncio.run(streams())))
    worker.start()
    _wait_running(server, "llama", requests=16)
    server.proc.send_signal(signal.SIGTERM)
    threading.Event().wait(0.05)
    late = asyncio.run(_one(server, "llama"))  # a new request while the others drain
    import httpx2

    assert httpx2.get(f"{server.http}/v2/health/ready").status_code == 503  # draining
    assert httpx2.get(f"{server.http}/v2/health/live").status_code == 200
    code, err = server.stop(None)  # already signalled: wait for the exit
    assert "draining" in err
    assert late[2] and "shutting down" in late[2][0], late
    worker.join(60)
    assert code == 0, err
    assert len(results) == 16 and all(not errors and len(versions) >= 50 for _, versions, errors in results), results
    with pytest.raises(InferenceServerException):  # gone
        grpcclient.InferenceServerClient(server.url).is_server_live()
