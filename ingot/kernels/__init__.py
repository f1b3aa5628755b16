"""Paged-attention GPU kernels (Triton) for the `ingot.PagedAttention` contract.

- `paged_attention(...)`: the contract on torch tensors (paged.py), writing the pool in place;
- triton_kernels.py: the kernels themselves (write, prefill, decode + split/merge, fused);
- aot.py: a kernel variant compiled ahead of time to PTX/cubin for a compute capability;
- trt_plugin.py: the TensorRT Quickly Deployable Plugin `ingot::PagedAttention` that embeds it.

Importing this package imports neither torch nor triton: `paged_attention` loads them when called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ingot.kernels.paged import paged_attention

__all__ = ["paged_attention"]


def __getattr__(name: str):
    if name == "paged_attention":
        from ingot.kernels.paged import paged_attention

        return paged_attention
    raise AttributeError(f"module 'ingot.kernels' has no attribute {name!r}")
