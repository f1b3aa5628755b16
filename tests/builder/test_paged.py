"""Paged causal-LM plans at build time: the contract graph, its cpu lowering against torch, the limits."""

import pytest

from ingot.builder import BuildError
from ingot.plans import llm as names
from ingot.runtime import RunError, load
from tests.conftest import build


@pytest.fixture(scope="module")
def hf(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype="float32").eval()


@pytest.fixture(scope="module")
def contract(hf):
    from ingot.builder.paged import export_paged

    return export_paged(hf, opset=21, block_size=4)


def test_contract_has_one_paged_attention_node_per_layer(contract, hf):
    nodes = [n for n in contract.graph.node if n.domain == names.DOMAIN]
    assert [n.op_type for n in nodes] == [names.OP_TYPE] * hf.config.num_hidden_layers
    attrs = {a.name for a in nodes[0].attribute}
    assert attrs == {"num_heads", "num_kv_heads", "scale", "sliding_window", "softcap"}
    inputs = [i.name for i in contract.graph.input]
    assert inputs[:7] == ["input_ids", "positions", "logits_indices", "slot_mapping", "block_tables", "context_lens",
                          "query_start_loc"]
    assert {"key_cache.0", "value_cache.1"} <= set(inputs) and [o.name for o in contract.graph.output] == ["logits"]
    assert any(n.name == "model.layers.0.mlp.up_proj/MatMul" for n in contract.graph.node)  # quantization's names


def test_cpu_lowering_matches_torch_reading_the_cache(contract, hf):
    from ingot.builder.causal_lm import check_paged
    from ingot.builder.cpu import ort_runner
    from ingot.builder.lower_cpu import lower_paged_attention
    from ingot.builder.paged import llm_info

    lowered = lower_paged_attention(contract)
    assert not [n for n in lowered.graph.node if n.domain == names.DOMAIN]
    assert {o.name for o in lowered.graph.output} >= {names.present_key(1), names.present_value(0)}
    limits = dict(max_model_len=64, max_num_tokens=64, max_num_seqs=4, kv_block_size=4)
    err = check_paged(ort_runner(lowered.SerializeToString(), {}), hf, llm_info(hf, limits, None), 1e-5, 1e-4)
    assert err < 1e-5  # GQA (4 heads, 2 KV heads), past spread over two blocks, a prefill beside it


def test_a_bundle_with_another_attention_lowering_is_refused(llama_bundle, tmp_path):
    import json
    import shutil

    old = shutil.copytree(llama_bundle, tmp_path / "old")
    manifest = json.loads((old / "manifest.json").read_text())
    for target in manifest["targets"].values():
        target["build_options"]["attention"] = "gather-v1"  # what earlier versions wrote
    (old / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(RunError, match="gather-v1.*rebuild"):
        load(old)
    # nor built from: its graph would be quantized and labelled with this version's lowering
    out = tmp_path / "int4"
    with pytest.raises(BuildError, match="gather-v1.*rebuild"):
        build(old, out, quant="int4")
    assert not out.exists()


def test_build_limits_and_layout(tiny_llama_dir, tmp_path):
    small = build(tiny_llama_dir, tmp_path / "small", max_model_len=64, max_num_seqs=4, kv_block_size=8,
                  max_num_tokens=128, verify=False)
    llm = small.llm
    assert (llm.max_model_len, llm.max_num_seqs, llm.kv_block_size, llm.max_num_tokens) == (64, 4, 8, 128)
    assert build(tiny_llama_dir, tmp_path / "dense", layout="dense", verify=False).llm is None
    with pytest.raises(BuildError, match="--max-model-len 100000: the model has 256 positions"):
        build(tiny_llama_dir, tmp_path / "x", max_model_len=100000)
    assert not (tmp_path / "x").exists()
