import numpy as np
import pytest

from ingot.quant import QuantSpec, quantize
from ingot.quant.smooth import fp8_error, search, smooth_scale
from tests.quant.util import initializer, mlp, ops, rel_rms, run

ALPHAS = [round(0.05 * i, 2) for i in range(1, 21)]


def _outliers(rows: int, seed: int) -> np.ndarray:
    """(rows, 64): typical channels ~0.05, two outlier channels ~2000 in 1 row out of 8
    (attention-sink-like), which set a per-tensor FP8 scale that pushes the rest into
    E4M3's subnormals."""
    rng = np.random.default_rng(seed)
    x = (0.05 * rng.standard_normal((rows, 64))).astype(np.float32)
    x[::8, 7] = 2000.0
    x[::8, 40] = -1500.0
    return x


def test_smooth_scale_is_centred_and_follows_the_formula():
    xm, wm = np.array([1.0, 4.0, 100.0]), np.array([1.0, 0.5, 2.0])
    s = smooth_scale(xm, wm, 0.5)
    assert np.sqrt(s.max() * s.min()) == pytest.approx(1.0)
    ratio = (xm**0.5 / wm**0.5) / s
    np.testing.assert_allclose(ratio, ratio[0], rtol=1e-6)  # proportional to max|X|^a / max|W|^(1-a)
    assert np.all(np.isfinite(smooth_scale(np.array([0.0, 1.0]), np.array([1.0, 0.0]), 0.3)))


def test_search_fixes_subnormal_activations():
    x = _outliers(256, 0)
    w = np.random.default_rng(1).standard_normal((64, 32)).astype(np.float32)
    result = search(x, np.abs(x).max(axis=0), [w], ALPHAS)
    assert result.alpha is not None and result.error < 0.5 * result.error_plain
    assert result.amax == pytest.approx(float(np.max(np.abs(x).max(axis=0) / result.scale)))
    held = _outliers(256, 5)  # held-out rows: smoothing still wins
    plain = fp8_error(held, [w], [held @ w], float(np.abs(x).max()))
    smooth = fp8_error(held / result.scale, [w * result.scale[:, None]], [held @ w], result.amax)
    assert smooth < 0.5 * plain


def test_search_never_loses_to_plain_fp8():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((64, 32)).astype(np.float32)
    w = rng.standard_normal((32, 16)).astype(np.float32)
    result = search(x, np.abs(x).max(axis=0), [w], [1.0])
    assert result.error <= result.error_plain
    if result.alpha is None:
        np.testing.assert_array_equal(result.scale, 1.0)


def test_fp8_smoothing_end_to_end():
    """mlp: x [m, 64] → fc1 → Relu → fc2. fc1's X has outlier channels: it is smoothed
    with an explicit Mul (x is a graph input), and the held-out error drops."""
    model = mlp(k=64, n=32)
    calib = [{"x": _outliers(64, i)} for i in range(4)]
    test = [{"x": _outliers(48, 10 + i)} for i in range(2)]
    ref = run(model, test)
    errors = {}
    for smooth in (False, True):
        qmodel, report = quantize(model, QuantSpec(scheme="fp8", smooth=smooth, massive_ratio=None), calib)
        errors[smooth] = rel_rms(run(qmodel, test, report.session_config), ref)
    fc1 = report.smoothing[0]
    assert fc1.layers == ["fc1/MatMul"] and fc1.alpha is not None and fc1.scaling == "explicit"
    assert fc1.error_smooth < fc1.error_plain
    assert all(c.error_smooth <= c.error_plain for c in report.smoothing)
    mul = next(n for n in ops(qmodel, "Mul") if n.name == "fc1/smooth_Mul")
    q = next(n for n in ops(qmodel, "QuantizeLinear") if n.name == "fc1/input_QuantizeLinear")
    assert q.input[0] == mul.output[0]  # Q reads X / s
    assert report.activation_amax["x"] < 2000.0 / 10  # X / s has a much smaller range
    assert float(initializer(qmodel, mul.input[1]).min()) > 0  # 1/s > 0
    print(f"fp8 held-out rel. RMS error: plain {errors[False]:.4f}, smoothed {errors[True]:.4f}")
    assert errors[True] < 0.5 * errors[False]
