"""The HTTP front of `ingot serve`: the OpenAI API through the stock `openai` SDK, KServe v2 REST
through httpx2, on the same server (and models, queues and metrics) as gRPC."""

from __future__ import annotations

import base64
import json
import threading

import httpx2
import numpy as np
import openai
import pytest
import tritonclient.grpc as grpcclient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingot.runtime import load
from ingot.runtime.llm import LLM, SamplingParams
from tests.serve.conftest import Server, make_repo
from tests.serve.test_grpc import PROMPTS, text_input

GREEDY = {"temperature": 0, "extra_body": {"ignore_eos": True}}


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.http}/v1", api_key="unused", max_retries=0)


def test_models_lists_what_is_ready(client):
    assert {m.id for m in client.models.list().data} == {"llama", "bert", "cnn"}


def test_completions_equal_in_process_generation_with_exact_usage(client, llama_bundle):
    llm = LLM(llama_bundle)
    want = llm.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))
    for prompt, w in zip(PROMPTS, want):
        r = client.completions.create(model="llama", prompt=prompt, max_tokens=8, **GREEDY)
        assert r.choices[0].text == w.text and r.choices[0].finish_reason == "length"
        assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (w.num_prompt_tokens, 8)
        ids = client.completions.create(model="llama", prompt=list(w.prompt_token_ids), max_tokens=8, **GREEDY)
        assert ids.choices[0].text == w.text  # token ids as the prompt
    chunks = list(client.completions.create(model="llama", prompt=PROMPTS[0], max_tokens=8, stream=True,
                                            stream_options={"include_usage": True}, **GREEDY))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == want[0].text and len(chunks) > 2
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 8


def test_chat_streamed_equals_chat_whole(client):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": PROMPTS[1]}]
    whole = client.chat.completions.create(model="llama", messages=messages, max_tokens=10, **GREEDY)
    parts = [c for c in client.chat.completions.create(model="llama", messages=messages, max_tokens=10, stream=True,
                                                       stream_options={"include_usage": True}, **GREEDY)]
    streamed = "".join(c.choices[0].delta.content or "" for c in parts if c.choices)
    assert streamed == whole.choices[0].message.content and whole.choices[0].finish_reason == "length"
    assert parts[0].choices[0].delta.role == "assistant" and parts[-1].usage.completion_tokens == 10
    assert whole.usage.prompt_tokens == parts[-1].usage.prompt_tokens > 10
    n = client.chat.completions.create(model="llama", messages=messages, max_tokens=6, n=3, seed=5,
                                       temperature=1.0, extra_body={"ignore_eos": True})
    assert sorted(c.index for c in n.choices) == [0, 1, 2] and n.usage.completion_tokens == 18


def test_completions_logprobs_whole_and_streamed(client):
    r = client.completions.create(model="llama", prompt=PROMPTS[0], max_tokens=8, logprobs=2, **GREEDY)
    choice, lp = r.choices[0], r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 8
    assert "".join(lp.tokens) == choice.text  # this output splits no character: its tokens' texts join to it
    assert lp.text_offset == [len("".join(lp.tokens[:i])) for i in range(8)]
    for token, value, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert value < 0 and 1 <= len(top) <= 3  # the top 2, plus the chosen token when not among them
        assert top[token] == value == max(top.values())  # greedy: the chosen token is the most likely
        assert sum(np.exp(list(top.values()))) <= 1
    chunks = [c.choices[0] for c in client.completions.create(model="llama", prompt=PROMPTS[0], max_tokens=8,
                                                              logprobs=2, stream=True, **GREEDY) if c.choices]
    assert "".join(c.text for c in chunks) == choice.text
    for field in ("tokens", "token_logprobs", "top_logprobs", "text_offset"):
        assert [x for c in chunks for x in getattr(c.logprobs, field)] == getattr(lp, field), field
    plain = client.completions.create(model="llama", prompt=PROMPTS[0], max_tokens=8, **GREEDY)
    assert plain.choices[0].logprobs is None and plain.choices[0].text == choice.text


def test_chat_logprobs_and_top_logprobs_whole_and_streamed(client):
    messages = [{"role": "user", "content": PROMPTS[1]}]
    ask = {"model": "llama", "messages": messages, "max_tokens": 8, "logprobs": True, "top_logprobs": 3, **GREEDY}
    r = client.chat.completions.create(**ask)
    content = r.choices[0].logprobs.content
    text = r.choices[0].message.content
    assert len(content) == 8 and "\ufffd" in "".join(c.token for c in content)  # this output splits characters,
    joined = b"".join(bytes(c.bytes) for c in content).decode(errors="replace")  # which its bytes rejoin,
    assert joined.startswith(text) and not joined[len(text):].strip("\ufffd")  # less a last, incomplete character
    for c in content:
        assert c.logprob < 0 and (c.bytes == list(c.token.encode()) or c.token == "\ufffd")
        assert len(c.top_logprobs) == 3 and (c.top_logprobs[0].token, c.top_logprobs[0].logprob) == (c.token, c.logprob)
        values = [t.logprob for t in c.top_logprobs]
        assert values == sorted(values, reverse=True) and sum(np.exp(values)) <= 1
    parts = [c.choices[0] for c in client.chat.completions.create(**ask, stream=True) if c.choices]
    streamed = [t for p in parts if p.logprobs for t in p.logprobs.content]
    assert [t.model_dump() for t in streamed] == [t.model_dump() for t in content]
    chosen = client.chat.completions.create(**{**ask, "top_logprobs": None})  # logprobs alone: the chosen token's
    assert [(c.token, c.logprob, c.top_logprobs) for c in chosen.choices[0].logprobs.content] == \
        [(c.token, c.logprob, []) for c in content]


def test_logprobs_out_of_bounds_and_echo_are_400(client):
    messages = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.BadRequestError, match="top_logprobs needs logprobs"):
        client.chat.completions.create(model="llama", messages=messages, top_logprobs=2)
    with pytest.raises(openai.BadRequestError, match="top_logprobs"):
        client.chat.completions.create(model="llama", messages=messages, logprobs=True, top_logprobs=21)
    with pytest.raises(openai.BadRequestError, match="logprobs"):
        client.completions.create(model="llama", prompt="x", logprobs=6)
    with pytest.raises(openai.BadRequestError, match="echo"):
        client.completions.create(model="llama", prompt="x", echo=True)


def test_embeddings_equal_the_runtime(client, bert_bundle):
    want = load(bert_bundle).run_text(PROMPTS)["sentence_embedding"]
    got = client.embeddings.create(model="bert", input=PROMPTS)  # the SDK asks for base64
    np.testing.assert_allclose(np.array([d.embedding for d in got.data]), want, rtol=1e-5, atol=1e-5)
    raw = httpx2.post(f"{client.base_url}embeddings", json={"model": "bert", "input": PROMPTS[0],
                                                            "encoding_format": "base64"}).json()
    row = np.frombuffer(base64.b64decode(raw["data"][0]["embedding"]), np.float32)
    np.testing.assert_allclose(row, want[0], rtol=1e-5, atol=1e-5)


def test_max_tokens_and_max_model_len_as_vllm(client):
    """max_tokens given must fit max_model_len (256) with the prompt: else 400. Left out, completions
    take 16 and chat the room left."""
    with pytest.raises(openai.BadRequestError, match=r"you requested \d+ tokens \(\d+ in the prompt, 250 in the completion\)"):
        client.completions.create(model="llama", prompt=PROMPTS[0], max_tokens=250)
    with pytest.raises(openai.BadRequestError, match="max_model_len"):
        client.chat.completions.create(model="llama", messages=[{"role": "user", "content": "x"}], max_tokens=256)
    r = client.completions.create(model="llama", prompt=PROMPTS[0], **GREEDY)
    assert r.usage.completion_tokens == 16
    r = client.chat.completions.create(model="llama", messages=[{"role": "user", "content": PROMPTS[0]}], **GREEDY)
    assert r.usage.prompt_tokens + r.usage.completion_tokens == 256 and r.choices[0].finish_reason == "length"


