import numpy as np
import pytest
from onnx import helper

from ingot.quant import QuantError
from ingot.quant.calibrate import calibrate
from tests.quant.util import make_model

C = np.array([1.0, -2.0, 0.5, 3.0], np.float32)


def _model():
    """x [b, s, 4] → t = x * c → y = Relu(t)."""
    nodes = [helper.make_node("Mul", ["x", "c"], ["t"]), helper.make_node("Relu", ["t"], ["y"])]
    return make_model(nodes, {"x": ["b", "s", 4]}, {"y": ["b", "s", 4]}, {"c": C})


def _feeds(n=5, seed=0):
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((2, 3 + i, 4)).astype(np.float32)} for i in range(n)]


def test_stats_match_numpy():
    feeds = _feeds()
    stats = calibrate(_model(), feeds, ["t", "x"])
    for name, rows in (("t", [f["x"].reshape(-1, 4) * C for f in feeds]), ("x", [f["x"].reshape(-1, 4) for f in feeds])):
        rows = np.concatenate(rows)
        st = stats[name]
        assert st.absmax == pytest.approx(float(np.abs(rows).max()))
        np.testing.assert_allclose(st.channel_mean_abs, np.abs(rows).mean(axis=0), rtol=1e-5)
        assert st.count == len(rows) == 2 * sum(3 + i for i in range(5))
        # everything fits the samples here, so the percentile and rows are exact
        assert st.percentile(99) == pytest.approx(float(np.percentile(np.abs(rows), 99)), rel=1e-5)
        assert sorted(map(tuple, st.rows)) == sorted(map(tuple, rows))


def test_samples_are_bounded_deterministic_and_spread():
    # feed i holds the value i everywhere: the sample shows which feeds it drew from
    feeds = [{"x": np.full((10, 10, 4), float(i), np.float32)} for i in range(10)]
    a = calibrate(_model(), feeds, ["x"], max_rows=50, max_values=64)["x"]
    b = calibrate(_model(), feeds, ["x"], max_rows=50, max_values=64)["x"]
    assert a.rows.shape == (50, 4) and a.abs_sample.shape == (64,)
    np.testing.assert_array_equal(a.rows, b.rows)
    np.testing.assert_array_equal(a.abs_sample, b.abs_sample)
    counts = np.bincount(a.rows[:, 0].astype(int), minlength=10)
    assert np.count_nonzero(counts) >= 8, counts  # not just the first or last feeds
    assert counts.max() <= 15, counts
    assert a.absmax == 9.0 and a.count == 1000


def test_the_model_is_not_modified():
    model = _model()
    before = model.SerializeToString()
    calibrate(model, _feeds(1), ["t"])
    assert model.SerializeToString() == before


def test_a_bad_feed_is_a_quant_error():
    with pytest.raises(QuantError, match="calibration sample 0 failed to run"):
        calibrate(_model(), [{"x": np.zeros((2, 4), np.float32)}], ["t"])
