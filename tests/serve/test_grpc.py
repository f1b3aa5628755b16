"""The KServe v2 / Triton gRPC protocol of `ingot serve`, with the stock tritonclient (sync, aio
and streaming) against a served repository of the tiny Llama, a tiny encoder and a tiny CNN."""

from __future__ import annotations

import asyncio
import queue

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from ingot.runtime import load
from ingot.runtime.llm import LLM, SamplingParams

PROMPTS = ["The quick brown fox", "A man is eating food.", "Plans are bundles with manifests"]


def text_input(name: str, texts: list[str]) -> grpcclient.InferInput:
    t = grpcclient.InferInput(name, [len(texts)], "BYTES")
    t.set_data_from_numpy(np.array([s.encode() for s in texts], dtype=object))
    return t


def scalar(name: str, value, datatype: str) -> grpcclient.InferInput:
    t = grpcclient.InferInput(name, [1], datatype)
    t.set_data_from_numpy(np.array([value], dtype={"INT32": np.int32, "BOOL": np.bool_, "FP32": np.float32,
                                                   "UINT64": np.uint64}[datatype]))
    return t


def llm_inputs(prompt: str, max_tokens: int, stream: bool = True, **extra) -> list[grpcclient.InferInput]:
    inputs = [text_input("text_input", [prompt]), scalar("max_tokens", max_tokens, "INT32"),
              scalar("stream", stream, "BOOL"), scalar("temperature", 0.0, "FP32")]
    for name, (value, datatype) in extra.items():
        inputs.append(scalar(name, value, datatype))
    return inputs


def stream(client, model: str, requests: list[list], empty_final: bool = False, timeout: float = 60):
    """Send each request on one stream; {request id: (texts, final flags, errors)}."""
    results: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        for i, inputs in enumerate(requests):
            client.async_stream_infer(model, inputs, request_id=str(i), enable_empty_final_response=empty_final)
        out = {str(i): ([], [], []) for i in range(len(requests))}
        done = set()
        while len(done) < len(requests):
            result, error = results.get(timeout=timeout)
            if error is not None:
                raise error
            response = result.get_response()
            texts, finals, _ = out[response.id]
            arr = result.as_numpy("text_output")
            texts.append(None if arr is None else arr[0].decode())
            finals.append(response.parameters["triton_final_response"].bool_param)
            if finals[-1]:
                done.add(response.id)
        return out
    finally:
        client.stop_stream()


def test_health_and_metadata(server):
    c = server.client()
    assert c.is_server_live() and c.is_server_ready()
    meta = c.get_server_metadata()
    assert meta.name == "ingot" and "model_repository" in meta.extensions and "statistics" in meta.extensions
    assert all(c.is_model_ready(m) for m in ("llama", "bert", "cnn")) and not c.is_model_ready("nope")
    bert = c.get_model_metadata("bert")
    assert {i.name for i in bert.inputs} >= {"input_ids", "attention_mask", "text"}
    assert bert.versions == ["1"] and {o.name for o in bert.outputs} >= {"sentence_embedding"}
    assert c.get_model_config("llama").config.model_transaction_policy.decoupled
    assert not c.get_model_config("cnn").config.model_transaction_policy.decoupled
    assert c.get_model_config("cnn").config.dynamic_batching.max_queue_delay_microseconds == 20000
    index = {(m.name, m.version, m.state) for m in c.get_model_repository_index().models}
    assert {("llama", "1", "READY"), ("bert", "1", "READY"), ("cnn", "1", "READY")} <= index

    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(server.url) as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="")).status
    assert status == health_pb2.HealthCheckResponse.SERVING


def test_encoder_text_and_tensors_match_the_runtime(server, bert_bundle):
    model = load(bert_bundle)
    want = model.run_text(PROMPTS)["sentence_embedding"]
    c = server.client()
    got = c.infer("bert", [text_input("text", PROMPTS)]).as_numpy("sentence_embedding")
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    feeds = model.encode(PROMPTS)  # the same as tensors, raw and typed contents
    inputs = []
    for name, arr in feeds.items():
        t = grpcclient.InferInput(name, list(arr.shape), "INT64")
        t.set_data_from_numpy(arr)
        inputs.append(t)
    out = c.infer("bert", inputs, outputs=[grpcclient.InferRequestedOutput("sentence_embedding")])
    np.testing.assert_allclose(out.as_numpy("sentence_embedding"), want, rtol=1e-5, atol=1e-5)
    assert out.as_numpy("last_hidden_state") is None  # only what was asked for


