"""SamplingParams validation and the Sampler: greedy, top-k, top-p, seeds, distribution."""

import numpy as np
import pytest
from pydantic import ValidationError

from ingot.runtime.llm import Sampler, SamplingParams

VOCAB = 32


def logits(rows: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, VOCAB)).astype(np.float32) * 3


def gens(*seeds):
    return [np.random.default_rng(s) for s in seeds]


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def test_params_defaults_and_edge_validation():
    p = SamplingParams()
    assert (p.temperature, p.top_p, p.top_k, p.seed, p.max_tokens, p.stop, p.stop_token_ids, p.ignore_eos) == (
        1.0, 1.0, 0, None, 16, (), (), False)
    assert SamplingParams(top_k=-1).top_k == 0  # vLLM's "off"
    assert SamplingParams(stop=["a", "b"]).stop == ("a", "b") and SamplingParams(stop="x").stop == ("x",)
    assert SamplingParams(temperature=0).greedy and not SamplingParams(temperature=0.5).greedy
    for bad in (dict(temperature=-0.1), dict(top_p=0), dict(top_p=1.5), dict(top_k=-2), dict(max_tokens=0),
                dict(stop=[""]), dict(best_of=2)):
        with pytest.raises(ValidationError):
            SamplingParams(**bad)
    with pytest.raises(ValidationError):
        p.temperature = 0.5  # frozen


def test_greedy_is_argmax():
    x = logits(5)
    tokens = Sampler()(x, [SamplingParams(temperature=0)] * 5, gens(*range(5)))
    assert tokens.dtype == np.int64 and tokens.tolist() == np.argmax(x, axis=-1).tolist()


def test_greedy_draws_nothing_from_the_generator():
    g = np.random.default_rng(3)
    Sampler()(logits(1), [SamplingParams(temperature=0)], [g])
    assert g.random() == np.random.default_rng(3).random()


@pytest.mark.parametrize("params", [SamplingParams(top_k=1, temperature=1.3),
                                    SamplingParams(top_p=1e-6, temperature=2.0)])
def test_top_k_one_and_tiny_top_p_equal_greedy(params):
    x = logits(16, seed=1)
    tokens = Sampler()(x, [params] * 16, gens(*range(16)))
    assert tokens.tolist() == np.argmax(x, axis=-1).tolist()


def test_same_seed_same_tokens_alone_or_in_a_batch():
    x = logits(4, seed=2)
    mine = SamplingParams(seed=7, top_k=10, top_p=0.9)
    others = [SamplingParams(temperature=0), SamplingParams(seed=11, temperature=0.8), SamplingParams()]
    sampler, g = Sampler(), np.random.default_rng(mine.seed)
    alone = [int(sampler(x[:1], [mine], [g])[0]) for _ in range(20)]
    g, batch_gens = np.random.default_rng(mine.seed), gens(0, 11, 5)
    rows = [1, 0, 2, 3]  # `mine` is row 1 of the batch, after a greedy row
    batched = [int(sampler(x[rows], [others[0], mine, *others[1:]], [batch_gens[0], g, *batch_gens[1:]])[1])
               for _ in range(20)]
    assert batched == alone and len(set(alone)) > 1


def frequencies(x: np.ndarray, params: SamplingParams, draws: int = 20000) -> np.ndarray:
    g = np.random.default_rng(0)
    batch = np.repeat(x[None], draws, axis=0)
    tokens = Sampler()(batch, [params] * draws, [g] * draws)  # one generator, one draw per row
    return np.bincount(tokens, minlength=len(x)) / draws


def test_temperature_sampling_matches_softmax():
    x = np.array([0.0, 1.0, 2.0, 0.5, -1.0], np.float32)
    got = frequencies(x, SamplingParams(temperature=0.7))
    assert np.abs(got - softmax(x / 0.7)).max() < 0.01


def test_top_k_and_top_p_renormalize_the_kept_tokens():
    x = np.array([0.0, 1.0, 2.0, 0.5, -1.0], np.float32)
    top2 = np.array([0, 1, 1, 0, 0]) * softmax(x)
    assert np.abs(frequencies(x, SamplingParams(top_k=2)) - top2 / top2.sum()).max() < 0.01
    p = softmax(x)  # sorted mass: 0.563 (token 2), +0.207 (token 1) ≥ 0.7 → keep two
    assert np.abs(frequencies(x, SamplingParams(top_p=0.7)) - top2 / top2.sum()).max() < 0.01
    assert p[2] < 0.7 < p[2] + p[1]
    top3 = np.array([0, 1, 1, 1, 0]) * p  # 0.8 needs the third (token 3)
    assert np.abs(frequencies(x, SamplingParams(top_p=0.8)) - top3 / top3.sum()).max() < 0.01


def test_logprobs_bounds():
    assert SamplingParams().logprobs is None and SamplingParams(logprobs=0).logprobs == 0
    assert SamplingParams(logprobs=20).logprobs == 20
    for bad in (-1, 21):
        with pytest.raises(ValidationError, match="logprobs"):
            SamplingParams(logprobs=bad)


def test_logprobs_are_the_raw_log_softmax_only_for_rows_that_ask():
    x = logits(4, seed=3)
    x[2, 5] = x[2, 9] = x[2].max() + 1  # a tie for the top: the lower id ranks first, as argmax
    params = [SamplingParams(temperature=0, logprobs=3), SamplingParams(), SamplingParams(temperature=0, logprobs=5),
              SamplingParams(temperature=2.0, top_k=4, seed=1, logprobs=0)]
    tokens = Sampler()(x, params, gens(0, 1, 2, 3))
    out = Sampler().logprobs(x, params, tokens)
    assert out[1] is None
    for row, p, lp in ((0, params[0], out[0]), (2, params[2], out[2]), (3, params[3], out[3])):
        ref = x[row].astype(np.float64) - np.log(np.exp(x[row].astype(np.float64)).sum())  # not tempered
        assert lp.token_id == tokens[row] and lp.logprob == pytest.approx(ref[tokens[row]], abs=1e-6)
        assert lp.top_ids == tuple(np.argsort(-ref, kind="stable")[:p.logprobs].tolist())
        np.testing.assert_allclose(lp.top_logprobs, ref[list(lp.top_ids)], atol=1e-6)
    assert out[0].top_ids[0] == tokens[0] and out[3].top_ids == ()  # greedy = top-1; 0 = the chosen token only
    assert out[2].top_ids[:2] == (5, 9) and tokens[2] == 5
    assert Sampler().logprobs(x, [SamplingParams()] * 4, tokens) == [None] * 4
