"""The kernels against the numpy reference (tests/kernels/reference.py): output rows and the pool
they write, over every path (fused, prefill, decode, split decode), on the device conftest selects.

Tolerances (max abs error; inputs ~N(0, 1), the reference in float64 on the same rounded inputs):
fp32 1e-5, fp16 3e-3, bf16 2e-2; an fp8 pool's values are compared after dequantizing.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from tests.kernels.conftest import DTYPES
from tests.kernels.launch import rounded, run
from tests.kernels.reference import Case, attention, make_case, write_kv

ATOL = {"float32": 1e-5, "float16": 3e-3, "bfloat16": 2e-2}


def check(case: Case, kernel: str, device: str, dtype: str = "float32", *, num_splits: int | None = None,
          index_dtype: str = "int64", **attn) -> None:
    """Output and written pool of `kernel` against the reference, within ATOL[dtype]."""
    out, kc, vc = run(case, kernel, device, dtype, index_dtype=index_dtype, num_splits=num_splits, **attn)
    ref = rounded(case, dtype)
    want = attention(ref, **attn)
    rk, rv = write_kv(ref)
    assert np.abs(out - want).max() <= ATOL[dtype], (kernel, dtype, np.abs(out - want).max())
    assert np.array_equal(kc, rk) and np.array_equal(vc, rv), (kernel, "pool", np.abs(kc - rk).max())


# a ragged batch: a chunk mid-sequence whose past ends inside a block, a prefill from scratch, a
# decode token, and a chunk that starts on a block boundary; blocks scattered over a larger pool
RAGGED = dict(past=[5, 0, 9, 4], new=[3, 6, 1, 4])
DECODE = dict(past=[5, 17, 33, 0], new=[1, 1, 1, 1])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel", ["fused", "prefill"])
def test_ragged_batch(kernel, dtype, device):
    check(make_case(**RAGGED, seed=1), kernel, device, dtype, scale=0.25)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel", ["decode", "split", "fused"])
def test_decode_batch(kernel, dtype, device):
    extra = {"num_splits": 3} if kernel == "split" else {}
    check(make_case(**DECODE, seed=2), kernel, device, dtype, scale=0.25, **extra)


@pytest.mark.parametrize("kernel", ["fused", "prefill", "decode", "split"])
def test_gqa_head_dims_64_128_256(kernel, device):
    """Four query heads per KV head at head_dim 64, two at 128, Gemma's 256 at 32-token blocks."""
    new = [1, 1] if kernel in ("decode", "split") else [5, 2]
    extra = {"num_splits": 2} if kernel == "split" else {}
    check(make_case([20, 40], new, heads=8, kv_heads=2, head_dim=64, block_size=16, seed=3), kernel, device,
          scale=0.125, **extra)
    check(make_case([33], new[:1], heads=2, kv_heads=1, head_dim=128, block_size=16, seed=4), kernel, device,
          scale=0.088, **extra)
    check(make_case([40], new[:1], heads=2, kv_heads=1, head_dim=256, block_size=32, seed=9), kernel, device,
          scale=0.0625, **extra)


@pytest.mark.parametrize("kernel", ["fused", "prefill", "decode", "split"])
def test_sliding_window_and_softcap(kernel, device):
    """A window shorter than the past (blocks before it are not read) and one longer; tanh capping.
    head_dim 24 (not a power of two) and int32 metadata ride along."""
    decode = kernel in ("decode", "split")
    extra = {"num_splits": 3} if kernel == "split" else {}
    case = make_case([11, 3, 17], [1, 1, 1] if decode else [3, 5, 1], head_dim=24, seed=5)
    for window, softcap in ((6, 0.0), (5, 1.5), *([(30, 0.0), (0, 2.0)] if decode else [])):
        check(case, kernel, device, scale=0.3, sliding_window=window, softcap=softcap, index_dtype="int32", **extra)


