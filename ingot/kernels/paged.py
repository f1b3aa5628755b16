"""`paged_attention`: the `ingot.PagedAttention` contract on torch tensors, through the Triton kernels.

Writes the step's new K/V into the pool in place and returns the attention output [T, heads, dim].
Which kernels run:
- "auto": a batch of one new token per sequence (T == B) is a decode: write_kv, then decode (split
  across the context and merged, flash-decoding, when the batch alone would leave the GPU idle);
  any other batch: write_kv, then prefill;
- "fused": fused_kernel alone, one launch for any batch (what the TensorRT plugin runs);
- "decode", "split", "prefill": that path, whatever the batch (decode paths need T == B).

On a CPU the kernels run under Triton's interpreter: set TRITON_INTERPRET=1 before ingot.kernels is
first imported (tests/kernels/conftest.py does).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from ingot.kernels.errors import KernelError
from ingot.kernels.variant import FLOAT_DTYPES, INDEX_DTYPES, KV_DTYPES, Tiles, Variant, kernel_constants

if TYPE_CHECKING:
    import torch

Kernel = Literal["auto", "fused", "decode", "split", "prefill"]

MAX_SPLITS = 64
MIN_SPLIT_TOKENS = 128  # a split reads at least this many tokens, or its share of the merge outweighs it
PROGRAMS_PER_SM = 4  # split until about this many programs per SM are in flight (latency hiding)
DEFAULT_SMS = 132  # an H100/H200, when the device cannot say (the interpreter)


def decode_splits(num_seqs: int, num_kv_heads: int, max_context: int, num_sms: int = DEFAULT_SMS) -> int:
    """How many splits of the context a decode launch uses: 1 when its (sequence, KV head) programs
    already number one per SM or more; else enough for about PROGRAMS_PER_SM per SM, each split
    reading at least MIN_SPLIT_TOKENS tokens of the longest context, at most MAX_SPLITS. (On an
    H200, gpu-anchors.md's best splits for 32 query / 8 KV heads: batch 1 x 8192 tokens 64, 16 x
    512 4, 16 x 2048 and 16 x 8192 5, batch 64 none; this gives 64, 4, 5, 5 and 1.)"""
    programs = num_seqs * num_kv_heads
    if programs >= num_sms:
        return 1
    want = -(-PROGRAMS_PER_SM * num_sms // programs)
    return max(1, min(want, max_context // MIN_SPLIT_TOKENS, MAX_SPLITS))


@dataclass(frozen=True)
class _Batch:
    """Shapes of one call, checked."""

    tokens: int
    seqs: int
    max_blocks: int
    num_blocks: int
    variant: Variant


def paged_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, key_cache: torch.Tensor,
                    value_cache: torch.Tensor, slot_mapping: torch.Tensor, block_tables: torch.Tensor,
                    context_lens: torch.Tensor, query_start_loc: torch.Tensor, *, num_heads: int, num_kv_heads: int,
                    scale: float, sliding_window: int = 0, softcap: float = 0.0, k_scale: float | None = None,
                    v_scale: float | None = None, kernel: Kernel = "auto", max_context_len: int | None = None,
                    num_splits: int | None = None) -> torch.Tensor:
    """The contract (ingot.builder.paged.paged_attention), plus: slot_mapping < 0 is not written, and
    rows past query_start_loc[B] (padding) are not written and come out as zeros. k_scale/v_scale: an fp8 pool's
    per-tensor scales (stored = value / scale). max_context_len bounds the split heuristic (default:
    what the block tables hold, so nothing is read back from the device); num_splits overrides it."""
    import torch

    batch = _check(query, key, value, key_cache, value_cache, slot_mapping, block_tables, context_lens,
                   query_start_loc, num_heads, num_kv_heads, scale, sliding_window, softcap, k_scale, v_scale)
    query, key, value = query.contiguous(), key.contiguous(), value.contiguous()
    v = batch.variant
    if kernel == "auto":
        kernel = "decode" if batch.tokens == batch.seqs else "prefill"
    if kernel == "fused":
        out = torch.empty_like(query)
        _fused(query, key, value, key_cache, value_cache, slot_mapping, block_tables, context_lens, query_start_loc,
               out, batch)
        return out
    out = torch.zeros_like(query)
    _write(key, value, slot_mapping, query_start_loc, key_cache, value_cache, batch)
    meta = (block_tables, context_lens, query_start_loc)
    if kernel == "prefill":
        _prefill(query, key, value, key_cache, value_cache, *meta, out, batch)
        return out
    if batch.tokens != batch.seqs:
        raise KernelError(f"kernel {kernel!r} takes one new token per sequence; got {batch.tokens} tokens for "
                          f"{batch.seqs} sequences")
    if num_splits is None:
        context = max_context_len or batch.max_blocks * v.block_size
        num_splits = 1 if kernel == "decode" else decode_splits(batch.seqs, v.num_kv_heads, context, _sms(query))
        kernel = "split" if num_splits > 1 else "decode"
    _decode(query, key_cache, value_cache, *meta, out, batch, num_splits if kernel == "split" else 1)
    return out


def _sms(t: torch.Tensor) -> int:
    import torch

    if t.is_cuda:
        return torch.cuda.get_device_properties(t.device).multi_processor_count
    return DEFAULT_SMS


def _kernels():
    from ingot.kernels import triton_kernels

    return triton_kernels


def _write(key, value, slot_mapping, query_start_loc, key_cache, value_cache, batch: _Batch) -> None:
    v = batch.variant
    if batch.tokens == 0:
        return
    _kernels().write_kv_kernel[(batch.tokens,)](
        key, value, slot_mapping, query_start_loc, batch.seqs, key_cache, value_cache, batch.num_blocks,
        **kernel_constants("write_kv", v))


def _prefill(query, key, value, key_cache, value_cache, block_tables, context_lens, query_start_loc, out,
             batch: _Batch) -> None:
    v = batch.variant
    grid = (-(-batch.tokens // Tiles.of(v).block_q) + batch.seqs, v.num_kv_heads)
    _kernels().prefill_kernel[grid](
        query, key, value, key_cache, value_cache, block_tables, context_lens, query_start_loc, batch.seqs,
        batch.max_blocks, batch.num_blocks, out, **kernel_constants("prefill", v))


def _decode(query, key_cache, value_cache, block_tables, context_lens, query_start_loc, out, batch: _Batch,
            num_splits: int) -> None:
    import torch

    v, k = batch.variant, _kernels()
    split = num_splits > 1
    shape = (batch.seqs, v.num_heads, num_splits) if split else (1,)
    part_m = torch.empty(shape, dtype=torch.float32, device=query.device)
    part_l = torch.empty_like(part_m)
    part_acc = torch.empty((*shape, Tiles.of(v).d_pad), dtype=torch.float32, device=query.device)
    k.decode_kernel[(batch.seqs, v.num_kv_heads, num_splits)](
        query, key_cache, value_cache, block_tables, context_lens, query_start_loc, batch.max_blocks,
        batch.num_blocks, out, part_m, part_l, part_acc, **kernel_constants("decode", v, num_splits=num_splits))
    if split:
        k.merge_kernel[(batch.seqs, v.num_heads)](
            query_start_loc, part_m, part_l, part_acc, num_splits, out,
            **kernel_constants("merge", v, num_splits=num_splits))


def _fused(query, key, value, key_cache, value_cache, slot_mapping, block_tables, context_lens, query_start_loc, out,
           batch: _Batch) -> None:
    v = batch.variant
    if batch.tokens == 0:
        return
    _kernels().fused_kernel[(batch.tokens, v.num_kv_heads)](
        query, key, value, key_cache, value_cache, slot_mapping, block_tables, context_lens, query_start_loc,
        batch.seqs, batch.max_blocks, batch.num_blocks, out, key_cache, value_cache, **kernel_constants("fused", v))


def _dtype_name(t) -> str:
    return str(t.dtype).removeprefix("torch.")


def _check(query, key, value, key_cache, value_cache, slot_mapping, block_tables, context_lens, query_start_loc,
           num_heads, num_kv_heads, scale, sliding_window, softcap, k_scale, v_scale) -> _Batch:
    """The call's shapes, or a KernelError naming what does not fit the contract."""
    tokens = query.shape[0]
    if query.dim() != 3 or query.shape[1] != num_heads:
        raise KernelError(f"query must be [tokens, {num_heads} heads, head_dim]; got {list(query.shape)}")
    head_dim = query.shape[2]
    if num_heads % num_kv_heads:
        raise KernelError(f"num_heads {num_heads} is not a multiple of num_kv_heads {num_kv_heads}")
    for name, t in (("key", key), ("value", value)):
        if list(t.shape) != [tokens, num_kv_heads, head_dim]:
            raise KernelError(f"{name} must be {[tokens, num_kv_heads, head_dim]}; got {list(t.shape)}")
    if key_cache.dim() != 4 or key_cache.shape[0] != num_kv_heads or key_cache.shape[3] != head_dim:
        raise KernelError(f"key_cache must be [{num_kv_heads} kv heads, blocks, block_size, {head_dim}]; "
                          f"got {list(key_cache.shape)}")
    if value_cache.shape != key_cache.shape or value_cache.dtype != key_cache.dtype:
        raise KernelError("value_cache must have key_cache's shape and dtype")
    if not (key_cache.is_contiguous() and value_cache.is_contiguous()):
        raise KernelError("the KV caches must be contiguous (they are written in place)")
    seqs = context_lens.shape[0]
    if (list(slot_mapping.shape) != [tokens] or block_tables.dim() != 2 or block_tables.shape[0] != seqs
            or list(query_start_loc.shape) != [seqs + 1]):
        raise KernelError(f"metadata shapes: slot_mapping {list(slot_mapping.shape)} (want [{tokens}]), block_tables "
                          f"{list(block_tables.shape)} (want [{seqs}, max_blocks]), query_start_loc "
                          f"{list(query_start_loc.shape)} (want [{seqs + 1}])")
    index = {_dtype_name(t) for t in (slot_mapping, block_tables, context_lens, query_start_loc)}
    if len(index) != 1 or not index <= set(INDEX_DTYPES):
        raise KernelError(f"the metadata must all be int32 or all int64; got {sorted(index)}")
    if not block_tables.is_contiguous():
        raise KernelError("block_tables must be contiguous")
    dtype, kv_dtype = _dtype_name(query), _dtype_name(key_cache)
    if dtype not in FLOAT_DTYPES or kv_dtype not in KV_DTYPES or {_dtype_name(key), _dtype_name(value)} != {dtype}:
        raise KernelError(f"query/key/value must share one float dtype and the pool be one of {KV_DTYPES}; got "
                          f"{dtype}/{_dtype_name(key)}/{_dtype_name(value)} and {kv_dtype}")
    devices = {t.device for t in (query, key, value, key_cache, value_cache, slot_mapping, block_tables, context_lens,
                                  query_start_loc)}
    if len(devices) != 1:
        raise KernelError(f"all tensors must be on one device; got {sorted(map(str, devices))}")
    if not query.is_cuda:
        from triton import knobs

        if not knobs.runtime.interpret:
            raise KernelError("CPU tensors run under Triton's interpreter: set TRITON_INTERPRET=1 before "
                              "ingot.kernels is imported")
    fp8 = kv_dtype == "float8_e4m3fn"
    if not fp8 and (k_scale not in (None, 1.0) or v_scale not in (None, 1.0)):
        raise KernelError(f"k_scale/v_scale apply to an fp8 pool only (this one is {kv_dtype})")
    variant = Variant(num_heads=num_heads, num_kv_heads=num_kv_heads, head_dim=head_dim,
                      block_size=key_cache.shape[2], scale=float(scale), dtype=dtype, kv_dtype=kv_dtype,
                      index_dtype=index.pop(), sliding_window=int(sliding_window), softcap=float(softcap),
                      k_scale=float(k_scale or 1.0), v_scale=float(v_scale or 1.0))
    return _Batch(tokens=tokens, seqs=seqs, max_blocks=block_tables.shape[1], num_blocks=key_cache.shape[1],
                  variant=variant)
