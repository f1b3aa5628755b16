"""Ahead-of-time compiles (no GPU needed: the triton wheel ships ptxas) and the TensorRT plugin's
manifest records. The plugin's registration needs TensorRT: gpu-marked, skipped here."""

from __future__ import annotations

import re

import numpy as np
import pytest

from ingot.kernels.aot import SHARED_DEFAULT
from ingot.kernels.variant import Variant

# scales as a plan's nodes hold them: ONNX float attributes are float32
LLAMA = Variant(num_heads=32, num_kv_heads=8, head_dim=128, block_size=16, scale=float(np.float32(128 ** -0.5)))
GEMMA = Variant(num_heads=8, num_kv_heads=4, head_dim=256, block_size=32, scale=0.0625, dtype="bfloat16",
                kv_dtype="bfloat16", sliding_window=512, softcap=50.0)


@pytest.fixture(scope="module")
def compiled():
    """One child process: the fused kernel for sm_80 and sm_90, and the other kernels for sm_90."""
    from ingot.kernels.aot import Request, compile_kernels

    kernels = compile_kernels([Request("fused", GEMMA, 80), Request("fused", LLAMA, 90),
                               *(Request(k, LLAMA, 90) for k in ("write_kv", "prefill", "decode", "merge"))])
    return dict(zip(["fused80", "fused90", "write_kv", "prefill", "decode", "merge"], kernels, strict=True))


def test_the_fused_kernel_compiles_for_sm80_and_sm90(compiled):
    from ingot.kernels.aot import FUSED_INPUTS, FUSED_OUTPUTS, FUSED_SCALARS

    k80, k90 = compiled["fused80"], compiled["fused90"]
    assert (k80.target, k80.compute_capability, k90.target, k90.compute_capability) == ("sm_80", "8.0", "sm_90a", "9.0")
    for k in (k80, k90):
        assert k.name == "fused_kernel" and k.kernel == "fused"
        assert re.search(rf"^\.target {k.target}$", k.ptx, re.M) and f".entry {k.name}(" in k.ptx
        assert f".reqntid {k.threads}" in k.ptx and k.threads == 128
        assert k.cubin[:4] == b"\x7fELF" and 0 < k.shared_mem <= SHARED_DEFAULT  # launchable without opting in
        assert "/work/" not in k.ptx and b"triton_kernels.py" not in k.cubin  # no line info, no paths
        args = [(a.name, a.type, a.hidden) for a in k.args]
        assert [a[0] for a in args] == [*FUSED_INPUTS, *FUSED_SCALARS, *FUSED_OUTPUTS, "global_scratch",
                                        "profile_scratch"]
        assert [a[1] for a in args[9:12]] == ["i32"] * 3 and [a[2] for a in args] == [False] * 15 + [True] * 2
        assert len(re.findall(r"\.param ", k.ptx.split(".entry")[1].split(")")[0])) == len(args)
    assert [a.type for a in k80.args[:5]] == ["*bf16"] * 5 and k80.args[5].type == "*i64"
    assert [a.type for a in k90.args[:5]] == ["*fp16"] * 5
    assert k80.sha256 != k90.sha256


def test_every_kernel_compiles_for_sm90(compiled):
    """The JIT path's kernels too: the interpreter does not check what only a real compile does (types,
    shapes tl.dot takes, shared memory)."""
    for kernel in ("write_kv", "prefill", "decode", "merge"):
        k = compiled[kernel]
        assert k.name == f"{kernel}_kernel" and f".entry {k.name}(" in k.ptx and k.shared_mem <= SHARED_DEFAULT, kernel
    # prefill's tiles need 80 KiB pipelined over two stages: it was compiled again with one
    assert compiled["prefill"].num_stages == 1 and compiled["fused90"].num_stages == 2


def test_plugin_records_match_what_the_plugin_compiles(compiled):
    """plugin_kernels compiles each distinct variant once, here in another process: the same bytes as
    the first compile (deterministic, so the manifest's sha256 is the plan's kernel's)."""
    from ingot.kernels.trt_plugin import PLUGIN, plugin_kernels
    from ingot.plans.manifest import PluginKernel

    records = plugin_kernels([LLAMA, LLAMA], "sm_90")
    assert records == [PluginKernel(plugin=PLUGIN, kernel="fused_kernel", variant=LLAMA.key, compute_capability="9.0",
                                    format="cubin", sha256=compiled["fused90"].sha256)]
    assert PLUGIN == "ingot::PagedAttention"


def test_variants_come_from_the_plan_nodes():
    from ingot.kernels.trt_plugin import variants_from_onnx
    from tests.kernels.cpu_plan import contract_graph

    graph = contract_graph(32, 8, 128, 16, scale=LLAMA.scale, layers=2)
    assert variants_from_onnx(graph, "float16") == [LLAMA]
    gemma = contract_graph(8, 4, 256, 32, scale=0.0625, sliding_window=512, softcap=50.0)
    assert variants_from_onnx(gemma, "bfloat16") == [GEMMA]
    assert LLAMA.key == ("heads=32/8,head_dim=128,block_size=16,dtype=float16,kv=float16,index=int64,"
                         "scale=0.0883883461356163,window=0,softcap=0.0,k_scale=1.0,v_scale=1.0")


def test_bad_requests_get_one_line():
    from ingot.kernels.aot import capability, compile_kernel
    from ingot.kernels.errors import KernelError

    assert [capability(c) for c in ("9.0", "sm_90", "sm_90a", "90", 89, "12.0", "sm_120")] == [90, 90, 90, 90, 89,
                                                                                               120, 120]
    with pytest.raises(KernelError, match="expected 9.0"):
        capability("nine")
    with pytest.raises(KernelError, match="8.9 or newer"):
        compile_kernel("fused", Variant(8, 8, 64, 16, 0.125, kv_dtype="float8_e4m3fn"), "8.0")
    with pytest.raises(KernelError, match="no kernel 'attention'"):
        compile_kernel("attention", LLAMA, "9.0")


@pytest.mark.gpu
def test_the_plugin_registers_with_tensorrt():
    pytest.importorskip("tensorrt")
    import tensorrt.plugin as trtp

    from ingot.kernels.trt_plugin import register

    register()
    register()  # idempotent
    assert trtp.op.ingot.PagedAttention is not None


def test_importing_the_package_loads_no_gpu_stack():
    """`import ingot.kernels` (and its aot and plugin modules) imports neither torch, triton nor tensorrt."""
    import subprocess
    import sys

    from tests.conftest import REPO

    code = ("import sys, ingot, ingot.kernels, ingot.kernels.aot, ingot.kernels.trt_plugin; "
            "print(sorted(m for m in ('torch', 'triton', 'tensorrt') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr
