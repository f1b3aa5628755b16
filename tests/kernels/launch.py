"""The kernels on numpy cases: torch copies on the test device in, float64 numpy out."""

from __future__ import annotations

import dataclasses

import numpy as np

from tests.kernels.reference import Case


def run(case: Case, kernel: str, device: str, dtype: str = "float32", kv_dtype: str | None = None, **kw):
    """The kernel on torch copies of `case`: (out, key_cache, value_cache) as float64 numpy."""
    import torch

    from ingot.kernels import paged_attention

    def tensor(a, dt):
        return torch.from_numpy(np.ascontiguousarray(a)).to(device=device, dtype=getattr(torch, dt))

    kv = kv_dtype or dtype
    scales = {"k_scale": kw.pop("k_scale", None), "v_scale": kw.pop("v_scale", None)}
    pools = ((case.key_cache, "k_scale"), (case.value_cache, "v_scale"))
    caches = [tensor(c / (scales[s] or 1.0), kv) for c, s in pools]
    index = kw.pop("index_dtype", "int64")
    meta = [tensor(m, index) for m in (case.slot_mapping, case.block_tables, case.context_lens, case.query_start_loc)]
    out = paged_attention(tensor(case.query, dtype), tensor(case.key, dtype), tensor(case.value, dtype), *caches, *meta,
                          num_heads=case.query.shape[1], num_kv_heads=case.key.shape[1], kernel=kernel, **scales, **kw)
    back = [c.to(torch.float64).cpu().numpy() * (scales[s] or 1.0) for c, s in zip(caches, ("k_scale", "v_scale"))]
    return out.to(torch.float64).cpu().numpy(), back[0], back[1]


def rounded(case: Case, dtype: str) -> Case:
    """`case` with its float arrays rounded to `dtype` (what the kernel sees), as float64."""
    import torch

    def r(a):
        return a if a.dtype.kind != "f" else torch.from_numpy(a).to(getattr(torch, dtype)).double().numpy()

    return Case(**{f.name: r(getattr(case, f.name)) for f in dataclasses.fields(case)})
