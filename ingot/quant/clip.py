"""Weight clipping for INT4 (AutoAWQ's auto_clip): a smaller range, finer steps.

A block's scale is max|w| / 7, so one large weight coarsens the steps of all the others.
Clipping the block to ±r·max|w| (r < 1) trades a clipped outlier for finer rounding. Per
(block, output channel), r is picked from `ratios` by the output error of that block on
the calibration rows:

    err_bn(r) = || X_b (w_bn - Q(clip(w_bn, r))) ||^2 = d^T H_bb d,   H_bb = X_b^T X_b

(X_b: X's channels in block b; cross-block terms are ignored, as AutoAWQ does). The whole
layer's output error on the rows is then checked against no clipping: r = 1 everywhere is
kept if the choice is not better, so clipping is never worse than RTN on the calibration rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ingot.quant.primitives import INT4_MAX, int4_round_trip, padded_k


@dataclass(frozen=True)
class ClipResult:
    weight: np.ndarray  # [K, N] clipped w, to be RTN-quantized (its block max is r * max|w|)
    ratio: np.ndarray  # (K'/bs, N) chosen r per (block, output channel); all 1.0 if rejected
    error_before: float  # || X w - X Q(w) ||^2
    error: float  # || X w - X Q(weight) ||^2 <= error_before


def clip_ratios(lowest: float, steps: int) -> list[float]:
    """`steps` ratios from 1.0 down to `lowest`, evenly spaced (1.0 is always first)."""
    return [1.0] if steps <= 1 else [float(r) for r in np.linspace(1.0, lowest, steps)]


def search_clip(w: np.ndarray, rows: np.ndarray, block_size: int, ratios: list[float]) -> ClipResult:
    """The per-(block, channel) clip of `w` [K, N] minimizing its block output error on
    activation `rows` (R, K)."""
    k, n = w.shape
    assert rows.ndim == 2 and rows.shape[1] == k and ratios[0] == 1.0, (rows.shape, w.shape, ratios)
    kp = padded_k(k, block_size)
    wp = np.zeros((kp, n), np.float32)
    wp[:k] = w
    xp = np.zeros((rows.shape[0], kp), np.float32)
    xp[:, :k] = rows
    blocks = wp.reshape(kp // block_size, block_size, n)  # (B, bs, N)
    best_r = _block_ratios(blocks, _block_grams(xp, block_size), np.asarray(ratios, np.float32))
    clipped = _clip(blocks, best_r).reshape(kp, n)[:k]
    before = _error(rows, w, int4_round_trip(w, block_size))
    after = _error(rows, w, int4_round_trip(clipped, block_size))
    if after >= before:
        return ClipResult(w, np.ones_like(best_r), before, before)
    return ClipResult(clipped.astype(w.dtype), best_r, before, after)


def _block_grams(x: np.ndarray, block_size: int) -> np.ndarray:
    """(B, bs, bs) H_bb = X_b^T X_b per block of input channels, from rows x (R, K')."""
    xb = x.reshape(x.shape[0], -1, block_size).transpose(1, 0, 2)  # (B, R, bs)
    return np.matmul(xb.transpose(0, 2, 1), xb)


def _block_ratios(blocks: np.ndarray, grams: np.ndarray, ratios: np.ndarray) -> np.ndarray:
    """(B, N) best ratio per (block, channel) of `blocks` (B, bs, N) under `grams` (B, bs, bs),
    every ratio at once: err = d^T H_bb d for d = w - Q(clip(w, r)), d of shape (B, bs, C, N)."""
    (nb, bs, n), c = blocks.shape, len(ratios)
    bound = np.abs(blocks).max(axis=1)[:, None, None, :] * ratios[None, None, :, None]  # (B, 1, C, N)
    scale = np.where(bound > 0, bound / INT4_MAX, 1.0)  # what int4_quantize derives from the clipped block
    w = blocks[:, :, None, :]
    # Q(clip(w, ±bound)) = clip(round(w / scale), -7, 7) * scale, as bound / scale = 7; in place (large)
    d = np.divide(w, scale)
    np.clip(np.round(d, out=d), -INT4_MAX, INT4_MAX, out=d)
    d = np.subtract(w, np.multiply(d, scale, out=d), out=d).reshape(nb, bs, c * n)
    err = np.sum(np.multiply(d, np.matmul(grams, d)), axis=1).reshape(nb, c, n)  # one (bs, bs) @ (bs, C * N) per block
    return ratios[np.argmin(err, axis=1)]  # the first of equals: 1.0 keeps no clipping


def _clip(blocks: np.ndarray, ratio: np.ndarray) -> np.ndarray:
    """`blocks` (B, bs, N) clipped to ±ratio * max|w| per (block, channel)."""
    bound = (np.abs(blocks).max(axis=1) * ratio)[:, None, :]
    return np.clip(blocks, -bound, bound)


def _error(rows: np.ndarray, w: np.ndarray, q: np.ndarray) -> float:
    """|| X w - X q ||^2."""
    out = rows.astype(np.float32) @ (w.astype(np.float32) - q)
    return float(np.einsum("rn,rn->", out, out, dtype=np.float64))
