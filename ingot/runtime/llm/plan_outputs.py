"""`PlanOutputs`: reused arrays the paged plan writes its outputs into (ONNX Runtime IOBinding).

Two reasons. The cpu lowering's windows (each sequence's past blocks, gathered per layer and
k|v): ONNX Runtime's GroupQueryAttention appends the new rows to its past in place only when
its past and present are one buffer (share-buffer mode), and otherwise copies the whole past
every call; so `window.L.key` and `window.L.key.present` are views of one array. And the cost of
a call's outputs: binding fresh outputs and wrapping them back costs ~1.3 ms a call for 181
outputs, 15% of a one-sequence decode; arrays bound once per shape cost nothing after that.

Each kind of output has one flat array per name, grown (by half again at least) to the largest
call seen and reused, so its pages are touched once; the views for a shape are cached, so a
call of a shape seen before binds nothing new.
"""

from __future__ import annotations

import numpy as np

from ingot.plans import llm as names
from ingot.plans.llm import LLMInfo


class _Arrays:
    """One reused flat float32 array per name, viewed as the shape a call needs; `aliases` name a
    second view of the same memory, in a second shape of the same size."""

    def __init__(self, names: list[str], aliases: dict[str, str] | None = None):
        self.names, self.aliases, self.capacity = names, aliases or {}, 0
        self.flat: dict[str, np.ndarray] = {}
        self.views: dict[tuple, dict[str, np.ndarray]] = {}

    def get(self, shape: tuple[int, ...], alias_shape: tuple[int, ...] | None = None) -> dict[str, np.ndarray]:
        key = (shape, alias_shape)
        if key not in self.views:
            size = int(np.prod(shape))
            if size > self.capacity:
                self.capacity = max(size, self.capacity * 3 // 2)
                self.flat = {name: np.empty(self.capacity, np.float32) for name in self.names}
                self.views.clear()  # views of the old arrays would keep them alive
            if len(self.views) > 64:
                self.views.clear()
            views = {}
            for name, flat in self.flat.items():
                views[name] = flat[:size].reshape(shape)
                if name in self.aliases:
                    views[self.aliases[name]] = flat[:size].reshape(alias_shape)
            self.views[key] = views
        return self.views[key]


class PlanOutputs:
    def __init__(self, info: LLMInfo):
        self.info = info
        layers = range(info.num_layers)
        self._logits = _Arrays([names.LOGITS])
        self._rows = _Arrays([f(layer) for layer in layers for f in (names.present_key, names.present_value)])
        windows = {names.window(layer, kv): names.window_present(layer, kv) for layer in layers for kv in ("key", "value")}
        self._windows = _Arrays(list(windows), aliases=windows)  # the gathered blocks, and the kernel's present

    def buffers(self, num_logits: int, num_tokens: int, num_seqs: int, num_blocks: int) -> dict[str, np.ndarray]:
        """Output name -> array for a plan call of `num_tokens` new tokens, `num_logits` logits rows,
        and attn.past_blocks [num_seqs, num_blocks]. The arrays are overwritten by the next call."""
        info, kv, block = self.info, self.info.num_kv_heads, self.info.kv_block_size
        return (self._logits.get((num_logits, info.vocab_size))
                | self._rows.get((num_tokens, kv, info.head_dim))
                | self._windows.get((num_seqs, kv, num_blocks, block * info.head_dim),
                                    (num_seqs, kv, num_blocks * block, info.head_dim)))
