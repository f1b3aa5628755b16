"""SmolLM2-135M generating through the paged plan: greedy tokens equal transformers', and a
request's tokens do not depend on the batch around it."""

import pytest

from ingot.runtime.llm import LLM, SamplingParams
from tests.conftest import shakespeare

pytestmark = [pytest.mark.real, pytest.mark.slow]  # each builds or loads a real model
PROMPTS = [
    "The capital of France is",
    "Once upon a time, in a small village by the sea,",
    "def fibonacci(n):",
    "The three primary colors are",
]


@pytest.fixture(scope="module")
def llm(smollm2_bundle):
    return LLM(smollm2_bundle, kv_cache_memory=1 << 28)


def test_greedy_equals_transformers_generate(llm, smollm2_gguf):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name)
    ref = AutoModelForCausalLM.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name, dtype=torch.float32)
    ours = llm.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=24))
    for prompt, out in zip(PROMPTS, ours, strict=True):
        ids = tok(prompt, return_tensors="pt").input_ids
        assert list(out.prompt_token_ids) == ids[0].tolist()
        with torch.no_grad():
            want = ref.generate(ids, max_new_tokens=24, do_sample=False)[0, ids.shape[1]:].tolist()
        assert list(out.token_ids) == want, (prompt, out.text, tok.decode(want))
    assert ours[0].text.strip().startswith("Paris")


def test_batch_invariance_alone_and_among_15_others(llm):
    words = shakespeare("hamlet", chars=20_000).split()
    others = [" ".join(words[i * 40: i * 40 + 5 + 9 * i]) for i in range(15)]  # 5..131 words
    params = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)
    alone = llm.generate(PROMPTS[1], params)[0].token_ids
    batch = llm.generate([*others[:7], PROMPTS[1], *others[7:]], params)
    assert len({len(o.prompt_token_ids) for o in batch}) > 10  # all different lengths
    assert batch[7].token_ids == alone
