"""`ingot bench --url`: the serving benchmark against a real `ingot serve` process, over gRPC
(tritonclient) and the OpenAI API (httpx2), as users run it."""

from __future__ import annotations

import json
import socket

import pytest

from tests.conftest import assert_user_error, ingot
from tests.serve.conftest import Server

WORKLOAD = ("--num-requests", "8", "--prompt-len", "16", "--output-len", "8", "--concurrency", "4")


@pytest.fixture(scope="module")
def llama_server(llama_bundle):
    s = Server(llama_bundle)
    yield s
    code, err = s.stop()
    assert code == 0, err


def bench_json(*args: str) -> dict:
    proc = ingot("bench", *args, *WORKLOAD, "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def assert_workload_done(data: dict, url: str) -> None:
    assert (data["num_requests"], data["prompt_len"], data["output_len"], data["concurrency"]) == (8, 16, 8, 4)
    assert (data["url"], data["model"], data["errors"], data["first_error"]) == (url, "llama", 0, None)
    assert data["output_tokens"] == 8 * 8 and data["prompt_source"] in ("shakespeare", "synthetic")
    for key in ("output_tokens_per_s", "ttft_p50_s", "ttft_p90_s", "ttft_p99_s", "tpot_p50_s", "tpot_mean_s",
                "itl_p50_s", "itl_p99_s", "e2e_p50_s", "wall_s"):
        assert data[key] > 0, key
    assert data["ttft_p99_s"] >= data["ttft_p90_s"] >= data["ttft_p50_s"]
    assert data["e2e_p50_s"] <= data["wall_s"]
    assert data["preemptions"] is None and data["kv_cache_bytes"] is None  # the engine's own: not seen from here


def test_grpc_streams_the_workload(llama_server, llama_bundle):
    url = f"grpc://{llama_server.url}"
    data = bench_json("--url", url, "--tokenizer", llama_bundle)
    assert_workload_done(data, url)


def test_http_streams_the_workload_with_exact_prompts(llama_server, llama_bundle):
    data = bench_json("--url", llama_server.http, "--tokenizer", llama_bundle, "--model", "llama")
    assert_workload_done(data, llama_server.http)
    tokens = data["total_tokens_per_s"] * data["wall_s"]  # the usage the server reported: ids as the prompt
    assert tokens == pytest.approx(8 * (16 + 8))
    proc = ingot("bench", llama_bundle, "--url", llama_server.http, *WORKLOAD, "--request-rate", "100")
    assert proc.returncode == 0, proc.stderr
    assert f"llama at {llama_server.http}" in proc.stdout and "Poisson 100.0/s" in proc.stdout
    assert "ITL p50" in proc.stdout and "errors 0" in proc.stdout


def test_a_model_the_server_lacks_is_one_error_line(llama_server, llama_bundle):
    for url in (f"grpc://{llama_server.url}", llama_server.http):
        proc = ingot("bench", "--url", url, "--tokenizer", llama_bundle, "--model", "nope", *WORKLOAD)
        assert_user_error(proc, "--model nope", "it serves: llama")


def test_an_unreachable_server_is_one_error_line(llama_bundle):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for url in (f"grpc://127.0.0.1:{port}", f"http://127.0.0.1:{port}"):
        assert_user_error(ingot("bench", "--url", url, "--tokenizer", llama_bundle), "cannot reach", url)


def test_a_bad_url_or_missing_tokenizer_is_one_error_line(llama_bundle, tmp_path):
    assert_user_error(ingot("bench", "--url", "ftp://127.0.0.1:1", "--tokenizer", llama_bundle),
                      "ftp://127.0.0.1:1", "grpc:// or http://")
    assert_user_error(ingot("bench", "--url", "grpc://127.0.0.1", "--tokenizer", llama_bundle), "a host and a port")
    assert_user_error(ingot("bench", "--url", "http://127.0.0.1:1"), "--tokenizer")
    assert_user_error(ingot("bench", "--url", "http://127.0.0.1:1", "--tokenizer", tmp_path), "no tokenizer")
    assert_user_error(ingot("bench", "--url", "http://127.0.0.1:1", "--tokenizer", llama_bundle, "--threads", "2"),
                      "--threads", "not with --url")
    assert_user_error(ingot("bench", "--url", "http://127.0.0.1:1", "--tokenizer", llama_bundle, "--prompt-len", "250",
                            "--output-len", "10"), "max_model_len 256")  # as in process: the bundle's limit
    assert_user_error(ingot("bench"), "--url")
