"""The cpu lowering's output contract ("gqa-v3"): the graph inputs and outputs the runtime binds."""

import onnx
import pytest

from ingot.plans import llm as names


@pytest.fixture(scope="module")
def hf(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype="float32").eval()


@pytest.fixture(scope="module")
def contract(hf) -> onnx.ModelProto:
    from ingot.builder.paged import export_paged

    return export_paged(hf, opset=21, block_size=4)


def _io(values) -> dict[str, tuple[int, list]]:
    """name -> (element type, shape as ints and dim names)."""
    return {v.name: (v.type.tensor_type.elem_type, [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim])
            for v in values}


def test_lowering_swaps_the_pool_for_windows_and_names_every_present(contract, hf):
    from ingot.builder.lower_cpu import lower_paged_attention

    before = contract.SerializeToString()
    lowered = lower_paged_attention(contract)
    assert contract.SerializeToString() == before, "the contract is left as it was"
    layers, kv, dim = hf.config.num_hidden_layers, hf.config.num_key_value_heads, 16
    assert names.CPU_LOWERING == "gqa-v3"
    f, i64, i32 = onnx.TensorProto.FLOAT, onnx.TensorProto.INT64, onnx.TensorProto.INT32
    window = (f, ["num_seqs", kv, "window", dim])
    inputs = _io(lowered.graph.input)
    assert list(inputs) == ["input_ids", "positions", "logits_indices",
                            *(names.window(layer, x) for layer in range(layers) for x in ("key", "value")),
                            names.ATTN_QUERY_SHAPE, names.ATTN_SEQLENS_K, names.ATTN_TOTAL_LEN]
    assert inputs[names.window(1, "value")] == window
    assert inputs[names.ATTN_QUERY_SHAPE] == (i64, [3]) and inputs[names.ATTN_SEQLENS_K] == (i32, ["num_seqs"])
    assert inputs[names.ATTN_TOTAL_LEN] == (i32, [])
    outputs = _io(lowered.graph.output)
    per_layer = [[names.window_present(layer, "key"), names.window_present(layer, "value"),
                  names.present_key(layer), names.present_value(layer)] for layer in range(layers)]
    assert list(outputs) == [names.LOGITS, *(n for layer in per_layer for n in layer)]
    assert outputs[names.window_present(0, "key")] == window
    assert outputs[names.present_value(1)] == (f, ["num_tokens", kv, dim])
    assert not [n for n in lowered.graph.node if n.domain == names.DOMAIN]
    assert [n.op_type for n in lowered.graph.node].count("GroupQueryAttention") == layers
    assert {(o.domain, o.version) for o in lowered.opset_import} == {("", 21), ("com.microsoft", 1)}