def test_errors_have_openai_shape_and_status(client, server):
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="x")
    with pytest.raises(openai.BadRequestError, match="max_model_len"):
        client.completions.create(model="llama", prompt="fox " * 400)
    with pytest.raises(openai.BadRequestError, match="not a causal LM"):
        client.completions.create(model="bert", prompt="x")
    r = httpx2.post(f"{server.http}/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and set(r.json()["error"]) >= {"message", "type", "code"}


def test_kserve_rest_health_metadata_and_infer_equal_grpc(server):
    h = server.http
    assert httpx2.get(f"{h}/v2/health/live").status_code == 200
    assert httpx2.get(f"{h}/v2/health/ready").status_code == 200
    assert httpx2.get(f"{h}/v2/models/bert/ready").status_code == 200
    assert httpx2.get(f"{h}/v2/models/nope/ready").status_code == 503
    assert httpx2.get(f"{h}/v2/models/nope").status_code == 404
    assert "text" in {i["name"] for i in httpx2.get(f"{h}/v2/models/bert").json()["inputs"]}
    body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [3], "data": PROMPTS}],
            "outputs": [{"name": "sentence_embedding"}]}
    rest = httpx2.post(f"{h}/v2/models/bert/infer", content=json.dumps(body)).json()["outputs"][0]
    grpc_out = server.client().infer("bert", [text_input("text", PROMPTS)]).as_numpy("sentence_embedding")
    np.testing.assert_allclose(np.array(rest["data"], np.float32).reshape(rest["shape"]), grpc_out, rtol=1e-6)
    bad = httpx2.post(f"{h}/v2/models/bert/infer", json={"inputs": [{"name": "x", "datatype": "FP32", "shape": [1],
                                                                     "data": [1.0]}]})
    assert bad.status_code == 400 and "unknown input 'x'" in bad.json()["error"]
    gen = httpx2.post(f"{h}/v2/models/llama/generate", json={"text_input": PROMPTS[0], "max_tokens": 4,
                                                            "temperature": 0}).json()
    stream = httpx2.post(f"{h}/v2/models/llama/generate_stream", json={"text_input": PROMPTS[0], "max_tokens": 4,
                                                                      "temperature": 0})
    pieces = [json.loads(line[5:])["text_output"] for line in stream.text.splitlines() if line.startswith("data:")]
    assert "".join(pieces) == gen["text_output"] and len(pieces) >= 2


def test_grpc_and_http_at_once_count_in_the_same_metrics(server, client):
    before = server.metric("nv_inference_request_success", "bert")
    threads = [threading.Thread(target=lambda: server.client().infer("bert", [text_input("text", PROMPTS)]))
               for _ in range(4)]
    for t in threads:
        t.start()
    for _ in range(4):
        client.embeddings.create(model="bert", input=PROMPTS[0])
    for t in threads:
        t.join()
    assert server.metric("nv_inference_request_success", "bert") - before == 8


def test_a_disconnect_mid_stream_frees_the_blocks(server):
    from tests.serve.test_lifecycle import _wait_all_free

    with httpx2.stream("POST", f"{server.http}/v1/completions", json={
            "model": "llama", "prompt": PROMPTS[0], "max_tokens": 200, "stream": True, "ignore_eos": True}) as r:
        for line in r.iter_lines():
            if line.startswith("data:"):
                break  # leave after the first chunk: the connection closes
    _wait_all_free(server)


@pytest.fixture(scope="module")
def busy(llama_bundle, tmp_path_factory):
    repo = make_repo(tmp_path_factory.mktemp("busy"), {"llama": {1: llama_bundle}},
                     {"llama": {"max_queue_size": 1, "llm": {"max_num_seqs": 1}}})
    s = Server(repo)
    yield s
    assert s.stop()[0] == 0


def test_a_full_queue_gets_429(busy):
    statuses = []

    def one():
        r = httpx2.post(f"{busy.http}/v1/completions", json={"model": "llama", "prompt": PROMPTS[0], "max_tokens": 150,
                                                             "ignore_eos": True}, timeout=60)
        statuses.append(r.status_code)

    threads = [threading.Thread(target=one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert 429 in statuses and 200 in statuses, statuses


JSON = st.recursive(st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=12)
FIELDS = st.fixed_dictionaries({}, optional={
    "model": st.sampled_from(["llama", "bert", "nope", ""]) | JSON, "prompt": JSON, "messages": JSON, "input": JSON,
    "max_tokens": JSON, "temperature": JSON, "top_p": JSON, "n": st.integers(-2, 20) | JSON, "stream": JSON,
    "stop": JSON, "seed": JSON, "encoding_format": JSON, "logprobs": JSON, "top_logprobs": JSON})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(route=st.sampled_from(["completions", "chat/completions", "embeddings"]), body=FIELDS | JSON)
def test_fuzzed_bodies_get_4xx_never_500(server, route, body):
    if isinstance(body, dict) and body.get("stream") is True:
        body["stream"] = False  # a valid streamed request answers 200 with its errors in-band
    r = httpx2.post(f"{server.http}/v1/{route}", json=body, timeout=60)
    assert r.status_code in (200, 400, 404, 422), (r.status_code, r.text, body)
    if r.status_code != 200:
        assert r.status_code != 422 and "error" in r.json()
