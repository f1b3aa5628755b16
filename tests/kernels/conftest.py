"""tests/kernels run the paged-attention kernels on INGOT_KERNEL_DEVICE: `cpu` (the default) under
Triton's interpreter, `cuda` on a GPU (scripts/gpu_kernels.py), where bf16 is checked too.

triton reads TRITON_INTERPRET when a kernel is decorated, so it is set here, before ingot.kernels is
imported. Nothing else in the suite uses the triton compiler (tritonclient, for `ingot serve`, is
another package), so setting it for the whole run changes nothing else.
"""

from __future__ import annotations

import os

import pytest

DEVICE = os.environ.get("INGOT_KERNEL_DEVICE", "cpu")
if DEVICE == "cpu":
    os.environ["TRITON_INTERPRET"] = "1"

# the interpreter stores bf16 as raw integers: bf16 is checked on a GPU only
DTYPES = ["float32", "float16"] + (["bfloat16"] if DEVICE != "cpu" else [])


@pytest.fixture(scope="session")
def device() -> str:
    if DEVICE != "cpu":
        import torch

        if not torch.cuda.is_available():
            pytest.skip(f"INGOT_KERNEL_DEVICE={DEVICE} but torch sees no GPU")
    return DEVICE
