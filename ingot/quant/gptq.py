"""GPTQ rounding (Frantar et al., 2022): INT4 weights rounded one input row at a time, each
row's rounding error pushed onto the rows not yet rounded, so that the layer's output error
on the calibration activations X stays small, not each weight's own error.

For a weight W [K, N] read as X W, the output error of a rounding Q is

    || X W - X Q ||^2 = tr((W - Q)^T H (W - Q)),   H = X^T X  (K, K)

(calibrate.py sums H over the rows scaled to unit norm, so that each token weighs the same).
Rounding row k leaves an error e_k = w_k - q_k; the rows j not yet rounded absorb it
optimally as w_j -= e_k (H^-1)_kj / (H^-1)_kk. With U the upper Cholesky factor of H^-1
(H^-1 = U^T U) this is w_j -= U_kj (e_k / U_kk), and U is all the pass needs: computed once
per activation (every layer that reads X shares it). Rows go block by block: inside a block
the updates are immediate, the rows after it get the block's errors in one matmul (the
"lazy batch" update). Each (block, output channel) scale is max|w| / 7 of the block as the
pass reaches it (after the earlier blocks' updates), the symmetric form that
`primitives.int4_quantize` stores, so the result is the same kind of int4 + scale.

Act-order (`order`): rows go by decreasing H_kk, the channels X uses most first, while the
most rows are left to absorb their errors. Rows of one scale block are then spread over the
pass, so the scales are fixed first, from W's blocks as they are ("static groups").

With H = I, U = I and nothing moves: GPTQ is exactly round-to-nearest.

Channels X never used on the calibration rows (H_kk = 0: zero padding, dead channels) get
H_kk = 1 and nothing else: their rows are rounded to nearest, and move no other row.
`damp` adds damp * mean(diag H) to the diagonal (the paper's 1%), which keeps H invertible
and limits how far errors travel between channels X barely separates.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

from ingot.quant.primitives import INT4_MAX, INT4_MIN, padded_k


def act_order(h: np.ndarray, block_size: int) -> np.ndarray:
    """(K',) the padded channels by decreasing H_kk (the padding last): the act-order."""
    diag = np.zeros(padded_k(h.shape[0], block_size))
    diag[: h.shape[0]] = np.diag(h)
    return np.argsort(-diag, kind="stable")


def inverse_cholesky(h: np.ndarray, block_size: int, damp: float, order: np.ndarray | None = None) -> np.ndarray:
    """(K', K') float32 U, upper triangular, U^T U = (H + damp * mean(diag H) I)^-1, for the
    Gram matrix `h` (K, K) of X, zero-padded to whole blocks (K'), channels in `order` if given."""
    k = h.shape[0]
    kp = padded_k(k, block_size)
    hp = np.zeros((kp, kp), np.float64)
    hp[:k, :k] = h
    diag = np.einsum("ii->i", hp)  # a view: writes go to hp
    dead = diag <= 0
    hp[dead, :] = 0.0
    hp[:, dead] = 0.0
    diag[dead] = 1.0
    live = diag[~dead]
    diag += damp * (float(live.mean()) if live.size else 1.0)
    if order is not None:
        hp = hp[np.ix_(order, order)]
    # H^-1 = U^T U with U upper: the lower Cholesky factor of H^-1 is U^T
    inv = np.linalg.inv(hp)
    return np.linalg.cholesky((inv + inv.T) / 2).T.astype(np.float32)


def gptq_quantize(
    w: np.ndarray, u: np.ndarray, block_size: int, order: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """[K, N] float weight → (q [K', N] ml_dtypes.int4, scale [K'/bs, N] in w's dtype), as
    `primitives.int4_quantize` returns them, rounded by GPTQ under U (`inverse_cholesky`).

    With `order` (act-order; U computed in that order) the scales are fixed first (static groups)."""
    k, n = w.shape
    kp = u.shape[0]
    assert kp == padded_k(k, block_size), (w.shape, u.shape, block_size)
    work = np.zeros((kp, n), np.float32)  # W as the pass updates it
    work[:k] = w
    q = np.empty((kp, n), np.float32)
    static = order is not None
    scale = _block_scale(work.reshape(-1, block_size, n), w.dtype) if static else np.empty((kp // block_size, n), np.float32)
    order = np.arange(kp) if order is None else order
    work = work[order]
    for b, r0 in enumerate(range(0, kp, block_size)):
        r1 = r0 + block_size
        if not static:
            scale[b] = _block_scale(work[r0:r1], w.dtype)
        err = _round_block(work[r0:r1], q[r0:r1], u[r0:r1, r0:r1], scale[order[r0:r1] // block_size])
        work[r1:] -= u[r0:r1, r1:].T @ err  # the block's errors, onto every later row at once
    out = np.empty_like(q)
    out[order] = q
    return out.astype(ml_dtypes.int4), scale.astype(w.dtype)


def _block_scale(block: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """(.., N) max|w| / 7 per output channel over axis -2, 1 where all zero, as stored in
    `dtype` (as primitives does)."""
    amax = np.abs(block).max(axis=-2) / INT4_MAX
    return np.where(amax > 0, amax, 1.0).astype(np.float32).astype(dtype).astype(np.float32)


def _round_block(block: np.ndarray, q: np.ndarray, u: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Round `block` (bs, N) into `q` row by row under `scale` (bs, N), updating its later rows
    in place; returns the (bs, N) scaled errors e_k / U_kk for the rows after the block."""
    err = np.empty_like(block)
    for i in range(block.shape[0]):
        q[i] = np.clip(np.round(block[i] / scale[i]), INT4_MIN, INT4_MAX)
        err[i] = (block[i] - q[i] * scale[i]) / u[i, i]
        block[i + 1 :] -= np.outer(u[i, i + 1 :], err[i])
    return err
