"""The kernels against the CPU plan's attention (tests/kernels/cpu_plan.py: the node lowered for ONNX
Runtime and run as the cpu runtime runs it) on the same pool, block tables and lengths: the output
rows within 1e-5 (fp32) and the pool they leave behind, equal."""

from __future__ import annotations

import numpy as np
import pytest

from tests.kernels.cpu_plan import run_cpu_plan
from tests.kernels.launch import run
from tests.kernels.reference import make_case

CASES = {
    # chunks mid-sequence (one from a block boundary), a prefill from scratch, a decode; 4-token blocks
    "ragged": (dict(past=[6, 0, 8, 13], new=[3, 5, 1, 2], seed=11), dict(scale=0.25)),
    # GQA 4:1 at head_dim 64, 16-token blocks, partly filled last blocks
    "gqa-64": (dict(past=[21, 0], new=[4, 3], heads=8, kv_heads=2, head_dim=64, block_size=16, seed=12),
               dict(scale=0.125)),
    # Gemma-style layer: window shorter than the past and tanh-capped logits
    "window-softcap": (dict(past=[9, 2, 14], new=[3, 4, 1], seed=13), dict(scale=0.3, sliding_window=5, softcap=2.0)),
    "decode": (dict(past=[7, 30, 1], new=[1, 1, 1], seed=14), dict(scale=0.25, sliding_window=9)),
}


@pytest.mark.parametrize("name", CASES)
def test_kernels_match_the_cpu_plan(name, device):
    case_args, attn = CASES[name]
    case = make_case(**case_args)
    want, want_k, want_v = run_cpu_plan(case, **attn)
    decode = (np.diff(case.query_start_loc) == 1).all()
    for kernel in ("fused", "split" if decode else "prefill"):
        extra = {"num_splits": 2} if kernel == "split" else {}
        out, kc, vc = run(case, kernel, device, **attn, **extra)
        assert np.abs(out - want).max() < 1e-5, (kernel, np.abs(out - want).max())
        assert np.array_equal(kc, want_k) and np.array_equal(vc, want_v), kernel
