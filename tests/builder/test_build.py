"""`ingot build` on tiny models: the bundle, its manifest, verification, atomicity, merging."""

import json

import numpy as np
import pytest

from ingot.builder import VerificationError
from ingot.plans import BundleError, open_bundle
from ingot.plans.bundle import staging_leftovers
from ingot.runtime import load
from tests.conftest import assert_user_error, build, built, ingot, tree_digest


def test_factory_bundle(cnn_bundle, tiny_cnn_py):
    m = open_bundle(cnn_bundle).manifest
    assert m.model.kind == "classifier" and m.model.source.type == "factory" and m.model.id == "tiny_cnn"
    assert m.model.source.name == "tiny_cnn.py:model"  # no machine-specific path in the manifest
    assert [i.describe() for i in m.inputs] == ["image: float32[batch(1..8), 3, 16, 16]"]
    assert [o.describe() for o in m.outputs] == ["logits: float32[batch(1..8), 5]"]
    target = m.targets["cpu-x86_64"]
    assert target.backend == "onnxruntime" and target.build_options["opset"] == 21
    v = target.verification
    assert v.passed and v.samples == 2 and v.outputs[0].max_abs_err < 1e-4
    assert m.tokenizer is None


def test_hf_causal_lm_bundle(llama_bundle, tiny_llama_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    m = open_bundle(llama_bundle).manifest
    assert m.model.kind == "causal-lm" and m.model.architecture == "LlamaForCausalLM"
    assert [i.name for i in m.inputs] == ["input_ids", "attention_mask"]
    assert m.tokenizer.input_map == {"input_ids": "ids", "attention_mask": "attention_mask"}
    model = load(llama_bundle)
    texts = ["The quick brown fox", "Plans are bundles with manifests and checksums."]
    ref_tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    ref_tok.pad_token = ref_tok.eos_token
    enc = ref_tok(texts, padding=True, return_tensors="np")
    feeds = model.encode(texts)
    assert (feeds["input_ids"] == enc["input_ids"]).all()
    assert (feeds["attention_mask"] == enc["attention_mask"]).all()
    out = model.run(feeds)["logits"]
    ref = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    with torch.no_grad():
        want = ref(**{k: torch.from_numpy(v) for k, v in feeds.items()}).logits.numpy()
    valid = feeds["attention_mask"].astype(bool)  # a paged plan: padding is not a token, its logits are 0
    assert out.shape == want.shape and np.abs(out[valid] - want[valid]).max() < 1e-4
    assert not out[~valid].any()
    assert m.llm is not None and m.llm.num_layers == 2 and m.targets["cpu-x86_64"].build_options["attention"] == "gqa-v3"


def test_hf_encoder_bundle_has_pooled_output(bert_bundle):
    m = open_bundle(bert_bundle).manifest
    assert m.model.kind == "encoder"
    assert [o.name for o in m.outputs] == ["last_hidden_state", "sentence_embedding"]
    assert set(m.tokenizer.input_map) == {"input_ids", "attention_mask", "token_type_ids"}
    out = load(bert_bundle).run_text(["a short one", "and a somewhat longer sentence here"])
    assert np.allclose(np.linalg.norm(out["sentence_embedding"], axis=1), 1.0, atol=1e-5)


def test_builds_are_deterministic(tiny_cnn_py, tmp_path):
    a = built(f"{tiny_cnn_py}:model", tmp_path / "a")
    b = built(f"{tiny_cnn_py}:model", tmp_path / "b")
    assert tree_digest(a) == tree_digest(b)


def test_onnx_source_round_trip(cnn_bundle, tmp_path):
    src = cnn_bundle / "targets/cpu-x86_64/model.onnx"
    out = built(src, tmp_path / "from-onnx", "--dim", "batch=1:4")
    m = open_bundle(out).manifest
    assert m.model.source.type == "onnx" and m.targets["cpu-x86_64"].verification is None
    assert m.inputs[0].describe() == "image: float32[batch(1..4), 3, 16, 16]"
    x = np.random.default_rng(0).standard_normal((3, 3, 16, 16)).astype(np.float32)
    assert np.allclose(load(out).run({"image": x})["logits"], load(cnn_bundle).run({"image": x})["logits"], atol=1e-6)


def test_another_target_is_added_then_merged(cnn_bundle, tiny_cnn_py, tmp_path):
    arm = built(f"{tiny_cnn_py}:model", tmp_path / "arm", "--target", "cpu-aarch64")
    assert list(open_bundle(arm).manifest.targets) == ["cpu-aarch64"]
    assert open_bundle(arm).manifest.targets["cpu-aarch64"].verification.ran_on == "cpu-x86_64"
    proc = ingot("merge", cnn_bundle, arm, "-o", tmp_path / "both", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["targets"] == ["cpu-aarch64", "cpu-x86_64"]
    assert load(tmp_path / "both").target.name == "cpu-x86_64"
    # building another target into an existing bundle adds it
    built(f"{tiny_cnn_py}:model", arm, "--target", "cpu-x86_64")
    assert sorted(open_bundle(arm).manifest.targets) == ["cpu-aarch64", "cpu-x86_64"]


def test_failed_build_leaves_previous_bundle(llama_bundle, tiny_llama_dir, tmp_path):
    import shutil

    out = shutil.copytree(llama_bundle, tmp_path / "llama")
    before = tree_digest(out)
    with pytest.raises(VerificationError, match="verification failed:.*differs from torch.*--no-verify"):
        build(tiny_llama_dir, out, atol=0, rtol=0)
    assert tree_digest(out) == before and staging_leftovers(out) == []


def test_other_model_into_existing_bundle(cnn_bundle, tiny_llama_dir, tmp_path):
    out = tmp_path / "cnn"
    build(cnn_bundle / "targets/cpu-x86_64/model.onnx", out)
    before = tree_digest(out)
    with pytest.raises(BundleError, match="different model.*--overwrite"):
        build(tiny_llama_dir, out, verify=False)
    assert tree_digest(out) == before
    build(tiny_llama_dir, out, overwrite=True, verify=False)
    assert open_bundle(out).manifest.model.kind == "causal-lm"


def test_output_onto_non_bundle_folder(tiny_cnn_py, tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "readme.md").write_text("keep me")
    assert_user_error(ingot("build", f"{tiny_cnn_py}:model", "-o", tmp_path / "docs"), "not an ingot bundle")
    assert [p.name for p in (tmp_path / "docs").iterdir()] == ["readme.md"]


def test_build_json_is_machine_readable(tiny_cnn_py, tmp_path):
    proc = ingot("build", f"{tiny_cnn_py}:model", "-o", tmp_path / "j", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)  # stdout holds only the JSON document
    assert data["manifest"]["targets"]["cpu-x86_64"]["verification"]["passed"] is True


@pytest.mark.parametrize("cmd", [["build"], ["run"], ["inspect"], ["merge"], ["frobnicate"]])
def test_usage_errors_exit_2(cmd):
    assert ingot(*cmd).returncode == 2
