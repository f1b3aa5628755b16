"""`ingot serve` on real models with the stock tritonclient: SmolLM2 INT4 streams its answer
token by token, greedy text equal to `ingot run`'s; MiniLM embeddings equal `ingot run`'s."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import ingot
from tests.serve.conftest import Server, make_repo
from tests.serve.test_grpc import llm_inputs, stream, text_input

pytestmark = [pytest.mark.real, pytest.mark.slow]
SENTENCES = ["A man is eating food.", "A man is eating a piece of bread.", "The new movie is awesome."]


@pytest.fixture(scope="module")
def real_server(smollm2_int4_bundle, minilm_bundle, tmp_path_factory):
    repo = make_repo(tmp_path_factory.mktemp("real-repo"), {"smol": {1: smollm2_int4_bundle},
                                                             "minilm": {1: minilm_bundle}})
    s = Server(repo, kv_cache_memory="256MiB")
    yield s
    code, err = s.stop()
    assert code == 0, err


def test_smollm2_streams_paris_as_ingot_run_does(real_server, smollm2_int4_bundle):
    prompt = "The capital of France is"
    out = stream(real_server.client(), "smol", [llm_inputs(prompt, 16)])
    texts, finals, _ = out["0"]
    served = "".join(t for t in texts if t)
    assert "Paris" in served and len(texts) >= 8 and finals[-1] and not any(finals[:-1])  # token by token
    proc = ingot("run", smollm2_int4_bundle, "--prompt", prompt, "--max-tokens", "16", "--json")
    assert proc.returncode == 0, proc.stderr
    assert served == json.loads(proc.stdout.splitlines()[0])["text"]


def test_minilm_embeddings_equal_ingot_run(real_server, minilm_bundle):
    got = real_server.client().infer("minilm", [text_input("text", SENTENCES)]).as_numpy("sentence_embedding")
    args = [a for s in SENTENCES for a in ("--text", s)]
    proc = ingot("run", minilm_bundle, *args, "--json")
    assert proc.returncode == 0, proc.stderr
    want = np.array(json.loads(proc.stdout)["outputs"]["sentence_embedding"]["data"], dtype=np.float32)
    np.testing.assert_allclose(got, want.reshape(got.shape), rtol=1e-5, atol=1e-5)


def test_smollm2_chat_over_openai_equals_ingot_run_chat(real_server, smollm2_int4_bundle):
    import openai

    client = openai.OpenAI(base_url=f"{real_server.http}/v1", api_key="unused", max_retries=0)
    question = "What is the capital of France?"
    chunks = client.chat.completions.create(model="smol", messages=[{"role": "user", "content": question}],
                                            max_tokens=24, temperature=0, stream=True)
    served = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    proc = ingot("run", smollm2_int4_bundle, "--chat", "--prompt", question, "--max-tokens", "24", "--json")
    assert proc.returncode == 0, proc.stderr
    assert served == json.loads(proc.stdout.splitlines()[0])["text"] and len(served) > 20


def test_minilm_openai_embeddings_equal_ingot_run(real_server, minilm_bundle):
    import openai

    client = openai.OpenAI(base_url=f"{real_server.http}/v1", api_key="unused", max_retries=0)
    got = np.array([d.embedding for d in client.embeddings.create(model="minilm", input=SENTENCES).data])
    args = [a for s in SENTENCES for a in ("--text", s)]
    proc = ingot("run", minilm_bundle, *args, "--json")
    want = np.array(json.loads(proc.stdout)["outputs"]["sentence_embedding"]["data"], dtype=np.float32)
    np.testing.assert_allclose(got, want.reshape(got.shape), rtol=1e-5, atol=1e-5)


def test_smollm2_chat_logprobs(real_server):
    """Greedy chat with logprobs on the real model: each chosen token is its step's most likely,
    its logprob is a probability's log, and the tokens' bytes rejoin to the text."""
    import openai

    client = openai.OpenAI(base_url=f"{real_server.http}/v1", api_key="unused", max_retries=0)
    r = client.chat.completions.create(model="smol", messages=[{"role": "user", "content": "Name a colour."}],
                                       max_tokens=12, temperature=0, logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    for t in content:
        assert len(t.top_logprobs) == 3 and t.logprob <= 0
        assert t.top_logprobs[0].logprob == pytest.approx(t.logprob, abs=1e-6)
        assert t.top_logprobs[0].logprob >= t.top_logprobs[1].logprob >= t.top_logprobs[2].logprob
    text = bytes(b for t in content for b in t.bytes).decode("utf-8", errors="replace")
    assert text.startswith(r.choices[0].message.content)  # the EOS token, if any, adds its text after
