"""A paged plan seen as a dense causal LM: `{input_ids, attention_mask} [B, S] -> logits [B, S, V]`.

Each row's unmasked tokens are one sequence prefilled from scratch (positions 0..n-1), all
rows in one packed step (one plan call per row length); masked positions get zero logits. This is what `Model.run`,
perplexity and the build's verification and accuracy gate use on a paged bundle.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ingot.plans import llm as names
from ingot.plans.llm import LLMInfo, blocks_needed
from ingot.runtime.llm.batch import PackedBatch, pack
from ingot.runtime.llm.cpu_lowering import plan_calls, plan_feeds, run_calls, select, window_feeds

Run = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


def paged_feeds(info: LLMInfo, input_ids: np.ndarray, attention_mask: np.ndarray | None = None) -> list[dict[str, np.ndarray]]:
    """The plan's feeds, one per plan call, that prefill each row's unmasked tokens, every row's logits wanted."""
    batch = _packed(info, input_ids, attention_mask)
    return [_feeds(sub, info) for sub, _ in (select(batch, s) for s in plan_calls(batch, info.max_num_tokens))]


def dense_logits(run: Run, info: LLMInfo, input_ids: np.ndarray, attention_mask: np.ndarray | None = None) -> np.ndarray:
    mask = np.ones_like(input_ids, dtype=bool) if attention_mask is None else attention_mask.astype(bool)
    out = np.zeros((*input_ids.shape, info.vocab_size), np.float32)
    if mask.any():
        rows, cols = np.nonzero(mask)  # row-major: the packed order
        batch = _packed(info, input_ids, mask)
        out[rows, cols] = run_calls(batch, lambda sub: run(_feeds(sub, info))[names.LOGITS], info.max_num_tokens)
    return out


def _feeds(batch: PackedBatch, info: LLMInfo) -> dict[str, np.ndarray]:
    return plan_feeds(batch) | window_feeds(batch, info, None)  # no past: nothing gathered


def _packed(info: LLMInfo, input_ids: np.ndarray, attention_mask: np.ndarray | None) -> PackedBatch:
    rows = [r for r in _rows(input_ids, attention_mask) if len(r)]
    assert rows, "every row is masked"
    blocks = [list(range(blocks_needed(len(r), info.kv_block_size))) for r in rows]  # never read: no past
    return pack(rows, [0] * len(rows), blocks, info.kv_block_size, [range(len(r)) for r in rows])


def _rows(input_ids: np.ndarray, attention_mask: np.ndarray | None) -> list[np.ndarray]:
    if attention_mask is None:
        return list(input_ids)
    return [ids[m.astype(bool)] for ids, m in zip(input_ids, attention_mask)]


def dense_runner(run: Run, info: LLMInfo) -> Run:
    """`run` over a paged plan, wrapped to take and give the dense causal-LM tensors."""

    def dense(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {names.LOGITS: dense_logits(run, info, feeds["input_ids"], feeds.get("attention_mask"))}

    return dense
