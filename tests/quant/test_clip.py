import numpy as np
import pytest

from ingot.quant.clip import clip_ratios, search_clip
from ingot.quant.primitives import int4_round_trip

BS = 32


def _err(x, w, q):
    return float(np.sum((x @ w - x @ q) ** 2, dtype=np.float64))


def test_clip_ratios_run_from_one_down():
    r = clip_ratios(0.5, 11)
    assert r[0] == 1.0 and r[-1] == pytest.approx(0.5) and len(r) == 11 and np.all(np.diff(r) < 0)
    assert clip_ratios(0.5, 1) == [1.0]


def test_an_outlier_weight_gets_clipped():
    """One big weight per block coarsens RTN's steps for the rest; clipping wins it back."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((256, 64)).astype(np.float32)
    w = rng.standard_normal((64, 16)).astype(np.float32)
    w[5, :] = 6.0  # an outlier in block 0 of every column, on an input channel that is
    x[:, 5] *= 0.05  # nearly silent: clipping it costs little, and every other weight gains
    result = search_clip(w, x, BS, clip_ratios(0.5, 20))
    rtn = _err(x, w, int4_round_trip(w, BS))
    assert result.error_before == pytest.approx(rtn, rel=1e-4)
    assert result.error == pytest.approx(_err(x, w, int4_round_trip(result.weight, BS)), rel=1e-4)
    assert result.error < 0.8 * rtn
    assert result.ratio.shape == (2, 16) and np.all(result.ratio[0] < 1)
    bound = np.abs(w[:BS]).max(axis=0) * result.ratio[0]  # block 0 clipped to ±r max|w| per column
    np.testing.assert_allclose(np.abs(result.weight[:BS]).max(axis=0), bound, rtol=1e-6)


def test_clipping_is_never_worse_than_rtn_and_pads_ragged_k():
    rng = np.random.default_rng(1)
    for k in (48, 64):  # 48: a ragged last block, padded like int4_quantize
        x = rng.standard_normal((128, k)).astype(np.float32) * rng.uniform(0.1, 5, k).astype(np.float32)
        w = rng.standard_normal((k, 8)).astype(np.float32)
        result = search_clip(w, x, BS, clip_ratios(0.5, 20))
        assert result.weight.shape == w.shape and result.ratio.shape == (2, 8)
        assert result.error <= result.error_before
        assert _err(x, w, int4_round_trip(result.weight, BS)) <= _err(x, w, int4_round_trip(w, BS)) * (1 + 1e-5)


def test_ratio_one_only_leaves_the_weight_alone():
    rng = np.random.default_rng(2)
    x, w = rng.standard_normal((32, 64)).astype(np.float32), rng.standard_normal((64, 8)).astype(np.float32)
    result = search_clip(w, x, BS, [1.0])
    np.testing.assert_array_equal(result.weight, w)
    assert np.all(result.ratio == 1) and result.error == result.error_before


def test_each_block_gets_its_least_error_ratio():
    """Brute force per (block, channel): || X_b (w - Q(clip(w, r))) ||^2 for every r; the
    batched search picks the same ratios (where it keeps its choice)."""
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((128, 64)) * rng.uniform(0.1, 3.0, 64)).astype(np.float32)
    w = rng.standard_normal((64, 12)).astype(np.float32)
    w[rng.integers(0, 64, 6), rng.integers(0, 12, 6)] *= 5  # a few outliers worth clipping
    ratios = clip_ratios(0.5, 6)
    result = search_clip(w, x, BS, ratios)
    assert result.error < result.error_before
    for b in range(2):
        xb, wb = x[:, b * BS : (b + 1) * BS], w[b * BS : (b + 1) * BS]
        errs = []
        for r in ratios:
            bound = r * np.abs(wb).max(axis=0)
            q = int4_round_trip(np.clip(wb, -bound, bound), BS)
            errs.append(np.sum((xb @ (wb - q)) ** 2, axis=0))
        np.testing.assert_array_equal(result.ratio[b], np.asarray(ratios, np.float32)[np.argmin(errs, axis=0)])
