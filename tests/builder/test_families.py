"""Every family Ingot pages, as a tiny random transformers config: greedy tokens equal
transformers' `generate`, for each prompt alone and in one batch (issue 20)."""

from __future__ import annotations

import shutil

import pytest

from ingot.runtime.llm import LLM, SamplingParams
from tests.conftest import built

PROMPTS = ["The quick brown fox", "Plans are bundles", "A man is eating food. " * 6]
NEW_TOKENS = 10


def config(family: str):
    import transformers

    common = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=384, max_position_embeddings=256, bos_token_id=0, eos_token_id=1)
    # 384 > the tokenizer's 320: the Qwen tokenizer classes add <|endoftext|> (id 320) as padding
    if family == "qwen2":
        return transformers.Qwen2Config(**common)  # q/k/v biases
    if family == "qwen3":
        return transformers.Qwen3Config(**common, head_dim=16)  # q/k norm
    if family == "mistral":
        return transformers.MistralConfig(**common, sliding_window=None)
    if family == "llama-linear-rope":  # static rope scaling: in the HF rotary module the plan runs
        return transformers.LlamaConfig(**common, rope_scaling={"rope_type": "linear", "factor": 4.0})
    if family == "llama3-rope":
        return transformers.LlamaConfig(**common, rope_scaling={"rope_type": "llama3", "factor": 8.0,
                                                                "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                                "original_max_position_embeddings": 64})
    if family == "qwen2-yarn-rope":  # YaRN: static, in the rotary module
        return transformers.Qwen2Config(**common, rope_scaling={"rope_type": "yarn", "factor": 4.0,
                                                                "original_max_position_embeddings": 64})
    if family == "llama-dynamic-rope":  # dynamic NTK: unscaled below max_position_embeddings, which bounds the plan
        return transformers.LlamaConfig(**common, rope_scaling={"rope_type": "dynamic", "factor": 2.0})
    if family == "phi3-longrope":  # short factors up to original_max_position_embeddings, where the plan stops
        return transformers.Phi3Config(**common, pad_token_id=1, original_max_position_embeddings=64,
                                       rope_scaling={"rope_type": "longrope", "short_factor": [1.0 + i / 8 for i in range(8)],
                                                     "long_factor": [2.0 + i for i in range(8)]})
    if family == "phi3":
        return transformers.Phi3Config(**common, pad_token_id=1)  # fused qkv and gate_up
    # Gemma: scaled embeddings, GeGLU, (1 + w) norms, norms around attention and MLP; prompts
    # longer than the 16-token window of the sliding layers. Gemma 2 and 3 have 64-dim heads, so a
    # KV block of one head is a page and the windows map the pool (the others gather copies).
    if family == "gemma":
        return transformers.GemmaConfig(**common, head_dim=16)
    if family == "gemma2":  # soft-capping, tight enough to matter on random weights
        return transformers.Gemma2Config(**common, head_dim=64, sliding_window=16, attn_logit_softcapping=5.0,
                                         final_logit_softcapping=10.0, layer_types=["sliding_attention", "full_attention"])
    if family == "gemma3":  # q/k norm, a rope base per layer type
        return transformers.Gemma3TextConfig(**common, head_dim=64, sliding_window=16,
                                             layer_types=["sliding_attention", "full_attention"])
    if family == "mistral-window":
        return transformers.MistralConfig(**common, sliding_window=16)
    raise AssertionError(family)


FAMILIES = ["qwen2", "qwen3", "mistral", "phi3", "llama-linear-rope", "llama3-rope", "qwen2-yarn-rope",
            "llama-dynamic-rope", "phi3-longrope", "gemma", "gemma2", "gemma3", "mistral-window"]
WINDOWED = {"gemma2": dict(layer_types=["full_attention"] * 2), "gemma3": dict(layer_types=["full_attention"] * 2),
            "mistral-window": dict(sliding_window=None)}  # the same model without its sliding window


@pytest.fixture(scope="module", params=FAMILIES)
def family(request, tiny_llama_dir, tmp_path_factory):
    """(family, source folder, bundle) of a tiny random model of the family, with the tiny Llama's tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM

    folder = tmp_path_factory.mktemp(request.param)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config(request.param)).eval()
    if request.param == "qwen2":  # random biases: zero ones would not test them
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                torch.nn.init.normal_(proj.bias, std=0.5)
    if request.param == "gemma2":  # attention logits large enough for the soft-capping to matter
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj):
                torch.nn.init.normal_(proj.weight, std=0.5)
    model.save_pretrained(folder)
    for f in tiny_llama_dir.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens")):
            shutil.copy(f, folder / f.name)
    return request.param, folder, built(folder, tmp_path_factory.mktemp(f"{request.param}-bundle") / "b")


def hf_greedy(model, ids: list[int]) -> tuple[int, ...]:
    import torch

    x = torch.tensor([ids])
    out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                         do_sample=False, eos_token_id=None, pad_token_id=1)
    return tuple(out[0, len(ids):].tolist())


def test_greedy_tokens_equal_transformers_alone_and_batched(family):
    from transformers import AutoModelForCausalLM

    name, folder, bundle = family
    ref = AutoModelForCausalLM.from_pretrained(folder, dtype="float32").eval()
    params = SamplingParams(temperature=0, max_tokens=NEW_TOKENS, ignore_eos=True)
    with LLM(bundle, kv_cache_memory="16MiB") as llm:
        info = llm.engine.runner.info
        assert info.num_kv_heads == 2
        scaling = ref.config.rope_parameters if "rope" in name else None
        assert info.rope_scaling == (None if scaling is None else {  # recorded (the longrope factor lists are not)
            k: v for k, v in scaling.items() if k != "rope_theta" and not isinstance(v, list)})
        if name == "phi3-longrope":
            assert info.max_model_len == 64  # its original_max_position_embeddings
        assert (llm.engine.runner.mapped is not None) == (info.head_dim == 64)  # page_map.py
        batched = llm.generate(PROMPTS, params)
        for prompt, out in zip(PROMPTS, batched, strict=True):
            want = hf_greedy(ref, list(out.prompt_token_ids))
            assert out.token_ids == want, prompt
            assert llm.generate([prompt], params)[0].token_ids == want, prompt
    if name in WINDOWED:  # the last prompt is longer than the window, and the window changes its tokens
        assert info.sliding_window == 16 and info.sliding_layers
        assert len(batched[-1].prompt_token_ids) > 16
        unwindowed = AutoModelForCausalLM.from_pretrained(folder, dtype="float32", **WINDOWED[name]).eval()
        assert hf_greedy(unwindowed, list(batched[-1].prompt_token_ids)) != batched[-1].token_ids


@pytest.mark.parametrize("family", ["gemma2"], indirect=True)
def test_gemma2_soft_capping_in_the_plan_logits(family):
    """Attention and final logit soft-capping: the plan's logits are transformers', not those of
    the same weights uncapped."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    from ingot.runtime import load

    _, folder, bundle = family
    ids = np.array([[0, *range(40, 80)]])  # 41 tokens: past the sliding window too
    got = load(bundle).run({"input_ids": ids, "attention_mask": np.ones_like(ids)})["logits"][0]
    with torch.no_grad():
        want = AutoModelForCausalLM.from_pretrained(folder, dtype="float32")(torch.tensor(ids)).logits[0].numpy()
        uncapped = AutoModelForCausalLM.from_pretrained(folder, dtype="float32", attn_logit_softcapping=None)(
            torch.tensor(ids)).logits[0].numpy()
    np.testing.assert_allclose(got, want, atol=1e-4)
    assert np.abs(want - uncapped).max() > 0.1  # the capping matters on these weights
    assert np.abs(want).max() <= 10.0  # final_logit_softcapping


@pytest.mark.parametrize("family", ["qwen2", "gemma3"], indirect=True)
def test_int4_awq_passes_the_gate_and_reports_perplexity(family, tmp_path):
    """INT4-AWQ on a family with q/k/v biases (Qwen2) and one with q/k norm, sandwich norms and
    sliding layers (Gemma 3): the gate passes, perplexity is reported, and the plan generates."""
    from ingot.plans import open_bundle
    from tests.conftest import ingot
    from tests.models import TEXT

    _, _, bundle = family
    calib = tmp_path / "calib.txt"
    calib.write_text(TEXT * 6)
    proc = ingot("build", bundle, "-o", tmp_path / "awq", "--quant", "int4-awq", "--block-size", "32", "--calib", calib,
                 "--calib-seq-len", "32", "--calib-samples", "8")
    assert proc.returncode == 0, proc.stderr
    assert "accuracy gate on cpu-x86_64 (the default gates): passed" in proc.stdout + proc.stderr
    manifest = open_bundle(tmp_path / "awq").manifest
    q, v = manifest.quantization, manifest.targets["cpu-x86_64"].verification
    assert q.scheme == "int4-awq" and q.layers_quantized >= 8 and v.passed
    assert v.metrics["perplexity"] > 1 and abs(v.metrics["ppl_increase_pct"]) < 50
    params = SamplingParams(temperature=0, max_tokens=NEW_TOKENS, ignore_eos=True)
    with LLM(tmp_path / "awq", kv_cache_memory="16MiB") as llm:
        assert llm.engine.runner.info == manifest.llm and manifest.llm.sliding_layers == open_bundle(bundle).manifest.llm.sliding_layers
        assert len(llm.generate(PROMPTS[-1:], params)[0].token_ids) == NEW_TOKENS
