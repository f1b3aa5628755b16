"""`ingot build --quant`: spec in the manifest, calibration files, the accuracy gate, bad input.

The quantized tiny Llamas are built from one fp32 bundle (`llama_bundle`), not re-exported."""

import json
import re

import numpy as np
import pytest

from ingot.builder import BuildError
from ingot.plans import open_bundle
from ingot.plans.bundle import staging_leftovers
from ingot.runtime import load
from tests.conftest import assert_user_error, build, built, ingot, tree_digest
from tests.models import TEXT

NO_MATMUL = '''
import torch
from ingot.builder import ModelSpec

class Scale(torch.nn.Module):
    def forward(self, x):
        return torch.relu(x) * 2.0 + 1.0

def model():
    return ModelSpec(module=Scale(), inputs={"x": torch.randn(2, 8)}, dynamic_dims={"x": {0: "batch"}})
'''


@pytest.fixture(scope="module")
def calib_txt(tmp_path_factory):
    path = tmp_path_factory.mktemp("calib") / "calib.txt"
    path.write_text(TEXT * 6)
    return path


@pytest.fixture(scope="module")
def awq_bundle(llama_bundle, calib_txt, tmp_path_factory):
    return built(llama_bundle, tmp_path_factory.mktemp("q") / "awq", "--quant", "int4-awq", "--block-size", "32",
                 "--calib", calib_txt, "--calib-seq-len", "32", "--calib-samples", "8")


def test_int4_awq_manifest_and_gate(awq_bundle):
    m = open_bundle(awq_bundle).manifest
    q = m.quantization
    assert m.precision == "int4" and q.scheme == "int4-awq" and q.block_size == 32
    assert q.layers_quantized == 10 and q.exclude == ["lm_head*"] and "lm_head/MatMul" in q.layers_skipped
    kv = {f"model.layers.{i}.self_attn.{p}_proj/MatMul" for i in (0, 1) for p in "kv"}
    assert all("key/value projection" in q.layers_skipped[name] for name in kv)  # kv_float, the default
    assert q.calibration.format == "text" and q.calibration.samples == 8 and q.calibration.seq_len == 32
    assert q.cpu_accuracy_level == 4 and "MatMulNBits" in q.notes[0]
    assert q.float_weights == "fp16" and "float weight tables stored as fp16" in q.notes[1]
    assert q.rounding == "gptq" and q.notes[2] == "GPTQ rounding: damp 0.01, act-order"
    t = m.targets["cpu-x86_64"]
    assert t.session_config == {"session.qdq_matmulnbits_accuracy_level": "4"}
    v = t.verification
    assert v.reference == "unquantized plan" and v.passed
    assert {"perplexity", "perplexity_ref", "ppl_increase_pct", "top1_agreement", "cosine_min"} <= set(v.metrics)
    assert v.metrics["cosine_min"] > 0.95
    assert v.gates == {"max_ppl_increase_pct": 50.0, "min_top1": 0.5}  # the causal-LM defaults


def test_inspect_shows_the_spec(awq_bundle):
    out = ingot("inspect", awq_bundle).stdout
    for fragment in ("quantization: int4-awq, block 32, gptq rounding", "calibration: calib.txt", "perplexity", "MatMulNBits",
                     "layers: 10 INT4 (block 32), 0 INT8 weight-only, 5 float; LM head float"):
        assert fragment in out, fragment
    data = json.loads(ingot("inspect", awq_bundle, "--json").stdout)
    assert data["quantization"]["scheme"] == "int4-awq"


