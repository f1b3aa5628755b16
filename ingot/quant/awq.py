"""AWQ's scale search (Lin et al., 2023), for the layers that share one activation X.

Channels of X with large mean |x| matter most. Scaling W's row k by s_k > 1 before INT4
rounding (and X's channel k by 1/s_k, which keeps X W unchanged in exact arithmetic) gives
those rows finer steps relative to their values. s = mean|X|^alpha, with alpha picked on the
calibration rows by the output error of the whole group:

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
    """s = mean|X|^alpha, normalized so that sqrt(max(s) * min(s)) = 1 (AutoAWQ's choice: the
    scale is centred in log space, so neither X nor W drifts far from its own range)."""
    s = _floored(mean_abs) ** alpha
    return (s / np.sqrt(s.max() * s.min())).astype(np.float32)


def unit_rows(rows: np.ndarray) -> np.ndarray:
    """Calibration rows (R, K) scaled to unit norm, so that each token weighs the same in the
    errors below: raw rows let a few massive-activation tokens (Llama's attention sinks) rule
    the sums, and held-out perplexity was worse with them (`git show 954c8cb:BENCHMARKS.md`, Quantization)."""
    x = rows.astype(np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-30)


def _floored(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    return np.maximum(m, max(float(m.max()) * _MIN_RATIO, 1e-12))


def search(
    rows: np.ndarray, mean_abs: np.ndarray, weights: list[np.ndarray], block_size: int, alphas: list[float]
) -> AwqResult:
    """The best alpha for `weights` ([K, N] each) on activation `rows` (R, K)."""
    x = rows.astype(np.float32)
    assert x.ndim == 2 and all(w.shape[0] == x.shape[1] for w in weights), (x.shape, [w.shape for w in weights])
    w = np.concatenate([w.astype(np.float32) for w in weights], axis=1)  # (K, N): the group's columns
    alphas = sorted({0.0, *alphas})  # alpha 0 (s = 1, RTN) first: a tie keeps the plainer choice
    scales = [awq_scale(mean_abs, alpha) for alpha in alphas]
    errors = np.concatenate([_errors(x, w, chunk, block_size) for chunk in _chunks(scales, max(x.shape) * w.shape[1])])
    best = int(np.argmin(errors))  # the first of equals
    return AwqResult(alphas[best], scales[best], float(errors[0]), float(errors[best]))


def _errors(x: np.ndarray, w: np.ndarray, scales: list[np.ndarray], block_size: int) -> np.ndarray:
    """(S,) || X W - (X / s) Q(W * s) ||^2 per scale s, computed as || X (W - Q(W * s) / s) ||^2
    with every candidate's weight error side by side: one matmul (R, K) @ (K, S * N)."""
    (k, n), s = w.shape, np.stack(scales, axis=1)[:, :, None]  # s: (K, S, 1)
    q = int4_round_trip((w[:, None, :] * s).reshape(k, -1), block_size).reshape(k, len(scales), n)
    d = np.subtract(w[:, None, :], np.divide(q, s, out=q), out=q)  # in place: (K, S, N) is large
    out = (x @ d.reshape(k, -1)).reshape(x.shape[0], len(scales), n)
    return np.einsum("rsn,rsn->s", out, out, dtype=np.float64)


def _chunks(scales: list[np.ndarray], per_scale: int, budget: int = 1 << 24) -> list[list[np.ndarray]]:
    """`scales` in runs of at most `budget` floats per (rows or K) x (S * N) array."""
    size = max(1, budget // max(per_scale, 1))
    return [scales[i : i + size] for i in range(0, len(scales), size)]