@pytest.mark.parametrize("kernel", ["fused", "prefill", "decode"])
def test_fp8_pool(kernel, device):
    """An e4m3 pool with per-tensor scales: the past is read dequantized, the new K/V written quantized
    (saturated). fused/prefill read the chunk's own tokens from key/value (unquantized), decode reads
    its token back from the pool."""
    import torch

    if device != "cpu" and torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("fp8 e4m3 needs compute capability 8.9")
    new = [1, 1] if kernel == "decode" else [3, 2]
    case = make_case([9, 4], new, seed=6)
    scales = {"k_scale": 0.02, "v_scale": 0.03}
    case.key[0, 0, 0] = 100.0  # beyond 448 * 0.02: saturates
    out, kc, vc = run(case, kernel, device, kv_dtype="float8_e4m3fn", scale=0.25, **scales)

    def fp8(a, s):  # what the pool holds, dequantized
        return torch.from_numpy(np.clip(a / s, -448, 448)).to(torch.float8_e4m3fn).double().numpy() * s

    ref = dataclasses.replace(case, key_cache=fp8(case.key_cache, 0.02), value_cache=fp8(case.value_cache, 0.03))
    rk, rv = write_kv(dataclasses.replace(ref, key=fp8(case.key, 0.02), value=fp8(case.value, 0.03)))
    np.testing.assert_allclose(kc, rk, rtol=0, atol=1e-12)
    np.testing.assert_allclose(vc, rv, rtol=0, atol=1e-12)
    if kernel == "decode":
        ref = dataclasses.replace(ref, key=fp8(case.key, 0.02), value=fp8(case.value, 0.03))
    assert np.abs(out - attention(ref, scale=0.25)).max() < 1e-5


@pytest.mark.parametrize("kernel", ["fused", "prefill"])
def test_padding_rows_and_unwritten_slots(kernel, device):
    """Rows past query_start_loc[B] come out as zeros; a slot < 0 is not written."""
    case = make_case([5, 2], [2, 3], seed=7)
    pad = dataclasses.replace(
        case, query=np.concatenate([case.query, np.ones((2, *case.query.shape[1:]), np.float32)]),
        key=np.concatenate([case.key, np.ones((2, *case.key.shape[1:]), np.float32)]),
        value=np.concatenate([case.value, np.ones((2, *case.value.shape[1:]), np.float32)]),
        slot_mapping=np.concatenate([case.slot_mapping, [-1, 0]]))  # a padded row with a slot is not written either
    pad.slot_mapping[1] = -1  # a real token whose K/V is not written: the pool keeps the old row
    out, kc, vc = run(pad, kernel, device, scale=0.25)
    assert not out[-2:].any()
    want_k, want_v = write_kv(dataclasses.replace(case, slot_mapping=pad.slot_mapping[:-2]))
    assert np.array_equal(kc, want_k) and np.array_equal(vc, want_v)
    assert np.abs(out[:-2] - attention(case, scale=0.25)).max() < 1e-5


def test_decode_splits_fill_the_machine():
    from ingot.kernels.paged import decode_splits

    # 32 query / 8 KV heads on 132 SMs: the splits gpu-anchors.md measured best on an H200
    assert [decode_splits(b, 8, c, num_sms=132) for b, c in ((1, 8192), (16, 512), (16, 2048), (16, 8192), (64, 8192))
            ] == [64, 4, 5, 5, 1]
    assert decode_splits(1, 8, 2048, num_sms=132) == 16  # each split reads >= 128 tokens
    assert decode_splits(1, 1, 1 << 20, num_sms=132) == 64  # at most MAX_SPLITS
    assert decode_splits(4, 2, 100, num_sms=132) == 1  # too short to split


def test_bad_inputs_get_one_line(device):
    import torch

    from ingot.kernels import paged_attention
    from ingot.kernels.errors import KernelError

    case = make_case([3], [2], seed=8)
    args = [torch.from_numpy(a).to(device) for a in (case.query, case.key, case.value, case.key_cache,
                                                     case.value_cache, case.slot_mapping, case.block_tables,
                                                     case.context_lens, case.query_start_loc)]
    with pytest.raises(KernelError, match="query must be"):
        paged_attention(*args, num_heads=3, num_kv_heads=2, scale=1.0)
    with pytest.raises(KernelError, match="int32 or all int64"):
        paged_attention(*args[:5], args[5].int(), *args[6:], num_heads=4, num_kv_heads=2, scale=1.0)
    with pytest.raises(KernelError, match="one new token per sequence"):
        paged_attention(*args, num_heads=4, num_kv_heads=2, scale=1.0, kernel="decode")
    with pytest.raises(KernelError, match="fp8 pool only"):
        paged_attention(*args, num_heads=4, num_kv_heads=2, scale=1.0, k_scale=0.5)
