"""`ingot eval`: perplexity equals transformers' loss on the same windows; bad input is refused."""

import json

import numpy as np
import pytest

from ingot.runtime.evaluate import mean_cosine, perplexity, top1_agreement, windows
from tests.conftest import assert_user_error, ingot
from tests.models import TEXT


def test_uniform_model_has_perplexity_of_the_vocab():
    ids = np.arange(100) % 7
    run = lambda feeds: {"logits": np.zeros((*feeds["input_ids"].shape, 7), np.float32)}  # noqa: E731
    p = perplexity(run, ["input_ids", "attention_mask"], ids, window=32)
    assert p.perplexity == pytest.approx(7.0) and p.tokens == 3 * 31 + 3 and p.windows == 4


def test_perplexity_reports_its_windows_as_they_are_scored():
    ids = np.arange(100) % 7
    run = lambda feeds: {"logits": np.zeros((*feeds["input_ids"].shape, 7), np.float32)}  # noqa: E731
    seen = []
    perplexity(run, ["input_ids"], ids, window=10, batch=4, progress=lambda done, total: seen.append((done, total)))
    assert seen == [(0, 10), (4, 10), (8, 10), (10, 10)]  # ingot eval draws its bar on stderr from these


def test_windows_and_agreement():
    assert [len(w) for w in windows(np.arange(10), 4)] == [4, 4, 2]
    assert [len(w) for w in windows(np.arange(9), 4)] == [4, 4]  # a 1-token tail predicts nothing
    a = np.array([[0.1, 0.9], [0.8, 0.2]])
    assert top1_agreement(a, a[::-1]) == 0.0 and top1_agreement(a, a) == 1.0
    assert mean_cosine(a, 2 * a) == pytest.approx(1.0)


def test_eval_matches_transformers(llama_bundle, tiny_llama_dir, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    (tmp_path / "t.txt").write_text(TEXT)
    proc = ingot("eval", llama_bundle, "--text-file", tmp_path / "t.txt", "--window", "64", "--json")
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    ids = AutoTokenizer.from_pretrained(tiny_llama_dir)(TEXT, add_special_tokens=False)["input_ids"]
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    nll, count = 0.0, 0
    with torch.no_grad():
        for w in windows(np.array(ids), 64):
            x = torch.tensor(w)[None]
            loss = model(input_ids=x, labels=x).loss.item()  # mean over len(w) - 1 predictions
            nll, count = nll + loss * (len(w) - 1), count + len(w) - 1
    assert got["tokens"] == count
    assert got["perplexity"] == pytest.approx(float(np.exp(nll / count)), rel=1e-4)


def test_eval_bad_input(llama_bundle, bert_bundle, tmp_path):
    from ingot.runtime import InputError, RunError, load

    with pytest.raises(RunError, match="needs a causal-LM bundle"):
        load(bert_bundle).perplexity(TEXT)
    llama = load(llama_bundle)
    with pytest.raises(InputError, match="--window 100000"):
        llama.perplexity(TEXT, window=100000)
    with pytest.raises(InputError, match="perplexity needs at least 2"):
        llama.perplexity("a")
    assert_user_error(ingot("eval", llama_bundle, "--text-file", tmp_path / "none.txt"), "file not found")


def test_padded_positions_are_left_out():
    a = np.array([[[1.0, 0.0], [5.0, 5.0]]])  # (batch 1, sequence 2, hidden 2); position 1 is padding
    b = np.array([[[1.0, 0.0], [-5.0, -5.0]]])
    mask = np.array([[1, 0]])
    assert mean_cosine(a, b) == pytest.approx(0.0)
    assert mean_cosine(a, b, mask) == pytest.approx(1.0)
