"""AWQ's scale search (Lin et al., 2023), for the layers that share one activation X.

Channels of X with large mean |x| matter most. Scaling W's row k by s_k > 1 before INT4
rounding (and X's channel k by 1/s_k, which keeps X W unchanged in exact arithmetic) gives
those rows finer steps relative to their values. s = mean|X|^alpha, and alpha is picked on
the calibration rows by the output error of the whole group:

    err(alpha) = sum over W in group of || X W - (X / s) Q(W * s) ||^2

alpha = 0 gives s = 1, which is plain round-to-nearest (RTN); it is always tried, so the
chosen scale is never worse than RTN on the calibration rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ingot.quant.primitives import int4_round_trip

_MIN_RATIO = 1e-4  # mean|x| floor, relative to the largest channel: keeps 1/s finite


@dataclass(frozen=True)
class AwqResult:
    alpha: float
    scale: np.ndarray  # (K,) float32 s: W rows are multiplied by s, X channels divided by s
    error_rtn: float  # err(0)
    error: float  # err(alpha) <= error_rtn


def awq_scale(mean_abs: np.ndarray, alpha: float) -> np.ndarray:
    """s = mean|X|^alpha, normalized so that sqrt(max(s) * min(s)) = 1 (AutoAWQ's choice:
    the scale is centred in log space, so neither X nor W drifts far from its own range)."""
    m = np.asarray(mean_abs, dtype=np.float64)
    floor = max(float(m.max()) * _MIN_RATIO, 1e-12)
    s = np.maximum(m, floor) ** alpha
    return (s / np.sqrt(s.max() * s.min())).astype(np.float32)


def search(
    rows: np.ndarray, mean_abs: np.ndarray, weights: list[np.ndarray], block_size: int, alphas: list[float]
) -> AwqResult:
    """The best alpha for `weights` ([K, N] each) on activation `rows` (R, K)."""
    x = rows.astype(np.float32)
    assert x.ndim == 2 and all(w.shape[0] == x.shape[1] for w in weights), (x.shape, [w.shape for w in weights])
    ws = [w.astype(np.float32) for w in weights]
    refs = [x @ w for w in ws]  # (R, N) per layer
    best: AwqResult | None = None
    error_rtn = float("nan")
    for alpha in sorted({0.0, *alphas}):  # ascending: a tie keeps the smaller alpha
        s = awq_scale(mean_abs, alpha)
        xs = x / s
        err = sum(_sq_error(xs, w * s[:, None], ref, block_size) for w, ref in zip(ws, refs))
        if alpha == 0.0:
            error_rtn = err
        if best is None or err < best.error:
            best = AwqResult(alpha, s, error_rtn, err)
    assert best is not None
    return AwqResult(best.alpha, best.scale, error_rtn, best.error)


def _sq_error(x: np.ndarray, w: np.ndarray, ref: np.ndarray, block_size: int) -> float:
    """|| x Q(w) - ref ||^2."""
    return float(np.sum((x @ int4_round_trip(w, block_size) - ref) ** 2))
