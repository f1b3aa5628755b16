"""Sampling: the per-request `SamplingParams` (validated at the edge) and the batched `Sampler`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ingot.runtime.evaluate import log_softmax

# Below this temperature a request is greedy: dividing logits by ~0 would overflow.
GREEDY_EPS = 1e-5
# Most alternatives a request may ask logprobs for (OpenAI's top_logprobs limit, vLLM's max_logprobs).
MAX_LOGPROBS = 20


class SamplingParams(BaseModel):
    """How to pick tokens for one request. Names and defaults follow vLLM's SamplingParams."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    temperature: float = Field(1.0, ge=0, description="0 = greedy (argmax)")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus mass; 1 = off")
    top_k: int = Field(0, ge=0, description="keep the k most likely tokens; 0 (or vLLM's -1) = off")
    seed: int | None = Field(None, description="per-request seed: same seed, same tokens, whatever the batch")
    max_tokens: int = Field(16, ge=1, description="output tokens at most")
    stop: tuple[str, ...] = Field((), description="stop strings; the output is cut before the first match")
    stop_token_ids: tuple[int, ...] = Field((), description="token ids that finish the request (kept in output)")
    ignore_eos: bool = Field(False, description="keep generating past the EOS token")
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS,
                                 description="None = off; k = each output token's logprob and the k most likely "
                                             "tokens' (the model's raw distribution, before temperature/top-k/top-p)")

    @field_validator("top_k", mode="before")
    @classmethod
    def _minus_one_is_off(cls, value):
        return 0 if value == -1 else value

    @field_validator("stop", mode="before")
    @classmethod
    def _one_stop_string(cls, value):
        return (value,) if isinstance(value, str) else value

    @field_validator("stop")
    @classmethod
    def _no_empty_stop(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if any(not s for s in value):
            raise ValueError("stop strings must not be empty")
        return value

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_EPS


class Sampler:
    """Logits → one token id per sequence (and, for the requests that ask, logprobs).

    Greedy rows take the argmax. The others apply temperature, then top-k, then top-p on
    the sorted distribution, and invert its CDF with one uniform draw from the row's own
    generator, so a seeded request draws the same tokens alone or in any batch.
    """

    def __call__(
        self,
        logits: np.ndarray,
        params: Sequence[SamplingParams],
        generators: Sequence[np.random.Generator],
    ) -> np.ndarray:
        """(num_seqs, vocab) float32 logits → (num_seqs,) int64 token ids."""
        assert logits.ndim == 2 and len(params) == len(generators) == logits.shape[0], logits.shape
        tokens = np.argmax(logits, axis=-1).astype(np.int64)
        rows = np.array([not p.greedy for p in params], dtype=bool)
        if rows.any():
            picked = [p for p, r in zip(params, rows) if r]
            draws = np.array([g.random() for g, r in zip(generators, rows) if r])
            tokens[rows] = sample_rows(logits[rows], picked, draws)
        return tokens

    def logprobs(self, logits: np.ndarray, params: Sequence[SamplingParams],
                 token_ids: np.ndarray) -> list[SampleLogprobs | None]:
        """Per row, None or (when its params ask) the sampled token's logprob and the top
        `params.logprobs`, from log_softmax of the raw `logits` (vLLM V1's default "raw_logprobs":
        the model's distribution, not the one temperature, top-k and top-p sampled from). Rows
        that do not ask cost nothing."""
        rows = [i for i, p in enumerate(params) if p.logprobs is not None]
        out: list[SampleLogprobs | None] = [None] * len(params)
        if not rows:
            return out
        lp = log_softmax(logits[rows])  # (asking rows, vocab)
        k = max(params[i].logprobs for i in rows)
        top = _ranked_order(lp, k) if k else np.zeros((len(rows), 0), dtype=np.int64)  # (asking rows, k)
        top_lp = np.take_along_axis(lp, top, axis=-1)
        for j, i in enumerate(rows):
            n, token = params[i].logprobs, int(token_ids[i])
            out[i] = SampleLogprobs(token, float(lp[j, token]), tuple(top[j, :n].tolist()),
                                    tuple(top_lp[j, :n].tolist()))
        return out


@dataclass(frozen=True)
class SampleLogprobs:
    """Log-probabilities at one sampled position: the sampled token's, and the top-k (most likely first, ties by
    lower id)."""

    token_id: int
    logprob: float
    top_ids: tuple[int, ...]
    top_logprobs: tuple[float, ...]


def sample_rows(logits: np.ndarray, params: Sequence[SamplingParams], draws: np.ndarray) -> np.ndarray:
    """Temperature → top-k → top-p → inverse CDF at `draws` (num_rows,) uniforms in [0, 1).

    Only the ranks that can be kept are sorted: the top k when every row has a top-k and no
    top-p, none when no row has either (the CDF is then taken in vocabulary order, which
    samples the same distribution): a full sort of a 49k vocabulary is a large share of a small
    model's decode step.
    """
    temperature = np.array([p.temperature for p in params])[:, None]
    scaled = logits.astype(np.float64) / temperature  # (rows, vocab)
    top_k = np.array([p.top_k for p in params])
    top_p = np.array([p.top_p for p in params])
    if np.all(top_k == 0) and np.all(top_p >= 1.0):
        return _inverse_cdf(np.exp(scaled - scaled.max(axis=-1, keepdims=True)), draws)
    order = _ranked_order(scaled, int(top_k.max()) if np.all(top_k > 0) and np.all(top_p >= 1.0) else 0)
    ranked = np.take_along_axis(scaled, order, axis=-1)
    ranked = top_k_mask(ranked, top_k)
    probs = np.exp(ranked - ranked[:, :1])  # the first entry is the max and always kept
    probs /= probs.sum(axis=-1, keepdims=True)
    probs = top_p_mask(probs, top_p)
    return np.take_along_axis(order, _inverse_cdf(probs, draws)[:, None], axis=-1)[:, 0]


def _ranked_order(scaled: np.ndarray, keep: int) -> np.ndarray:
    """Token ids by decreasing logit (ties by lower id, like argmax): all of them, or the first
    `keep` when keep > 0."""
    if 0 < keep < scaled.shape[-1]:
        top = np.argpartition(-scaled, keep - 1, axis=-1)[:, :keep]
        top.sort(axis=-1)  # ids ascending, so the stable sort below breaks ties by lower id
        return np.take_along_axis(top, np.argsort(-np.take_along_axis(scaled, top, axis=-1), axis=-1, kind="stable"), axis=-1)
    return np.argsort(-scaled, axis=-1, kind="stable")


def _inverse_cdf(weights: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """Per row, the first index whose cumulative weight exceeds draw * total: never a
    zero-weight (masked) index."""
    cdf = np.cumsum(weights, axis=-1)
    return np.sum(cdf <= draws[:, None] * cdf[:, -1:], axis=-1)


def top_k_mask(ranked: np.ndarray, top_k: np.ndarray) -> np.ndarray:
    """Set ranks ≥ k to -inf in (rows, vocab) logits sorted high to low; k = 0 keeps all."""
    k = np.where(top_k > 0, top_k, ranked.shape[-1])[:, None]
    return np.where(np.arange(ranked.shape[-1]) < k, ranked, -np.inf)


def top_p_mask(probs: np.ndarray, top_p: np.ndarray) -> np.ndarray:
    """Zero the tail past the smallest prefix of sorted `probs` whose mass reaches top_p."""
    mass_before = np.cumsum(probs, axis=-1) - probs  # exclusive cumsum: the first rank is always kept
    return np.where(mass_before < top_p[:, None], probs, 0.0)
