"""Pack and scale: INT4 blockwise and FP8 E4M3 per-channel, pure numpy + ml_dtypes.

Conventions match ONNX `QuantizeLinear`/`DequantizeLinear` (and TensorRT's explicit
quantization): symmetric, no zero point, round half to even, saturate. A scale is never
0 (TensorRT requires strictly positive scales): an all-zero block or channel gets scale 1.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

INT4_MIN, INT4_MAX = -8, 7
FP8_MAX = 448.0  # largest finite float8_e4m3fn


def padded_k(k: int, block_size: int) -> int:
    """K rounded up to whole blocks: a [K, N] weight is stored as [K', N] with zero rows."""
    return -(-k // block_size) * block_size


def int4_quantize(w: np.ndarray, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """[K, N] float weight → (q [K', N] ml_dtypes.int4, scale [K'/bs, N] in w's dtype).

    Blocks run along the input dim K (axis 0), as `DequantizeLinear(axis=0, block_size)`
    expects: scale[b, n] = max |w[b*bs:(b+1)*bs, n]| / 7, q = clip(round(w / scale), -8, 7).
    K' = K rounded up to whole blocks: missing rows are zeros (they meet zero-padded
    activation channels, so the product is unchanged), and every block divides evenly, as
    TensorRT requires of a block-quantized scale.
    """
    q, scale = _int4_blocks(w, block_size)
    return q.reshape(-1, w.shape[1]).astype(ml_dtypes.int4), scale.astype(w.dtype)


def int8_channel_quantize(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[K, N] float weight → (q [K, N] int8, scale [N] in w's dtype), one scale per output
    channel (`DequantizeLinear(axis=1)`, TensorRT's INT8 weight-only form): scale[n] =
    max |w[:, n]| / 127, q = round(w / scale) (a column of zeros gets scale 1)."""
    amax = np.abs(w.astype(np.float32)).max(axis=0)
    scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
    q = np.clip(np.rint(w.astype(np.float32) / scale), -127, 127).astype(np.int8)
    return q, scale.astype(w.dtype)


def int4_dequantize(q: np.ndarray, scale: np.ndarray, block_size: int) -> np.ndarray:
    """Inverse of `int4_quantize`: [K, N] float32."""
    k, n = q.shape
    blocks = q.astype(np.float32).reshape(k // block_size, block_size, n)
    return (blocks * scale.astype(np.float32)[:, None, :]).reshape(k, n)


def int4_round_trip(w: np.ndarray, block_size: int) -> np.ndarray:
    """Q(W) [K, N]: what the quantized model computes with, as float32 (padding dropped).
    Equal to int4_dequantize(*int4_quantize(w)), without the int4 casts (searches call it a lot)."""
    q, scale = _int4_blocks(w, block_size)
    return np.multiply(q, scale[:, None, :], out=q).reshape(-1, w.shape[1])[: w.shape[0]]


def _int4_blocks(w: np.ndarray, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """`int4_quantize` in float32: (q (K'/bs, bs, N) integers in [-8, 7], scale (K'/bs, N) as stored
    in w's dtype)."""
    assert w.ndim == 2, w.shape
    k, n = w.shape
    if k % block_size:
        w = np.concatenate([w, np.zeros((padded_k(k, block_size) - k, n), w.dtype)])
    blocks = w.astype(np.float32, copy=False).reshape(-1, block_size, n)  # (K'/bs, bs, N)
    amax = np.maximum(blocks.max(axis=1), -blocks.min(axis=1))
    scale = _nonzero(amax / INT4_MAX).astype(w.dtype).astype(np.float32)  # (K'/bs, N)
    q = np.divide(blocks, scale[:, None, :])  # in place below: searches call this on large arrays
    return np.clip(np.round(q, out=q), INT4_MIN, INT4_MAX, out=q), scale


def fp8_quantize_channels(w: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-output-channel FP8: (q float8_e4m3fn like w, scale [w.shape[axis]] in w's dtype).

    `axis` indexes output channels: 1 for a MatMul weight [K, N], 0 for a Conv weight
    [O, I/g, kh, kw] or a transposed Gemm weight [N, K]. scale = max |w| per channel / 448.
    """
    reduce = tuple(a for a in range(w.ndim) if a != axis % w.ndim)
    amax = np.abs(w.astype(np.float32)).max(axis=reduce)
    scale = _nonzero(amax / FP8_MAX).astype(w.dtype)
    return fp8_cast(w.astype(np.float32) / _expand(scale, axis, w.ndim)), scale


def fp8_dequantize(q: np.ndarray, scale: np.ndarray, axis: int | None = None) -> np.ndarray:
    """float32 q * scale; `axis` None means a per-tensor scale."""
    s = np.float32(scale) if axis is None else _expand(scale, axis, q.ndim)
    return q.astype(np.float32) * s


def fp8_activation_scale(amax: float) -> float:
    """Per-tensor scale for an activation whose calibrated range is [-amax, amax]."""
    assert np.isfinite(amax) and amax >= 0, amax
    return float(amax / FP8_MAX) if amax > 0 else 1.0


def fp8_quantize_tensor(x: np.ndarray, scale: float) -> np.ndarray:
    """What `QuantizeLinear(x, scale, float8e4m3fn 0)` computes: saturates at ±448."""
    return fp8_cast(x.astype(np.float32) / np.float32(scale))


def fp8_cast(x: np.ndarray) -> np.ndarray:
    # ml_dtypes maps out-of-range values to NaN (e4m3fn has no inf); ONNX saturates.
    return np.clip(x, -FP8_MAX, FP8_MAX).astype(ml_dtypes.float8_e4m3fn)


def _nonzero(scale: np.ndarray) -> np.ndarray:
    return np.where(scale > 0, scale, 1.0).astype(np.float32)


def _expand(scale: np.ndarray, axis: int, ndim: int) -> np.ndarray:
    shape = [1] * ndim
    shape[axis] = -1
    return scale.astype(np.float32).reshape(shape)