def test_concurrent_requests_are_batched_and_split_back(server, cnn_bundle):
    images = np.random.default_rng(0).standard_normal((8, 1, 3, 16, 16)).astype(np.float32)
    want = load(cnn_bundle).run({"image": images[:, 0]})["logits"]
    before = server.client().get_inference_statistics("cnn").model_stats[0]

    async def one(client, i):
        t = grpcclient.InferInput("image", [1, 3, 16, 16], "FP32")
        t.set_data_from_numpy(images[i])
        return (await client.infer("cnn", [t])).as_numpy("logits")

    async def all_of_them():
        client = server.aio_client()
        try:
            return await asyncio.gather(*(one(client, i) for i in range(8)))
        finally:
            await client.close()

    got = np.concatenate(asyncio.run(all_of_them()))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    after = server.client().get_inference_statistics("cnn").model_stats[0]
    assert after.inference_count - before.inference_count == 8
    assert after.execution_count - before.execution_count < 8  # merged into fewer plan calls
    assert max(b.batch_size for b in after.batch_stats) > 1


def test_stream_matches_in_process_greedy_generation(server, llama_bundle):
    params = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)
    want = [o.text for o in LLM(llama_bundle).generate(PROMPTS, params)]
    out = stream(server.client(), "llama", [llm_inputs(p, 10, ignore_eos=(True, "BOOL")) for p in PROMPTS])
    for i, text in enumerate(want):
        texts, finals, _ = out[str(i)]
        assert "".join(t for t in texts if t) == text
        assert finals[-1] and not any(finals[:-1]) and len(texts) > 1  # token by token, one final


def test_empty_final_response_and_non_streamed_text(server):
    out = stream(server.client(), "llama", [llm_inputs(PROMPTS[0], 6, ignore_eos=(True, "BOOL"))], empty_final=True)
    texts, finals, _ = out["0"]
    assert texts[-1] is None and finals == [False] * (len(finals) - 1) + [True]  # empty final after the tokens
    whole = stream(server.client(), "llama", [llm_inputs(PROMPTS[0], 6, stream=False, ignore_eos=(True, "BOOL"))])
    (text,), (final,), _ = whole["0"]
    assert final and text == PROMPTS[0] + "".join(t for t in texts if t)  # the backends' default: prompt + text


def test_sampling_parameters_json_as_the_vllm_backend_sends_it(server):
    t = grpcclient.InferInput("sampling_parameters", [1], "BYTES")
    t.set_data_from_numpy(np.array([b'{"max_tokens": 4, "temperature": 0, "ignore_eos": true}'], dtype=object))
    out = stream(server.client(), "llama", [[text_input("text_input", [PROMPTS[1]]), t]])
    texts, finals, _ = out["0"]
    assert finals[-1] and len([x for x in texts if x is not None]) <= 4


def expect_error(call, code: str, *fragments: str) -> str:
    with pytest.raises(InferenceServerException) as info:
        call()
    assert info.value.status() == code, (info.value.status(), info.value.message())
    for fragment in fragments:
        assert fragment in info.value.message(), info.value.message()
    return info.value.message()


def test_errors_get_their_status_codes(server):
    c = server.client()
    expect_error(lambda: c.infer("nope", [text_input("text", ["x"])]), "StatusCode.NOT_FOUND", "unknown model 'nope'")
    expect_error(lambda: c.infer("llama", llm_inputs("hi", 4)), "StatusCode.UNIMPLEMENTED", "ModelStreamInfer")
    bad = grpcclient.InferInput("pixels", [1, 3, 16, 16], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 3, 16, 16), np.float32))
    expect_error(lambda: c.infer("cnn", [bad]), "StatusCode.INVALID_ARGUMENT", "unknown input 'pixels'", "image")
    wrong = grpcclient.InferInput("image", [1, 3, 16, 16], "FP64")
    wrong.set_data_from_numpy(np.zeros((1, 3, 16, 16), np.float64))
    expect_error(lambda: c.infer("cnn", [wrong]), "StatusCode.INVALID_ARGUMENT", "dtype")
    expect_error(lambda: c.load_model("cnn"), "StatusCode.UNAVAILABLE", "explicit")
    expect_error(lambda: c.get_model_metadata("nope"), "StatusCode.NOT_FOUND")