def test_int4_bundle_runs_close_to_fp32(awq_bundle, llama_bundle):
    feeds = load(llama_bundle).encode(["The quick brown fox jumps over the lazy dog."])
    a, b = load(llama_bundle).run(feeds)["logits"], load(awq_bundle).run(feeds)["logits"]
    cos = (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
    assert cos.min() > 0.95


def test_no_gptq_rounds_to_nearest(llama_bundle, calib_txt, tmp_path):
    out = built(llama_bundle, tmp_path / "nearest", "--quant", "int4-awq", "--block-size", "32", "--no-gptq",
                "--calib", calib_txt, "--calib-seq-len", "32", "--calib-samples", "8")
    q = open_bundle(out).manifest.quantization
    assert q.scheme == "int4-awq" and q.rounding == "nearest" and not any("GPTQ" in n for n in q.notes)


def test_every_layer_int4_and_fp32_float_weights_when_asked(llama_bundle, calib_txt, awq_bundle, tmp_path):
    out = built(llama_bundle, tmp_path / "all", "--quant", "int4-awq", "--block-size", "32", "--no-kv-float",
                "--float-weights", "fp32", "--calib", calib_txt, "--calib-seq-len", "32", "--calib-samples", "8")
    q = open_bundle(out).manifest.quantization
    assert q.layers_quantized == 14 and set(q.layers_skipped) == {"lm_head/MatMul"} and q.float_weights == "fp32"
    assert not any("fp16" in n for n in q.notes)
    sizes = [sum(f.size for f in open_bundle(b).manifest.files()) for b in (awq_bundle, out)]
    assert sizes[0] < sizes[1]  # fp16 float weights, though the k/v projections are float there


def test_recipe_layers_as_int8_are_listed_and_shown(llama_bundle, calib_txt, tmp_path):
    out = built(llama_bundle, tmp_path / "i8", "--quant", "int4-awq", "--block-size", "32", "--recipe-precision", "int8",
                "--calib", calib_txt, "--calib-seq-len", "32", "--calib-samples", "8")
    q = open_bundle(out).manifest.quantization
    kv = {f"model.layers.{i}.self_attn.{p}_proj/MatMul" for i in (0, 1) for p in "kv"}
    assert set(q.layers_int8) == kv and q.layers_quantized == 10 and set(q.layers_skipped) == {"lm_head/MatMul"}
    assert "4 layers INT8 weight-only: 4 k/v projections; --json for the list" in ingot("inspect", out).stdout
    for flag, value in (("--recipe-precision", "int3"), ("--float-weights", "fp64"), ("--target-cosine", 1.5),
                        ("--target-top1", -0.1)):
        with pytest.raises(BuildError, match=flag):
            build(llama_bundle, tmp_path / "bad", quant="int4", **{flag[2:].replace("-", "_"): value})
    assert not (tmp_path / "bad").exists()


def test_fp8_needs_calibration_and_records_cpu_settings(llama_bundle, calib_txt, tmp_path):
    with pytest.raises(BuildError, match="needs calibration data"):
        build(llama_bundle, tmp_path / "x", quant="fp8")
    assert not (tmp_path / "x").exists()
    out = built(llama_bundle, tmp_path / "fp8", "--quant", "fp8", "--calib", calib_txt, "--calib-seq-len", "32")
    m = open_bundle(out).manifest
    assert m.precision == "fp8" and m.quantization.calibration.method == "max"
    assert m.targets["cpu-x86_64"].session_config["session.disable_quant_qdq"] == "1"
    assert "FP8 speed needs a GPU target" in ingot("inspect", out).stdout


KV = {f"model.layers.{i}.self_attn.{p}_proj/MatMul" for i in (0, 1) for p in "kv"}


def test_plain_int4_on_a_causal_lm_is_awq_gptq_calibrated_on_the_built_in_text(llama_bundle, tmp_path):
    """No flag but --quant int4: AWQ + GPTQ at block 128 on the built-in calibration text, the k/v
    projections, the massive-activation layers (none here) and the LM head INT8 weight-only,
    nothing float; the gate scores the built-in gate text, which calibration never saw. The
    manifest says what every layer became."""
    out = built(llama_bundle, tmp_path / "int4", "--quant", "int4")
    m = open_bundle(out).manifest
    q, v = m.quantization, m.targets["cpu-x86_64"].verification
    assert q.scheme == "int4-awq" and q.rounding == "gptq" and q.block_size == 128
    assert q.calibration.source == "calib_text.txt (built in)" and q.calibration.samples == 32
    assert any(n.startswith("--quant int4 on a causal LM is AWQ + GPTQ: calibrated on the built-in text") for n in q.notes)
    assert set(q.layers_int8) == KV | {"lm_head/MatMul"} and not q.layers_skipped and q.exclude == []
    assert q.layers_int8["lm_head/MatMul"].startswith("LM head: INT8 per output channel")
    assert sorted(q.layers_quantized_names) == sorted(
        f"model.layers.{i}.{m}/MatMul" for i in (0, 1)
        for m in ("self_attn.q_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"))
    assert v.passed and v.data.startswith("8 windows of 256 tokens of the built-in gate text")
    assert "layers: 10 INT4 (block 128), 5 INT8 weight-only, 0 float; LM head INT8" in ingot("inspect", out).stdout


def test_plain_int4_options_undo_the_recipe_one_by_one(llama_bundle, calib_txt, tmp_path):
    """--calib replaces the built-in text; --recipe-precision float, --lm-head-precision float
    and --no-gptq give back int4-awq's float layers and head, and round to nearest."""
    out = built(llama_bundle, tmp_path / "own", "--quant", "int4", "--calib", calib_txt, "--calib-seq-len", "32",
                "--calib-samples", "8", "--recipe-precision", "float", "--lm-head-precision", "float", "--no-gptq")
    q = open_bundle(out).manifest.quantization
    assert q.scheme == "int4-awq" and q.calibration.source == "calib.txt" and q.rounding == "nearest"
    assert set(q.layers_skipped) == KV | {"lm_head/MatMul"} and not q.layers_int8
    assert not any("built-in text" in n for n in q.notes)


def test_int4_rtn_on_a_causal_lm_passes_the_default_gate_on_the_built_in_text(llama_bundle, tmp_path):
    """--quant int4-rtn (plain int4 before AWQ became the causal-LM default): round to nearest at
    block 32 with the k/v projections float (no calibration), judged by perplexity and next-token
    agreement on the built-in text."""
    m = open_bundle(built(llama_bundle, tmp_path / "rtn", "--quant", "int4-rtn")).manifest
    q, v = m.quantization, m.targets["cpu-x86_64"].verification
    assert q.scheme == "int4" and q.calibration is None and q.rounding == "nearest" and q.block_size == 32
    assert set(q.layers_skipped) == KV | {"lm_head/MatMul"} and q.layers_quantized == 10
    assert all("key/value projection: int4 keeps it out of INT4" in q.layers_skipped[name] for name in KV)
    assert v.passed and v.gates == {"max_ppl_increase_pct": 50.0, "min_top1": 0.5}
    assert v.data.startswith("8 windows of 256 tokens of the built-in gate text") and v.samples == 8
    assert {"perplexity", "perplexity_ref", "ppl_increase_pct", "top1_agreement"} <= set(v.metrics)
    assert abs(v.metrics["ppl_increase_pct"]) < 5 and v.metrics["top1_agreement"] > 0.8  # measured -0.2%, 0.89


def test_rtn_options_override_the_causal_lm_defaults(llama_bundle, tmp_path):
    out = built(llama_bundle, tmp_path / "rtn", "--quant", "int4-rtn", "--block-size", "64", "--no-kv-float",
                "--exclude", "*.mlp.down_proj*", "--max-ppl-increase", "20")
    m = open_bundle(out).manifest
    q = m.quantization
    assert q.block_size == 64 and q.layers_quantized == 12
    assert set(q.layers_skipped) == {"lm_head/MatMul", "model.layers.0.mlp.down_proj/MatMul", "model.layers.1.mlp.down_proj/MatMul"}
    assert m.targets["cpu-x86_64"].verification.gates == {"max_ppl_increase_pct": 20.0}  # given gates replace the defaults


def test_a_broken_plan_fails_the_gate_naming_the_options(llama_bundle, tmp_path, monkeypatch):
    """Every INT4 weight negated: perplexity barely moves on a random model, next-token
    agreement collapses; the message says what may help and what would accept the plan."""
    from onnx import numpy_helper

    import ingot.quant
    from ingot.builder.errors import VerificationError

    quantize = ingot.quant.quantize

    def broken(*args, **kwargs):
        qmodel, report = quantize(*args, **kwargs)
        for t in qmodel.graph.initializer:
            if t.name.endswith("_scale"):
                t.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(t), t.name))
        return qmodel, report

    monkeypatch.setattr(ingot.quant, "quantize", broken)
    with pytest.raises(VerificationError) as e:
        build(llama_bundle, tmp_path / "broken", quant="int4-rtn")
    message = str(e.value)
    assert message.startswith("accuracy gate failed: top-1 agreement") and "< --min-top1 0.5" in message
    assert "of the built-in gate text" in message
    assert "for a more accurate plan try --quant int4-awq --calib FILE" in message
    assert "to accept this one, pass --min-top1 0." in message
    assert not (tmp_path / "broken").exists()


