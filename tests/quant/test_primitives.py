import ml_dtypes
import numpy as np
import pytest

from ingot.quant.primitives import (
    FP8_MAX,
    fp8_activation_scale,
    fp8_dequantize,
    fp8_quantize_channels,
    fp8_quantize_tensor,
    int4_dequantize,
    int4_quantize,
    int4_round_trip,
)


def _weight(k=256, n=48, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal((k, n)).astype(dtype)


@pytest.mark.parametrize("bs", [16, 32, 64, 128, 256])
def test_int4_shapes_range_and_bound(bs):
    w = _weight()
    q, scale = int4_quantize(w, bs)
    assert q.dtype == ml_dtypes.int4 and q.shape == w.shape
    assert scale.dtype == np.float32 and scale.shape == (256 // bs, 48)
    qi = q.astype(np.int8)
    assert qi.min() >= -8 and qi.max() <= 7
    # round to nearest: |w - deq| <= scale / 2 in every block
    err = np.abs(w - int4_dequantize(q, scale, bs)).reshape(256 // bs, bs, 48)
    assert np.all(err <= scale[:, None, :] / 2 * (1 + 1e-6))
    # each block's largest |w| lands exactly on ±7
    assert np.all(np.abs(qi).reshape(256 // bs, bs, 48).max(axis=1) == 7)


def test_int4_matches_numpy_reference():
    w, bs = _weight(128, 8, seed=3), 32
    q, scale = int4_quantize(w, bs)
    for b in range(128 // bs):
        block = w[b * bs:(b + 1) * bs]
        s = np.abs(block).max(axis=0) / 7
        np.testing.assert_array_equal(scale[b], s.astype(np.float32))
        np.testing.assert_array_equal(q[b * bs:(b + 1) * bs].astype(np.int8), np.clip(np.round(block / s), -8, 7))
    np.testing.assert_allclose(int4_round_trip(w, bs), int4_dequantize(q, scale, bs))


def test_int4_zero_block_gets_scale_one():
    w = _weight(64, 4)
    w[:32, 1] = 0
    q, scale = int4_quantize(w, 32)
    assert scale[0, 1] == 1.0 and np.all(scale > 0)
    assert np.all(q[:32, 1].astype(np.int8) == 0)


def test_int4_keeps_float16_scales():
    w = _weight(64, 4, dtype=np.float16)
    q, scale = int4_quantize(w, 32)
    assert scale.dtype == np.float16
    assert np.abs(int4_dequantize(q, scale, 32) - w.astype(np.float32)).max() <= np.abs(w).max() / 7


def test_int4_pads_a_misfit_k_with_zero_rows():
    w = _weight(96, 4)
    q, scale = int4_quantize(w, 64)
    assert q.shape == (128, 4) and scale.shape == (2, 4)  # K' = 128: whole blocks
    assert not q[96:].astype(np.int8).any()
    back = int4_round_trip(w, 64)
    assert back.shape == (96, 4) and np.abs(back - w).max() <= np.abs(w).max() / 7


def test_fp8_per_output_channel_of_a_matmul_weight():
    w = _weight(64, 16) * np.linspace(0.01, 10, 16, dtype=np.float32)  # very different channel ranges
    q, scale = fp8_quantize_channels(w, axis=1)
    assert q.dtype == ml_dtypes.float8_e4m3fn and q.shape == w.shape and scale.shape == (16,)
    np.testing.assert_allclose(scale, np.abs(w).max(axis=0) / FP8_MAX, rtol=1e-6)
    assert np.all(np.abs(q.astype(np.float32)).max(axis=0) == FP8_MAX)
    deq = fp8_dequantize(q, scale, axis=1)
    # e4m3 keeps 3 mantissa bits: relative rounding error <= 2^-4 for normal values
    normal = np.abs(w / scale) >= 2.0**-6
    assert np.all(np.abs(deq - w)[normal] <= np.abs(w)[normal] * 2.0**-4 * (1 + 1e-6))
    step = np.broadcast_to(scale * 2.0**-9, w.shape)  # subnormals: fixed steps of 2^-9
    assert np.all(np.abs(deq - w)[~normal] <= step[~normal] / 2 * (1 + 1e-6))


def test_fp8_conv_weight_axis_0():
    w = np.random.default_rng(1).standard_normal((8, 3, 3, 3)).astype(np.float32)
    q, scale = fp8_quantize_channels(w, axis=0)
    assert scale.shape == (8,)
    np.testing.assert_allclose(scale, np.abs(w).reshape(8, -1).max(axis=1) / FP8_MAX, rtol=1e-6)
    np.testing.assert_allclose(fp8_dequantize(q, scale, axis=0), w, rtol=2.0**-4, atol=scale.max() * 2.0**-10)


def test_fp8_saturates_and_rounds_like_onnx():
    x = np.array([1000, -1000, 448, 17.3, 3.14159, 1e-4, 0], np.float32)
    q = fp8_quantize_tensor(x, 1.0).astype(np.float32)
    np.testing.assert_array_equal(q, [448, -448, 448, 18, 3.25, 0, 0])
    assert not np.isnan(q).any()


def test_fp8_activation_scale():
    assert fp8_activation_scale(448.0) == 1.0
    assert fp8_activation_scale(44.8) == pytest.approx(0.1)
    assert fp8_activation_scale(0.0) == 1.0  # scales must stay positive
    x = np.array([-2.0, 0.5, 2.0], np.float32)
    s = fp8_activation_scale(2.0)
    np.testing.assert_allclose(fp8_dequantize(fp8_quantize_tensor(x, s), s), x, rtol=2.0**-4)
