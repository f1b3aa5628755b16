"""Scratch for the cpu lowering's windows: each sequence's past blocks, gathered per layer and k|v.

ONNX Runtime's GroupQueryAttention appends the new rows to its past in place only when its past
and present are one buffer (share-buffer mode); otherwise it copies the whole past every call.
So the runtime binds `window.L.key` (the gathered blocks) and `window.L.key.present` to one
array from here. The arrays grow to the largest step seen and are reused, so their pages are
touched once.
"""

from __future__ import annotations

import numpy as np

from ingot.plans import llm as names
from ingot.plans.llm import LLMInfo


class Windows:
    def __init__(self, info: LLMInfo):
        self.info = info
        self._flat: dict[tuple[int, str], np.ndarray] = {}
        self._capacity = 0
        self._views: dict[tuple[int, int], dict[str, np.ndarray]] = {}

    def buffers(self, num_seqs: int, num_blocks: int) -> dict[str, np.ndarray]:
        """Output name -> array for a plan call whose attn.past_blocks is [num_seqs, num_blocks]."""
        key = (num_seqs, num_blocks)
        if key not in self._views:
            if len(self._views) > 64:
                self._views.clear()
            self._views[key] = self._make(num_seqs, num_blocks)
        return self._views[key]

    def _make(self, num_seqs: int, num_blocks: int) -> dict[str, np.ndarray]:
        info = self.info
        gathered = (num_seqs, info.num_kv_heads, num_blocks, info.kv_block_size * info.head_dim)
        present = (num_seqs, info.num_kv_heads, num_blocks * info.kv_block_size, info.head_dim)
        size = int(np.prod(gathered))
        if self._capacity < size:  # grow by half again at least: a decode wave adds a block every block_size steps
            self._capacity = max(size, self._capacity * 3 // 2)
            self._views.clear()  # views of the old arrays would keep them alive
            self._flat = {(layer, kv): np.empty(self._capacity, np.float32)
                          for layer in range(info.num_layers) for kv in ("key", "value")}
        views = {}
        for (layer, kv), flat in self._flat.items():
            views[names.window(layer, kv)] = flat[:size].reshape(gathered)
            views[names.window_present(layer, kv)] = flat[:size].reshape(present)
        return views