def test_quant_lm_head_and_the_cpu_fusions(tiny_llama_dir, tmp_path):
    out = built(tiny_llama_dir, tmp_path / "head", "--quant", "int4-rtn", "--block-size", "128", "--no-kv-float",
                "--quant-lm-head", "--min-top1", "0")
    m = open_bundle(out).manifest
    assert m.quantization.layers_quantized == 15 and m.quantization.exclude == [] and not m.quantization.layers_skipped
    options = m.targets["cpu-x86_64"].build_options
    assert options["fused.rms_norm"] == 5 and options["fused.int4_unpad"] > 0  # verified against torch at build
    assert ingot("run", out, "--prompt", "hello", "--max-tokens", "3").returncode == 0


def test_int8_lm_head_per_output_channel(llama_bundle, tmp_path):
    """--lm-head-precision int8: the tied head is its own INT8 copy (one scale per vocabulary row),
    listed with the INT8 layers; its logits stay closer to fp32 than an INT4 head's."""
    out = built(llama_bundle, tmp_path / "h8", "--quant", "int4-rtn", "--lm-head-precision", "int8")
    q = open_bundle(out).manifest.quantization
    assert q.layers_int8 == {"lm_head/MatMul": "LM head: INT8 per output channel (--lm-head-precision int8)"}
    assert "lm_head/MatMul" not in q.layers_skipped and q.exclude == []
    assert "1 layer INT8 weight-only: 1 LM head" in ingot("inspect", out).stdout
    head4 = built(llama_bundle, tmp_path / "h4", "--quant", "int4-rtn", "--lm-head-precision", "int4", "--min-top1", "0")
    assert open_bundle(head4).manifest.quantization.layers_int8 == {}
    feeds = {"input_ids": np.array([[1, 57, 23, 99, 4, 18, 77, 3]]), "attention_mask": np.ones((1, 8), np.int64)}
    ref = load(llama_bundle).run(feeds)["logits"]
    plain = built(llama_bundle, tmp_path / "h0", "--quant", "int4-rtn")  # the same plan, head float
    errors = [np.abs(load(b).run(feeds)["logits"] - ref).max() for b in (plain, out, head4)]
    assert errors[1] < errors[2] and errors[1] - errors[0] < (errors[2] - errors[0]) / 4, errors
    with pytest.raises(BuildError, match="--lm-head-precision"):
        build(llama_bundle, tmp_path / "bad", quant="int4", lm_head_precision="int2")
    with pytest.raises(BuildError, match="an INT8 LM head goes with --quant int4 or int4-awq"):
        build(llama_bundle, tmp_path / "bad", quant="fp8", lm_head_precision="int8", calib=None)


def test_npz_calibration_for_any_model(tiny_cnn_py, tmp_path):
    np.savez(tmp_path / "calib.npz", image=np.random.default_rng(0).standard_normal((10, 3, 16, 16)).astype(np.float32))
    out = built(f"{tiny_cnn_py}:model", tmp_path / "fp8", "--quant", "fp8", "--calib", tmp_path / "calib.npz")
    m = open_bundle(out).manifest
    assert m.quantization.calibration.format == "npz" and m.quantization.layers_quantized == 2  # conv + fc
    assert m.targets["cpu-x86_64"].verification.metrics["top1_agreement"] >= 0.5


def test_model_without_matmul(tmp_path):
    (tmp_path / "nomatmul.py").write_text(NO_MATMUL)
    with pytest.raises(BuildError, match="no MatMul"):
        build(f"{tmp_path / 'nomatmul.py'}:model", tmp_path / "o", quant="int4")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("setup,message", [
    (lambda p: None, "calibration file not found"),
    (lambda p: p.write_text(""), "is empty"),
    (lambda p: p.write_text("   \n\n"), "is empty"),
])
def test_bad_text_calibration(llama_bundle, tmp_path, setup, message):
    path = tmp_path / "c.txt"
    setup(path)
    with pytest.raises(BuildError, match=re.escape(message)):
        build(llama_bundle, tmp_path / "o", quant="int4-awq", calib=path)


