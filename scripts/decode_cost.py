"""How fast this machine can read what a decode step must read: its read bandwidth, the weight
bytes per decode token of a transformers model (an ONNX plan's: scripts/plan_bytes.py), and the
decode ceiling the two imply.

At concurrency 1 a decode step multiplies one token's activations by every weight matrix once, so
it reads every weight once: tok/s ≤ bandwidth / (weight bytes read per token). Activations and the
KV cache (a few hundred KB at these lengths) are left out.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np


def torch_weight_bytes(model) -> int:
    """Weight bytes a decode token reads in a transformers model: its parameters (tied ones once),
    less the input embedding unless the LM head shares it (tied), when the head reads it whole.
    Like plan_bytes, a table read one row per token is left out."""
    params = {p.data_ptr(): p for p in model.parameters()}
    total = sum(p.numel() * p.element_size() for p in params.values())
    embed = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    if head is not None and head.weight.data_ptr() == embed.data_ptr():
        return total
    return total - embed.numel() * embed.element_size()


def read_bandwidth(gib: float = 1.0, threads: int = 2, passes: int = 5) -> float:
    """This machine's read bandwidth in bytes/s: `threads` threads each summing its share of one
    `gib` GiB float32 array (numpy releases the GIL in the sum); the best of `passes`."""
    data = np.ones(int(gib * (1 << 30)) // 4, dtype=np.float32)  # written once: its pages exist
    parts = np.array_split(data, threads)
    best = float("inf")
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(passes):
            start = time.perf_counter()
            list(pool.map(np.sum, parts))
            best = min(best, time.perf_counter() - start)
    return data.nbytes / best


def ceiling(bandwidth: float, bytes_per_token: int) -> float:
    """The decode tok/s at concurrency 1 that reading `bytes_per_token` at `bandwidth` bytes/s allows."""
    return bandwidth / bytes_per_token


def ceiling_fraction(tpot_s: float, bandwidth: float, bytes_per_token: int) -> float:
    """Decode tok/s (1 / time per output token) as a fraction of the bandwidth ceiling."""
    return (1 / tpot_s) / ceiling(bandwidth, bytes_per_token)
