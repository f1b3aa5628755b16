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
    if family == "phi3":
        return transformers.Phi3Config(**common, pad_token_id=1)  # fused qkv and gate_up
    raise AssertionError(family)


@pytest.fixture(scope="module", params=["qwen2", "qwen3", "mistral", "phi3", "llama-linear-rope", "llama3-rope"])
def family(request, tiny_llama_dir, tmp_path_factory):
    """(source folder, bundle) of a tiny random model of the family, with the tiny Llama's tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM

    folder = tmp_path_factory.mktemp(request.param)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config(request.param)).eval()
    if request.param == "qwen2":  # random biases: zero ones would not test them
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                torch.nn.init.normal_(proj.bias, std=0.5)
    model.save_pretrained(folder)
    for f in tiny_llama_dir.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens")):
            shutil.copy(f, folder / f.name)
    return folder, built(folder, tmp_path_factory.mktemp(f"{request.param}-bundle") / "b")


def hf_greedy(model, ids: list[int]) -> tuple[int, ...]:
    import torch

    x = torch.tensor([ids])
    out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                         do_sample=False, eos_token_id=None, pad_token_id=1)
    return tuple(out[0, len(ids):].tolist())


def test_greedy_tokens_equal_transformers_alone_and_batched(family):
    from transformers import AutoModelForCausalLM

    folder, bundle = family
    ref = AutoModelForCausalLM.from_pretrained(folder, dtype="float32").eval()
    params = SamplingParams(temperature=0, max_tokens=NEW_TOKENS, ignore_eos=True)
    with LLM(bundle, kv_cache_memory="16MiB") as llm:
        info = llm.engine.runner.info
        assert info.num_kv_heads == 2
        scaling = ref.config.rope_parameters if "rope" in folder.name else None
        assert info.rope_scaling == (None if scaling is None else
                                     {k: v for k, v in scaling.items() if k != "rope_theta"})  # recorded
        batched = llm.generate(PROMPTS, params)
        for prompt, out in zip(PROMPTS, batched, strict=True):
            want = hf_greedy(ref, list(out.prompt_token_ids))
            assert out.token_ids == want, prompt
            assert llm.generate([prompt], params)[0].token_ids == want, prompt
