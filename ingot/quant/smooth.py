"""SmoothQuant's per-input-channel smoothing (Xiao et al., 2023), searched for FP8.

An FP8 activation has one per-tensor scale (TensorRT takes no per-channel activation
scales), so a few channels with large |x| (LLM outlier channels; Llama's down_proj input
silu(gate) * up) set the scale and push every other channel towards FP8's subnormals.
X W = (X / s)(s W) moves that range into the weights, whose scales are per output channel:

    s_c = max|X_c|^alpha / max|W_c|^(1 - alpha)      (max|W_c| over the group's row c)

alpha is picked per group of layers sharing X by the FP8 fake-quant output error on the
calibration rows, Q8 = E4M3 with scale amax / 448 (per tensor for X / s, per output channel
for s W):

    err(s) = sum over W in group, rows r of || X W - Q8(X / s) Q8(s W) ||_r^2 / || X W ||_r^2

s = 1 (no smoothing) is always a candidate, so smoothing is never worse than plain FP8 on
the calibration rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ingot.quant.primitives import (
    fp8_activation_scale, fp8_dequantize, fp8_quantize_channels, fp8_quantize_tensor,
)

_TINY = 1e-30
_MIN_RATIO = 1e-5  # per-channel maxima floor, relative to the largest: keeps s finite and > 0


@dataclass(frozen=True)
class SmoothResult:
    alpha: float | None  # None: no smoothing (s = 1)
    scale: np.ndarray  # (K,) float32 s: W rows are multiplied by s, X channels divided by s
    amax: float  # max |X / s| over all calibration rows (exact): the activation's FP8 range
    error_plain: float  # err(1), see fp8_error
    error: float  # err(s) <= error_plain


def smooth_scale(x_absmax: np.ndarray, w_absmax: np.ndarray, alpha: float) -> np.ndarray:
    """s = max|X|^alpha / max|W|^(1 - alpha) per input channel (K,), centred in log space
    (sqrt(max(s) * min(s)) = 1; a constant factor changes neither FP8 range nor error)."""
    s = _floored(x_absmax) ** alpha / _floored(w_absmax) ** (1.0 - alpha)
    return (s / np.sqrt(s.max() * s.min())).astype(np.float32)


def search(rows: np.ndarray, x_absmax: np.ndarray, weights: list[np.ndarray], alphas: list[float]) -> SmoothResult:
    """The best smoothing for `weights` ([K, N] each) on activation `rows` (R, K); `x_absmax`
    (K,) is the exact per-channel max |x| over all calibration data (sets the FP8 range)."""
    x = rows.astype(np.float32)
    ws = [w.astype(np.float32) for w in weights]
    assert x.ndim == 2 and all(w.shape[0] == x.shape[1] for w in ws), (x.shape, [w.shape for w in ws])
    refs = [x @ w for w in ws]  # (R, N) per layer
    w_absmax = np.max([np.abs(w).max(axis=1) for w in ws], axis=0)  # (K,)
    candidates = [(None, np.ones(x.shape[1], np.float32))]
    candidates += [(a, smooth_scale(x_absmax, w_absmax, a)) for a in sorted(alphas)]
    best: SmoothResult | None = None
    for alpha, s in candidates:
        amax = float(np.max(x_absmax / s))
        err = fp8_error(x / s, [w * s[:, None] for w in ws], refs, amax)
        if best is None or err < best.error:
            best = SmoothResult(alpha, s, amax, best.error_plain if best else err, err)
    assert best is not None
    return best


def fp8_error(x: np.ndarray, weights: list[np.ndarray], refs: list[np.ndarray], amax: float) -> float:
    """sum over layers and rows of || Q8(x) Q8(w) - ref ||^2 / ||ref||^2 (per row): x per tensor
    with range `amax`, w per output channel.

    Per row relative, unlike AWQ's plain sum: FP8's error is relative to each value, so a
    plain sum is ruled by the few rows with massive activations (Llama's attention-sink
    tokens reach |x| ~ 3000 in a down_proj input whose median channel max is ~2), and the
    alpha it picks flips with their rounding (measured on SmolLM2: worse held-out perplexity
    than no smoothing). Each token counts once here, as in perplexity."""
    scale = fp8_activation_scale(amax)
    xq = fp8_dequantize(fp8_quantize_tensor(x, scale), scale)
    err = 0.0
    for w, ref in zip(weights, refs):
        wq = fp8_dequantize(*fp8_quantize_channels(w, 1), axis=1)
        row_err = np.sum((xq @ wq - ref) ** 2, axis=1, dtype=np.float64)  # (R,)
        err += float(np.sum(row_err / np.maximum(np.sum(ref.astype(np.float64) ** 2, axis=1), _TINY)))
    return err


def _floored(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    return np.maximum(m, max(float(m.max()) * _MIN_RATIO, 1e-12))
