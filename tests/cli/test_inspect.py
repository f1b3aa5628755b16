import json

import pytest

from tests.conftest import built, ingot


def test_inspect_table_and_json(bert_bundle):
    proc = ingot("inspect", bert_bundle)
    assert proc.returncode == 0, proc.stderr
    for fragment in ("encoder", "BertModel", "input_ids", "sentence_embedding", "cpu-x86_64", "onnxruntime", "max abs err"):
        assert fragment in proc.stdout, fragment
    data = json.loads(ingot("inspect", bert_bundle, "--json", "--check").stdout)
    assert data["model"]["kind"] == "encoder" and data["schema_version"] == 1
    assert all(len(f["sha256"]) == 64 for t in data["targets"].values() for f in t["files"])


def test_import_ingot_is_light():
    import subprocess
    import sys

    code = "import sys, ingot, ingot.plans, ingot.runtime; print(sorted(m for m in ('torch','onnx','transformers','tensorrt') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_inspect_check_says_how_many_files_it_hashed(bert_bundle):
    files = json.loads(ingot("inspect", bert_bundle, "--json").stdout)
    every = [*files["tokenizer"]["files"], *(f for t in files["targets"].values() for f in t["files"])]
    proc = ingot("inspect", bert_bundle, "--check")
    assert proc.returncode == 0, proc.stderr
    assert f"sha256: all {len(every)} files match the manifest (" in proc.stdout, proc.stdout
    proc = ingot("inspect", bert_bundle, "--check", "--json")
    assert f"sha256: all {len(every)} files match the manifest" in proc.stderr  # stdout: the JSON alone
    json.loads(proc.stdout)


@pytest.fixture(scope="module")
def int4_llama(llama_bundle, tmp_path_factory):
    return built(llama_bundle, tmp_path_factory.mktemp("q") / "int4", "--quant", "int4-rtn")  # k/v and head float


def test_inspect_shows_the_plan_limits_then_the_gate_then_a_summary_of_float_layers(int4_llama):
    text = ingot("inspect", int4_llama).stdout
    assert "LLM plan: max_model_len 256 (prompt + output tokens), max_num_seqs 32, max_num_tokens 2048 a step" in text
    # 2 (k and v) x 2 layers x 2 kv heads x 16 dims x 4 bytes
    assert "KV cache: blocks of 16 tokens, 0.5 KiB per token (float32, 2 layers x 2 kv heads x 16)" in text
    gate, kept = text.index("accuracy gate on cpu-x86_64: passed ("), text.index("5 layers kept float:")
    assert gate < kept, text
    assert "5 layers kept float: 4 k/v projections, 1 excluded by 'lm_head*'; --json for the list" in text, text
    assert "self_attn.k_proj" not in text, text
    data = json.loads(ingot("inspect", int4_llama, "--json").stdout)
    assert len(data["quantization"]["layers_skipped"]) == 5
    assert data["llm"]["kv_block_size"] == 16