def test_stream_errors_come_in_band(server):
    with pytest.raises(InferenceServerException, match="missing input 'text_input'"):
        stream(server.client(), "llama", [[scalar("max_tokens", 4, "INT32")]])
    with pytest.raises(InferenceServerException, match="max_tokens"):
        stream(server.client(), "llama", [llm_inputs("hi", 0)])


def test_metrics_count_requests(server):
    stream(server.client(), "llama", [llm_inputs(PROMPTS[2], 5, ignore_eos=(True, "BOOL"))])
    m = server.metrics()
    assert m['ingot:generation_tokens_total{model_name="llama",model_version="1"}'] >= 5
    assert m['ingot:request_success_total{finished_reason="length",model_name="llama",model_version="1"}'] >= 1
    assert m['nv_inference_request_success{model_name="llama",model_version="1"}'] >= 1
    assert m['ingot:kv_cache_free_blocks{model_name="llama",model_version="1"}'] == \
        m['ingot:kv_cache_blocks{model_name="llama",model_version="1"}']


def test_a_model_failing_mid_request_gets_internal_and_the_server_keeps_serving(server, bert_bundle):
    feeds = load(bert_bundle).encode(PROMPTS[:1])
    feeds["input_ids"][0, 1] = 10**9  # passes the shape check, fails in the plan's embedding Gather
    inputs = []
    for name, arr in feeds.items():
        t = grpcclient.InferInput(name, list(arr.shape), "INT64")
        t.set_data_from_numpy(arr)
        inputs.append(t)
    c = server.client()
    expect_error(lambda: c.infer("bert", inputs), "StatusCode.INTERNAL")
    assert c.infer("bert", [text_input("text", PROMPTS[:1])]).as_numpy("sentence_embedding").shape[0] == 1
    assert c.is_server_ready()


def test_typed_contents_equal_raw_contents(server, bert_bundle):
    from tritonclient.grpc import service_pb2 as pb
    from tritonclient.grpc import service_pb2_grpc

    feeds = load(bert_bundle).encode(PROMPTS)
    typed = pb.ModelInferRequest(model_name="bert")
    for name, arr in feeds.items():
        t = typed.inputs.add(name=name, datatype="INT64", shape=list(arr.shape))
        t.contents.int64_contents.extend(arr.reshape(-1).tolist())
    typed.outputs.add(name="sentence_embedding")
    with grpc.insecure_channel(server.url) as channel:
        response = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(typed, timeout=30)
    got = np.frombuffer(response.raw_output_contents[0], np.float32).reshape(list(response.outputs[0].shape))
    want = load(bert_bundle).run_text(PROMPTS)["sentence_embedding"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_backend_controls_asking_for_what_is_not_done_are_refused(server):
    """TensorRT-LLM's controls: at their defaults accepted (genai-perf sends them), else refused
    in-band, never ignored; random_seed is the seed."""
    c = server.client()
    defaults = stream(c, "llama", [llm_inputs(PROMPTS[0], 3, beam_width=(1, "INT32"), return_log_probs=(False, "BOOL"))])
    assert defaults["0"][1][-1]
    with pytest.raises(InferenceServerException, match="return_log_probs: the gRPC stream gives text only"):
        stream(c, "llama", [llm_inputs(PROMPTS[0], 3, return_log_probs=(True, "BOOL"))])
    with pytest.raises(InferenceServerException, match="beam_width 4: beam search is not supported"):
        stream(c, "llama", [llm_inputs(PROMPTS[0], 3, beam_width=(4, "INT32"))])
    sampled = [[text_input("text_input", [PROMPTS[1]]), scalar("max_tokens", 8, "INT32"), scalar("temperature", 1.0, "FP32"),
                scalar("random_seed", seed, "UINT64"), scalar("ignore_eos", True, "BOOL")] for seed in (7, 7, 8)]
    out = stream(c, "llama", sampled)
    assert out["0"][0] == out["1"][0] != out["2"][0]  # random_seed is the seed: the same seed, the same tokens
