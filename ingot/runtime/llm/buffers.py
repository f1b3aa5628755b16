"""Reused float32 buffers whose memory is mapped when they are made.

The pool, the decode windows and the plan's outputs are large and written a little at a time
(a block here and there, one token column a step). A first touch of an np.zeros page costs a
page fault, slow on virtual machines; MAP_POPULATE maps the whole array in one call, so its bytes
are committed when the load reports them, and a step never pays for fresh pages.
"""

from __future__ import annotations

import mmap

import numpy as np


def populated(shape: tuple[int, ...]) -> np.ndarray:
    """A zeroed float32 array of `shape`, its pages mapped now (Linux MAP_POPULATE; np.zeros elsewhere)."""
    nbytes = int(np.prod(shape)) * 4
    populate = getattr(mmap, "MAP_POPULATE", 0)
    if not populate or nbytes == 0:
        return np.zeros(shape, np.float32)
    buffer = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | populate)
    return np.frombuffer(buffer, np.float32).reshape(shape)  # the array keeps the mapping alive


class ReusedArrays:
    """One flat float32 array per name, viewed as the shape a call needs.

    The views of a shape are cached, so a call of a shape seen before gets the same arrays (an
    IOBinding binds nothing new). The flat arrays are remapped, to `growth` times their size at
    least, only when a shape does not fit: every remap maps fresh pages.
    """

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
