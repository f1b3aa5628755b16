"""A paged sm plan seen as a dense causal LM: `{input_ids, attention_mask} [B, S] -> logits [B, S, V]`,
what `Model.run` and perplexity (`ingot eval`) use, as ingot.runtime.llm.dense does for cpu targets.

Each row's unmasked tokens are prefilled from scratch in chunks of at most as many tokens as the
runner returns logits rows for (a chunk after the first reads the row's past from the pool), every
row's logits wanted. The rows reuse the same blocks of a pool of one max_model_len sequence, one
row after another; no CUDA graphs (no decodes).
"""

from __future__ import annotations

import numpy as np

from ingot.plans import llm as names
from ingot.plans.llm import blocks_needed
from ingot.runtime.errors import InputError
from ingot.runtime.model import Model
from ingot.runtime.trt.bindings import prefill_chunks
from ingot.runtime.trt.pool import PADDING_BLOCKS, block_bytes
from ingot.runtime.trt.runner import TrtRunner

DENSE_ROWS = 512  # logits rows of one call at most: 512 x vocab float32 on the GPU and in pinned memory


class DenseRunner:
    def __init__(self, model: Model):
        info = model.manifest.llm
        assert info is not None, model.manifest.model.id
        itemsize = model.backend.engine.tensors[names.key_cache(0)].dtype.itemsize
        one_sequence = blocks_needed(info.max_model_len, info.kv_block_size) + PADDING_BLOCKS
        self.info = info
        self.runner = TrtRunner(model, one_sequence * block_bytes(info, itemsize), cuda_graphs=False,
                                logits_rows=min(info.max_num_tokens, DENSE_ROWS))

    def __call__(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        input_ids = feeds[names.INPUT_IDS]
        mask = feeds.get("attention_mask")
        mask = np.ones_like(input_ids, dtype=bool) if mask is None else mask.astype(bool)
        out = np.zeros((*input_ids.shape, self.info.vocab_size), np.float32)
        for b in range(input_ids.shape[0]):
            cols = np.flatnonzero(mask[b])
            if len(cols):
                out[b, cols] = self.row(input_ids[b, cols])
        return {names.LOGITS: out}

    def row(self, ids: np.ndarray) -> np.ndarray:
        """float32 logits [n, vocab] of one sequence of `ids`, prefilled from scratch."""
        info, n = self.info, len(ids)
        if n > info.max_model_len:
            raise InputError(f"a row of {n} tokens is longer than the plan's max_model_len {info.max_model_len}")
        chunk = min(self.runner.logits_rows, info.max_num_tokens)
        return np.concatenate([self.runner.forward(batch) for batch in prefill_chunks(ids, chunk, info.kv_block_size)])
