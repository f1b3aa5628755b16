"""A streamed generation request in the contract genai-perf, aiperf and the TensorRT-LLM and
vLLM Triton backends use, as a typed message.

Inputs: `text_input` BYTES [1] (or [1, 1]); optional `max_tokens` INT32, `stream` BOOL,
`exclude_input_in_output` BOOL, `temperature`, `top_p`, `top_k`, `seed`, `stop` (BYTES, one
or more), `ignore_eos`, `min_length` (accepted; generation runs to max_tokens when it equals
it), or `sampling_parameters`, a JSON string of vLLM's names (the vLLM backend's form). The same
names are also taken from the request's parameters. Output: `text_output` BYTES [1].
"""

from __future__ import annotations

import json

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from ingot.runtime.llm import SamplingParams
from ingot.serve.errors import InvalidArgument
from ingot.serve.tensors import text_of

TEXT_INPUT, TEXT_OUTPUT = "text_input", "text_output"
_SAMPLING = {"max_tokens", "temperature", "top_p", "top_k", "seed", "stop", "ignore_eos", "stop_token_ids"}
_CONTROL = {"stream", "exclude_input_in_output", "min_length", "min_tokens", "sampling_parameters",
            "return_log_probs", "beam_width", "end_id", "pad_id", "bad_words", "stop_words", "random_seed"}
INPUTS = [(TEXT_INPUT, "BYTES", [1]), ("max_tokens", "INT32", [1]), ("stream", "BOOL", [1]),
          ("exclude_input_in_output", "BOOL", [1]), ("temperature", "FP32", [1]), ("top_p", "FP32", [1]),
          ("top_k", "INT32", [1]), ("seed", "UINT64", [1]), ("stop", "BYTES", [-1]), ("ignore_eos", "BOOL", [1]),
          ("sampling_parameters", "BYTES", [1])]
DEFAULT_MAX_TOKENS = 16  # vLLM's default; TRT-LLM's genai-perf payload always sends max_tokens


class GenerationRequest(BaseModel):
    model_config = ConfigDict(frozen=True)

    prompt: str
    params: SamplingParams
    stream: bool = True  # False: one response with the whole text
    exclude_input: bool = False  # False (the backends' default): a non-streamed text starts with the prompt


def parse(inputs: dict[str, np.ndarray], parameters: dict[str, object]) -> GenerationRequest:
    """Raises InvalidArgument naming the input at fault."""
    if TEXT_INPUT not in inputs:
        raise InvalidArgument(f"missing input {TEXT_INPUT!r} (BYTES); expected inputs: "
                              + ", ".join(f"{n} {d}" for n, d, _ in INPUTS))
    unknown = sorted(set(inputs) - {n for n, _, _ in INPUTS} - _CONTROL - _SAMPLING)
    if unknown:
        raise InvalidArgument(f"unknown input(s) {', '.join(map(repr, unknown))}; expected inputs: "
                              + ", ".join(f"{n} {d}" for n, d, _ in INPUTS))
    texts = text_of(TEXT_INPUT, inputs[TEXT_INPUT])
    if len(texts) != 1:
        raise InvalidArgument(f"input {TEXT_INPUT!r}: one prompt per request, got {len(texts)}")
    values: dict[str, object] = {k: v for k, v in parameters.items() if k in _SAMPLING | _CONTROL}
    for name, arr in inputs.items():
        if name == TEXT_INPUT:
            continue
        if name == "stop":
            values["stop"] = tuple(text_of(name, arr))
        elif arr.size != 1:
            raise InvalidArgument(f"input {name!r}: one value expected, got shape {list(arr.shape)}")
        elif arr.dtype == object:
            values[name] = text_of(name, arr)[0]
        else:
            values[name] = arr.reshape(-1)[0].item()
    sampling = {}
    if "sampling_parameters" in values:
        try:
            sampling = json.loads(str(values.pop("sampling_parameters")))
            assert isinstance(sampling, dict)
        except (ValueError, AssertionError):
            raise InvalidArgument("sampling_parameters: expected a JSON object of sampling options") from None
    fields = {k: v for k, v in values.items() if k in _SAMPLING} | {k: v for k, v in sampling.items()
                                                                      if k in _SAMPLING}
    fields.setdefault("max_tokens", DEFAULT_MAX_TOKENS)
    _refuse_unsupported(values)
    if values.get("random_seed") is not None:  # TensorRT-LLM's name of the seed
        fields.setdefault("seed", int(values["random_seed"]))
    if int(values.get("min_length", values.get("min_tokens", 0)) or 0) >= int(fields["max_tokens"]):
        fields["ignore_eos"] = True  # genai-perf's fixed-length payload: min_length == max_tokens
    try:
        params = SamplingParams(**fields)
    except ValidationError as e:
        err = e.errors()[0]
        raise InvalidArgument(f"{'.'.join(map(str, err['loc'])) or 'sampling'}: {err['msg']}") from None
    return GenerationRequest(prompt=texts[0], params=params, stream=bool(values.get("stream", True)),
                             exclude_input=bool(values.get("exclude_input_in_output", False)))


def _refuse_unsupported(values: dict[str, object]) -> None:
    """The backends' controls that ask for what this server does not do are refused, not ignored
    (at their defaults they are accepted: genai-perf's payloads send them)."""
    if _truthy(values.get("return_log_probs")):
        raise InvalidArgument("return_log_probs: the gRPC stream gives text only; logprobs come over the "
                              "OpenAI API (/v1/completions 'logprobs', /v1/chat/completions 'logprobs')")
    if int(values.get("beam_width") or 1) != 1:
        raise InvalidArgument(f"beam_width {values['beam_width']}: beam search is not supported (1 only)")
    for name in ("bad_words", "stop_words"):
        if str(values.get(name) or "").strip():
            raise InvalidArgument(f"{name}: not supported; use 'stop' (stop strings)")


def _truthy(value: object) -> bool:
    return value not in (None, False, 0, "", "false", "False", "0")
