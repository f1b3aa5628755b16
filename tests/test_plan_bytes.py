"""scripts/plan_bytes.py: the weight bytes a decode step reads, counted from a plan's ONNX file."""

from __future__ import annotations

import sys

import onnx

from tests.conftest import REPO, built

sys.path.insert(0, str(REPO / "scripts"))

from plan_bytes import decode_bytes, onnx_path  # noqa: E402

# the tiny Llama (tests/models.py): hidden 64, MLP 128, 4 heads and 2 KV heads of 16, 2 layers
HIDDEN, MLP, KV, LAYERS = 64, 128, 32, 2
LINEAR = LAYERS * (2 * HIDDEN * HIDDEN + 2 * HIDDEN * KV + 3 * HIDDEN * MLP)  # q, o; k, v; gate, up, down
NORMS = 4 * (2 * LAYERS + 1) * HIDDEN  # at most: the RMSNorm weights, fp32


def vocab(bundle) -> int:
    model = onnx.load(str(onnx_path(bundle)), load_external_data=False)
    return next(t.dims[0] for t in model.graph.initializer if "embed" in t.name or "lm_head" in t.name)


def test_fp32_reads_every_linear_weight_and_the_head_but_one_embedding_row(llama_bundle):
    """fp32: every MatMul weight at 4 bytes, the LM head too; the embedding table and the rotary
    caches are read a row a token. (A tied head, a Transpose of the table, counts the table:
    ONNX Runtime folds it into the head's own copy; SmolLM2 in scripts/plan_bytes.py's use.)"""
    got = decode_bytes(llama_bundle)
    weights = 4 * (LINEAR + vocab(llama_bundle) * HIDDEN)
    assert weights < got.by_kind["float"] <= weights + NORMS and set(got.by_kind) <= {"float", "other"}
    assert got.by_kind.get("other", 0) < 1024 and got.total == sum(got.by_kind.values())
    rotary = 2 * 4 * 2048 * 8  # the exported cos and sin caches: 2048 positions x head_dim / 2, fp32
    assert got.indexed == 4 * vocab(llama_bundle) * HIDDEN + rotary


def test_int4_with_an_int8_head_counts_packed_weights_scales_and_float_at_its_runtime_size(llama_bundle, tmp_path):
    """int4-rtn, k/v float (stored fp16 + Cast: 4 bytes at run time), an INT8 head (one byte a
    weight and a scale a row); the fp16 embedding table is only gathered: not counted."""
    out = built(llama_bundle, tmp_path / "q", "--quant", "int4-rtn", "--lm-head-precision", "int8")
    got, v = decode_bytes(out), vocab(llama_bundle)
    int4 = LINEAR - LAYERS * 2 * HIDDEN * KV
    assert got.by_kind["int4"] == int4 // 2 and got.by_kind["int8"] == v * HIDDEN
    assert 4 * LAYERS * 2 * HIDDEN * KV < got.by_kind["float"] <= 4 * LAYERS * 2 * HIDDEN * KV + NORMS
    assert got.by_kind["scales"] == 4 * (int4 // 32 + v)  # fp32 scales: one a block of 32, one a head row
    assert got.indexed == 2 * v * HIDDEN + 2 * 4 * 2048 * 8  # the fp16 table, the rotary caches
    assert decode_bytes(onnx_path(out)) == got  # a bundle or its .onnx
