"""Arrays whose memory is mapped when they are made, not page by page at first touch.

The pool, the decode windows and the plan's output arrays are large and written a little at a
time: the pool a block here and there, a window one token column a step. A first touch of
an np.zeros/np.empty page costs a page fault, slow on these virtual machines (~3 us a KiB):
writing a 16-sequence decode's K/V into fresh blocks of a 1 GiB pool took ~9 ms a step (15%
of a budget-512 run at concurrency 16) against 0.5 ms into touched ones. MAP_POPULATE maps
the whole array in one call, ~0.4 s a GiB here, so its bytes are also committed when the load
reports them.
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
