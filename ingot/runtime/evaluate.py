"""Accuracy measures over plans: perplexity for causal LMs, agreement between two plans.

Used by `ingot eval` and by the build's quantization gate (which compares the quantized plan
with the unquantized one), so both report the same numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
from pydantic import BaseModel

Run = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]
Progress = Callable[[int, int], None]  # (done, total)


class Perplexity(BaseModel):
    perplexity: float
    tokens: int  # predicted tokens (window - 1 per window)
    windows: int


def windows(ids: np.ndarray, window: int) -> list[np.ndarray]:
    """Non-overlapping windows of `window` tokens (a shorter tail is dropped if under 2 tokens)."""
    assert window >= 2
    out = [ids[i : i + window] for i in range(0, len(ids), window)]
    return [w for w in out if len(w) >= 2]


def batches(wins: list[np.ndarray], batch: int) -> Iterator[np.ndarray]:
    """Windows of equal length, `batch` at a time, as (batch, window) int64."""
    by_len: dict[int, list[np.ndarray]] = {}
    for w in wins:
        by_len.setdefault(len(w), []).append(w)
    for group in by_len.values():
        for i in range(0, len(group), batch):
            yield np.stack(group[i : i + batch]).astype(np.int64)


def feeds_for(ids: np.ndarray, input_names: list[str]) -> dict[str, np.ndarray]:
    """Causal-LM feeds for full (unpadded) rows."""
    feeds = {"input_ids": ids}
    if "attention_mask" in input_names:
        feeds["attention_mask"] = np.ones_like(ids)
    return feeds


def log_softmax(x: np.ndarray) -> np.ndarray:
    """(..., vocab) logits → float64 log-probabilities (perplexity, and the sampler's logprobs)."""
    x = x.astype(np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def token_nll(logits: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """-log p(ids[t+1] | ids[..t]) for each position: (batch, window - 1).

    Row by row: a float64 log-softmax over (window, vocab) is ~100 MB for a 49k vocab, over
    the whole batch it would be the batch times that."""
    out = np.empty((ids.shape[0], ids.shape[1] - 1))
    for row in range(ids.shape[0]):
        lp = log_softmax(logits[row, :-1])
        out[row] = -np.take_along_axis(lp, ids[row, 1:, None], axis=-1)[:, 0]
    return out


def perplexity(
    run: Run, input_names: list[str], ids: np.ndarray, window: int, batch: int = 4, progress: Progress | None = None,
) -> Perplexity:
    """`progress(windows done, windows)` is called before the first batch and after each."""
    wins = windows(ids, window)
    if not wins:
        raise ValueError(f"the text has {len(ids)} tokens; perplexity needs at least 2")
    total, count, done = 0.0, 0, 0
    if progress:
        progress(0, len(wins))
    for rows in batches(wins, batch):
        nll = token_nll(run(feeds_for(rows, input_names))["logits"], rows)
        total, count, done = total + float(nll.sum()), count + nll.size, done + len(rows)
        if progress:
            progress(done, len(wins))
    return Perplexity(perplexity=float(np.exp(total / count)), tokens=count, windows=len(wins))


def masked(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Rows of `a` and `b` that `mask` (e.g. the attention mask, (batch, sequence)) marks, when it
    matches their leading dims: padded positions carry no meaning and would skew a mean."""
    if mask is not None and a.shape[: mask.ndim] == mask.shape and a.ndim > mask.ndim:
        keep = mask.astype(bool)
        return a[keep], b[keep]
    return a, b


def top1_agreement(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Share of positions (all but the last axis) where two logit tensors pick the same class."""
    a, b = masked(a, b, mask)
    return float((a.argmax(-1) == b.argmax(-1)).mean())


def mean_cosine(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean cosine similarity between matching rows (last axis) of two tensors (`mask`: see `masked`)."""
    a, b = masked(a, b, mask)
    a, b = a.reshape(-1, a.shape[-1]).astype(np.float64), b.reshape(-1, b.shape[-1]).astype(np.float64)
    num = (a * b).sum(-1)
    den = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    return float(np.mean(num / np.maximum(den, 1e-12)))