@pytest.mark.parametrize("name,content,message", [
    ("c.csv", "a,b\n1,2\n", "unsupported calibration file type '.csv'"),
    ("c.jsonl", "{not json}\n", "line 1: not JSON"),
    ("c.jsonl", '{"prompt": "x"}\n', "line 1: expected a JSON string or an object with a \"text\" field"),
    ("c.txt", b"\x00\x01\x02binary", "is not text"),
    ("c.npz", b"not a zip", "cannot read calibration file"),
])
def test_wrong_format_calibration(llama_bundle, tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(BuildError, match=re.escape(message)):
        build(llama_bundle, tmp_path / "o", quant="fp8", calib=path)


def test_npz_with_wrong_names(tiny_cnn_py, tmp_path):
    np.savez(tmp_path / "c.npz", pixels=np.zeros((4, 3, 16, 16), np.float32))
    with pytest.raises(BuildError, match=re.escape("has arrays ['pixels']; the model's inputs are ['image']")):
        build(f"{tiny_cnn_py}:model", tmp_path / "o", quant="fp8", calib=tmp_path / "c.npz")


def test_text_calibration_for_a_model_without_tokenizer(tiny_cnn_py, calib_txt, tmp_path):
    with pytest.raises(BuildError, match="the model has no tokenizer"):
        build(f"{tiny_cnn_py}:model", tmp_path / "o", quant="fp8", calib=calib_txt)


@pytest.mark.parametrize("size", [48, 8, 0, 100])
def test_block_size_must_be_a_power_of_two(tiny_cnn_py, tmp_path, size):
    with pytest.raises(BuildError, match="block size must be a power of two >= 16"):
        build(f"{tiny_cnn_py}:model", tmp_path / "o", quant="int4", block_size=size)


def test_int4_keep_sensitive_needs_calibration(tiny_cnn_py, tmp_path):
    with pytest.raises(BuildError, match=re.escape("--quant int4 needs calibration data: pass --calib FILE (.txt, .jsonl or .npz)")):
        build(f"{tiny_cnn_py}:model", tmp_path / "o", quant="int4", keep_sensitive=2)


def test_fp8_keep_sensitive_records_the_float_layers(tiny_cnn_py, tmp_path):
    np.savez(tmp_path / "c.npz", image=np.random.default_rng(0).standard_normal((4, 3, 16, 16)).astype(np.float32))
    out = built(f"{tiny_cnn_py}:model", tmp_path / "o", "--quant", "fp8", "--calib", tmp_path / "c.npz",
                "--keep-sensitive", "1", "--min-top1", "0", "--min-cosine", "0")
    q = open_bundle(out).manifest.quantization
    sensitive = {name: reason for name, reason in q.layers_skipped.items() if reason.startswith("sensitive:")}
    (name, reason), = sensitive.items()
    assert "rank 1 of" in reason and any(name in w for w in q.warnings)  # `ingot build` prints the warnings


def test_a_classifier_build_aims_for_the_default_targets(tiny_cnn_py, tmp_path):
    np.savez(tmp_path / "c.npz", image=np.random.default_rng(0).standard_normal((24, 3, 16, 16)).astype(np.float32))
    out = built(f"{tiny_cnn_py}:model", tmp_path / "o", "--quant", "fp8", "--calib", tmp_path / "c.npz")
    q = open_bundle(out).manifest.quantization
    assert (q.target_cosine, q.target_top1) == (0.995, 0.99)
    assert q.calib_cosine >= 0.995 and q.calib_top1 >= 0.99 or any("not reached" in w for w in q.warnings)
    assert any(n.startswith("mixed precision: the ") and "cosine >= 0.995 (reached" in n for n in q.notes)
    off = built(f"{tiny_cnn_py}:model", tmp_path / "off", "--quant", "fp8", "--calib", tmp_path / "c.npz",
                "--target-cosine", "0", "--target-top1", "0", "--min-top1", "0", "--min-cosine", "0")
    q = open_bundle(off).manifest.quantization
    assert q.target_cosine is None and q.calib_cosine is None
    assert not any(reason.startswith("sensitive:") for reason in q.layers_skipped.values())


def test_failing_gate_keeps_the_previous_bundle(awq_bundle, llama_bundle, calib_txt, tmp_path):
    import shutil

    out = shutil.copytree(awq_bundle, tmp_path / "b")
    before = tree_digest(out)
    proc = ingot("build", llama_bundle, "-o", out, "--quant", "int4-awq", "--block-size", "32", "--calib", calib_txt,
                 "--calib-seq-len", "32", "--calib-samples", "8", "--min-top1", "0.9999", "--min-cosine", "0.99999")
    line = assert_user_error(proc, "accuracy gate failed", "--min-top1 0.9999", "perplexity", "held-out rows of calib.txt")
    assert "cosine" in line and "for a more accurate plan try a lower --massive-ratio or --exclude PATTERN" in line
    assert "to accept this one, pass --min-cosine 0." in line and "--min-top1 0." in line
    assert tree_digest(out) == before and staging_leftovers(out) == []


def test_an_fp32_bundle_as_the_source(llama_bundle, tmp_path):
    out = built(llama_bundle, tmp_path / "q", "--quant", "int4-rtn", "--block-size", "32", "--no-kv-float")
    fp32, q = open_bundle(llama_bundle).manifest, open_bundle(out).manifest
    assert q.model == fp32.model and q.inputs == fp32.inputs and q.tokenizer == fp32.tokenizer
    assert q.precision == "int4" and q.quantization.layers_quantized == 14
    assert q.targets["cpu-x86_64"].verification.metrics["cosine_min"] > 0.95
    assert load(out).run_text(["hello there"])["logits"].shape[-1] == 320
    with pytest.raises(BuildError, match="already quantized"):
        build(out, tmp_path / "again", quant="int4")
