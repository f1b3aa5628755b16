"""The paged KV pool in host memory, and how many blocks a memory budget holds.

One numpy array, viewed per layer and k|v as [kv_heads, blocks, block, dim]: a block of one head
is contiguous, so a sequence's past is gathered a block at a time (cpu_lowering.py), or, where a
block of one head is whole pages, the array is shared memory whose pages the attention windows
map (page_map.py). The step's
new K/V come back as plan outputs and are written here at their slots, in place.
"""

from __future__ import annotations

import os
import re

import numpy as np

from ingot.plans import llm as names
from ingot.plans.llm import LLMInfo, blocks_needed
from ingot.runtime.errors import InputError, RunError
from ingot.runtime.llm import page_map
from ingot.runtime.llm.buffers import populated

DEFAULT_FRACTION = 0.25  # of available memory, when --kv-cache-memory is not given


def available_memory() -> int:
    """Bytes of memory available to a new allocation (Linux MemAvailable; else physical)."""
    try:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def num_blocks_for(info: LLMInfo, kv_cache_memory: int | float | str | None) -> int:
    """Blocks that fit `kv_cache_memory`: bytes, a fraction (0, 1] of available memory, or the
    CLI's text ("512MiB", "2e9", "0.5").

    By default: what max_num_seqs full-length sequences need, capped at a quarter of the
    available memory. Fails if not even one max_model_len sequence fits, or if the pool would
    take more than the memory available now.
    """
    if isinstance(kv_cache_memory, str):
        kv_cache_memory = parse_memory(kv_cache_memory, "kv_cache_memory")
    per_block = info.kv_bytes_per_block
    minimum = _one_sequence(info)
    available = available_memory()
    if kv_cache_memory is None:
        blocks = _default_blocks(info, available)
    elif 0 < kv_cache_memory <= 1 and isinstance(kv_cache_memory, float):
        blocks = int(available * kv_cache_memory) // per_block
    else:
        blocks = int(kv_cache_memory) // per_block
    if blocks < minimum:
        raise RunError(
            f"KV cache of {blocks} blocks ({blocks * per_block} bytes) holds fewer tokens than max_model_len "
            f"{info.max_model_len}; give --kv-cache-memory at least {minimum * per_block} bytes"
        )
    if blocks * per_block > available:
        raise RunError(f"--kv-cache-memory {format_bytes(blocks * per_block)} is more than the "
                       f"{format_bytes(available)} of memory available now; give less (e.g. 0.5 for half of it)")
    return blocks


def memory_for_requests(info: LLMInfo, tokens: list[int]) -> int | None:
    """Bytes of the blocks requests of `tokens` (prompt + output, each) need, at least one
    max_model_len sequence (`ingot run`'s default, which knows its requests); None when that is
    no less than the default pool."""
    blocks = sum(blocks_needed(min(n, info.max_model_len), info.kv_block_size) for n in tokens)
    blocks = max(blocks, _one_sequence(info))
    return None if blocks >= _default_blocks(info, available_memory()) else blocks * info.kv_bytes_per_block


def _one_sequence(info: LLMInfo) -> int:
    return blocks_needed(info.max_model_len, info.kv_block_size)


def _default_blocks(info: LLMInfo, available: int) -> int:
    """What max_num_seqs full-length sequences need, capped at DEFAULT_FRACTION of `available`."""
    return min(info.max_num_seqs * _one_sequence(info), int(available * DEFAULT_FRACTION) // info.kv_bytes_per_block)


def format_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'; for messages."""
    if n < 1024:
        return f"{int(n)} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024
        if round(n, 1) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}"
    raise AssertionError("unreachable")


class KVCache:
    def __init__(self, info: LLMInfo, num_blocks: int):
        shape = (info.num_layers, 2, info.num_kv_heads, num_blocks, info.kv_block_size, info.head_dim)
        self.info, self.num_blocks = info, num_blocks
        self.fd: int | None = None  # the pool's memfd, where attention windows can map its pages
        try:
            if page_map.supported(info):
                self.pool, self.fd = page_map.shared_zeros(shape)
            else:
                self.pool = populated(shape)
        except (OSError, MemoryError) as e:  # ENOMEM: committed elsewhere since the budget was checked
            raise RunError(f"could not allocate the KV cache ({num_blocks} blocks, "
                           f"{format_bytes(num_blocks * info.kv_bytes_per_block)}): {e}; "
                           "give a smaller --kv-cache-memory") from None
        # the caches by name (ingot.plans.llm.key_cache), for the windows' gathers
        self.caches = {name: self.pool[layer, kv] for layer in range(info.num_layers)
                      for kv, name in ((0, names.key_cache(layer)), (1, names.value_cache(layer)))}
        # the same memory as [layer, k|v, head, slot, dim]: a write is one index array, numpy's fast path
        # (indexing block and offset apart is much slower on a large pool)
        self._slots = self.pool.reshape(*shape[:3], num_blocks * info.kv_block_size, info.head_dim)

    @property
    def nbytes(self) -> int:
        return self.pool.nbytes

    def write(self, slot_mapping: np.ndarray, outputs: dict[str, np.ndarray]) -> None:
        """Store the step's new K/V (`present.L.key/value`, [T, kv_heads, dim]) at their slots."""
        for layer in range(self.info.num_layers):  # slots[layer, k|v, head, slot] = row
            self._slots[layer, 0][:, slot_mapping] = outputs[names.present_key(layer)].transpose(1, 0, 2)
            self._slots[layer, 1][:, slot_mapping] = outputs[names.present_value(layer)].transpose(1, 0, 2)


# Suffixes of --kv-cache-memory, case-insensitive; no suffix and a value ≤ 1 is a fraction of RAM.
UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "kib": 2**10, "m": 10**6, "mb": 10**6, "mib": 2**20,
         "g": 10**9, "gb": 10**9, "gib": 2**30, "t": 10**12, "tb": 10**12, "tib": 2**40}


def parse_memory(text: str | None, option: str = "--kv-cache-memory") -> int | float | None:
    """`2e9`, `512MiB`, `1.5GB` → bytes (int); `0.5` → a fraction of available RAM (float)."""
    if text is None:
        return None
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?(?:e\d+)?)\s*([a-z]*)\s*", text.lower())
    if m is None or m[2] not in UNITS:
        raise InputError(f"{option} {text!r}: expected bytes (2e9, 512MiB, 4GB) or a fraction (0.5)")
    value = float(m[1]) * UNITS[m[2]]
    if not m[2] and 0 < value <= 1:
        return value
    if value < 1:
        raise InputError(f"{option} {text!r}: must be more than 0")
    return int(value)
