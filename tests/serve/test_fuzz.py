"""Random requests (model and input names, datatypes, shapes, byte lengths that match their
shape or not, parameters) against a live server: it never crashes, and each gets
INVALID_ARGUMENT or NOT_FOUND (or an answer, when the random request happens to be valid)."""

from __future__ import annotations

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from ingot.serve.tensors import DATATYPES

NAMES = st.sampled_from(["bert", "cnn", "llama", "", "nope", "cnn/1", "../bert", "b" * 300])
INPUTS = st.sampled_from(["image", "input_ids", "attention_mask", "token_type_ids", "text", "text_input",
                          "max_tokens", "", "x"])
DATATYPE = st.sampled_from([*DATATYPES, "FP8", "", "BF16", "int32"])
SHAPE = st.lists(st.integers(-2, 6), max_size=5)
PARAM = st.one_of(st.booleans().map(lambda b: pb.InferParameter(bool_param=b)),
                  st.integers(-2**40, 2**40).map(lambda i: pb.InferParameter(int64_param=i)),
                  st.text(max_size=20).map(lambda s: pb.InferParameter(string_param=s)))
OK = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNIMPLEMENTED}


@st.composite
def requests(draw):
    request = pb.ModelInferRequest(model_name=draw(NAMES), model_version=draw(st.sampled_from(["", "1", "2", "x"])))
    raw = draw(st.booleans())
    for _ in range(draw(st.integers(0, 3))):
        tensor = request.inputs.add(name=draw(INPUTS), datatype=draw(DATATYPE), shape=draw(SHAPE))
        if raw:
            request.raw_input_contents.append(draw(st.binary(max_size=64)))
        else:
            tensor.contents.int64_contents.extend(draw(st.lists(st.integers(-5, 400), max_size=8)))
            tensor.contents.fp32_contents.extend(draw(st.lists(st.floats(width=32), max_size=8)))
            tensor.contents.bytes_contents.extend(draw(st.lists(st.binary(max_size=8), max_size=3)))
    for key in draw(st.lists(st.sampled_from(["timeout", "max_tokens", "priority", "x", "stream"]), max_size=3)):
        request.parameters[key].CopyFrom(draw(PARAM))
    return request


@pytest.fixture(scope="module")
def stub(server):
    with grpc.insecure_channel(server.url) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(request=requests())
def test_random_requests_get_a_status_never_a_crash(stub, server, request):
    try:
        stub.ModelInfer(request, timeout=30)
    except grpc.RpcError as e:
        assert e.code() in OK, (e.code(), e.details(), request)
    assert server.proc.poll() is None  # still serving
