"""`PlanOutputs`: reused arrays the paged plan writes its logits and new K/V rows into (ONNX Runtime IOBinding).

Binding fresh outputs and wrapping them back costs ~1.3 ms a call for 181 outputs, 15% of a
one-sequence decode; arrays bound once per shape cost nothing after that. (The windows and the
kernel's presents are bound to the runner's window arrays: ingot.runtime.llm.windows.)

Each kind of output has one flat array per name, grown (by half again at least) to the largest
call seen and reused, so its pages are touched once; the views for a shape are cached, so a
call of a shape seen before binds nothing new.
"""

from __future__ import annotations

import numpy as np

from ingot.plans import llm as names
from ingot.plans.llm import LLMInfo
from ingot.runtime.llm.pages import populated


class ReusedArrays:
    """One reused flat float32 array per name, viewed as the shape a call needs; remapped (to
    `growth` times its size at least) only when a shape does not fit."""

    def __init__(self, names: list[str], growth: float = 1.5):
        self.names, self.capacity, self.growth = names, 0, growth
        self.flat: dict[str, np.ndarray] = {}
        self.views: dict[tuple, dict[str, np.ndarray]] = {}

    def get(self, shape: tuple[int, ...]) -> dict[str, np.ndarray]:
        if shape not in self.views:
            size = int(np.prod(shape))
            if size > self.capacity or not self.flat:  # a first call may want none (a chunk without logits)
                self.capacity = max(size, int(self.capacity * self.growth), 1)
                self.flat = {name: populated((self.capacity,)) for name in self.names}
                self.views.clear()  # views of the old arrays would keep them alive
            if len(self.views) > 64:
                self.views.clear()
            self.views[shape] = {name: flat[:size].reshape(shape) for name, flat in self.flat.items()}
        return self.views[shape]


class PlanOutputs:
    def __init__(self, info: LLMInfo):
        self.info = info
        layers = range(info.num_layers)
        self._logits = ReusedArrays([names.LOGITS])
        self._rows = ReusedArrays([f(layer) for layer in layers for f in (names.present_key, names.present_value)])

    def buffers(self, num_logits: int, num_tokens: int) -> dict[str, np.ndarray]:
        """Output name -> array for a plan call of `num_tokens` new tokens and `num_logits` logits
        rows (all but the presents). The arrays are overwritten by the next call."""
        info = self.info
        return self._logits.get((num_logits, info.vocab_size)) | self._rows.get((num_tokens, info.num_kv_heads, info.head_dim))
