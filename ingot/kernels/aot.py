"""Ahead-of-time compilation of a paged-attention kernel variant to PTX and cubin, for a compute
capability, on any machine (the triton wheel ships ptxas; no GPU is needed).

    compiled = compile_kernel("fused", variant, "9.0")

The `CompiledKernel` record is what a TensorRT Quickly Deployable Plugin's `aot_impl` returns (the
entry name and the PTX or cubin) and what the manifest records (its sha256). Launching the fused
kernel (the plugin's):
- grid: (num_tokens, num_kv_heads, 1), from the inputs' shapes;
- block: (num_warps * 32, 1, 1), exactly: the PTX says `.reqntid`;
- dynamic shared memory: `shared_mem` bytes, at most 48 KiB (SHARED_DEFAULT): more needs the launcher to
  opt in (cuFuncSetAttribute), which TensorRT's plugin launch is not known to do, so a compile that
  needs more is redone with fewer pipeline stages;
- arguments: `args` in order, pointers as device addresses and scalars as int32; triton 3.x adds two
  trailing pointers (`hidden`: its global and its profile scratch). Both sizes are 0 here (checked),
  so the kernel never reads them: pass null (0), as triton's own launcher and its AOT tool
  (triton/tools/compile.py) do.

With the interpreter on (TRITON_INTERPRET=1, as the CPU tests run) every @triton.jit function of the
process, tl.sum among them, is an interpreted one that triton cannot compile: the compile then runs in
a child process with it off. Built with the line info off, so no path of this checkout is in the PTX
or cubin; two compiles of a variant (in two processes) give the same bytes, with the same triton.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ingot.kernels.errors import KernelError
from ingot.kernels.variant import TRITON_TYPES, Variant, kernel_constants

NUM_WARPS = 4
NUM_STAGES = 2
SHARED_DEFAULT = 48 * 1024  # dynamic shared memory a launch gets without opting in
# The fused kernel's runtime arguments (triton_kernels.fused_kernel), in order: the TensorRT plugin's
# inputs, the int32 scalars it derives from their shapes, its outputs; then triton's two scratch pointers.
FUSED_INPUTS = ("query", "key", "value", "key_cache", "value_cache", "slot_mapping", "block_tables", "context_lens",
                "query_start_loc")
FUSED_SCALARS = ("num_seqs", "max_blocks", "num_blocks")
FUSED_OUTPUTS = ("out", "key_cache_out", "value_cache_out")
SCRATCH = ("global_scratch", "profile_scratch")
# runtime arguments of the kernels (triton_kernels.py) by name: which tensor type, or int32
_POINTERS = {"dtype": ("query", "key", "value", "out"),
             "kv_dtype": ("key_cache", "value_cache", "key_cache_out", "value_cache_out"),
             "index_dtype": ("slot_mapping", "block_tables", "context_lens", "query_start_loc")}
_FLOAT32 = ("part_m", "part_l", "part_acc")
_INT32 = ("num_seqs", "max_blocks", "num_blocks", "num_splits")


@dataclass(frozen=True)
class KernelArg:
    """One parameter of the compiled entry, in order."""

    name: str
    type: str  # triton's: "*fp16" (a pointer to fp16), "i32"
    hidden: bool = False  # a scratch pointer triton appends: pass null


@dataclass(frozen=True)
class CompiledKernel:
    """A kernel variant compiled for one compute capability."""

    kernel: str  # which of triton_kernels.KERNELS ("fused")
    name: str  # the entry name in the PTX/cubin
    variant: Variant
    compute_capability: str  # "9.0"
    target: str  # the PTX's .target ("sm_90a")
    ptx_version: str  # the PTX's .version ("9.4"): a driver that JIT-compiles the PTX must know it
    ptx: str
    cubin: bytes
    num_warps: int
    num_stages: int
    shared_mem: int  # bytes of dynamic shared memory
    args: tuple[KernelArg, ...]
    triton_version: str

    @property
    def threads(self) -> int:
        """Threads per block (block_x)."""
        return self.num_warps * 32

    @property
    def ptx_sha256(self) -> str:
        return hashlib.sha256(self.ptx.encode()).hexdigest()

    @property
    def cubin_sha256(self) -> str:
        return hashlib.sha256(self.cubin).hexdigest()

    @property
    def sha256(self) -> str:
        """Of the cubin, the format a plan embeds."""
        return self.cubin_sha256


@dataclass(frozen=True)
class Request:
    """One compile: which kernel, which variant, for which compute capability (90 = sm_90)."""

    kernel: str
    variant: Variant
    cc: int
    num_warps: int = NUM_WARPS
    num_stages: int = NUM_STAGES
    num_splits: int = 2  # decode/merge: compiled as the split variant


def capability(cc: str | int) -> int:
    """"9.0", "sm_90", "sm_90a", "90" or 90 -> 90."""
    text = str(cc).strip().lower().removeprefix("sm_").removesuffix("a")
    major, dot, minor = text.partition(".")
    if dot and major.isdigit() and minor.isdigit() and len(minor) == 1:
        return int(major) * 10 + int(minor)
    if not dot and text.isdigit() and len(text) >= 2:
        return int(text)
    raise KernelError(f"compute capability {cc!r}: expected 9.0, sm_90 or 90")


def compile_kernel(kernel: str, variant: Variant, compute_capability: str | int, *, num_warps: int = NUM_WARPS,
                   num_stages: int = NUM_STAGES) -> CompiledKernel:
    """Compile `kernel` (a name of triton_kernels.KERNELS; the plugin's is "fused") of `variant`."""
    return compile_kernels([Request(kernel, variant, capability(compute_capability), num_warps, num_stages)])[0]


def compile_kernels(requests: list[Request]) -> list[CompiledKernel]:
    """Several compiles; with the interpreter on, all in one child process."""
    from triton import knobs

    for r in requests:
        _check(r)
    if knobs.runtime.interpret:
        return _compile_in_child(requests)
    return [_compile_within_default_shared(r) for r in requests]


def _check(r: Request) -> None:
    from ingot.kernels.triton_kernels import KERNELS

    if r.kernel not in KERNELS:
        raise KernelError(f"no kernel {r.kernel!r}; the kernels are {sorted(KERNELS)}")
    if r.variant.kv_dtype == "float8_e4m3fn" and r.cc < 89:
        raise KernelError(f"an fp8 (e4m3) KV pool needs compute capability 8.9 or newer; asked for {r.cc / 10:.1f}")


def _compile_within_default_shared(r: Request) -> CompiledKernel:
    """Fewer pipeline stages until the kernel needs no more than SHARED_DEFAULT of shared memory."""
    compiled = _compile(r)
    while compiled.shared_mem > SHARED_DEFAULT and compiled.num_stages > 1:
        compiled = _compile(dataclasses.replace(r, num_stages=compiled.num_stages - 1))
    if compiled.shared_mem > SHARED_DEFAULT:
        raise KernelError(f"{r.kernel} of {r.variant.key} needs {compiled.shared_mem} bytes of shared memory even "
                          f"unpipelined, more than the {SHARED_DEFAULT} a launch gets without opting in")
    return compiled


def _compile(r: Request) -> CompiledKernel:
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget

    from ingot.kernels.triton_kernels import KERNELS

    fn = KERNELS[r.kernel]
    signature, constants = _signature(fn.arg_names, r)
    aligned = {(i,): [["tt.divisibility", 16]] for i, t in enumerate(signature.values()) if t.startswith("*")}
    source = triton.compiler.ASTSource(fn=fn, signature=signature, constexprs=constants, attrs=aligned)
    options = {"num_warps": r.num_warps, "num_stages": r.num_stages, "enable_fp_fusion": True}
    with tempfile.TemporaryDirectory() as cache, knobs.cache.scope(), knobs.compilation.scope():
        knobs.cache.dir = cache  # a fresh cache: the bytes come from this compile, and nothing is left behind
        knobs.compilation.disable_line_info = True  # no source paths in the binary
        try:
            compiled = triton.compile(source, target=GPUTarget("cuda", r.cc, 32), options=options)
        except Exception as e:  # triton's compile errors are long; the first line names the problem
            first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
            raise KernelError(f"compiling {r.kernel} for sm_{r.cc} failed: {type(e).__name__}: {first}") from e
        ptx, cubin, meta = compiled.asm["ptx"], compiled.asm["cubin"], compiled.metadata
    assert meta.global_scratch_size == 0 and meta.profile_scratch_size == 0, "scratch the launch would have to pass"
    runtime = [KernelArg(n, t) for n, t in signature.items() if t != "constexpr"]
    return CompiledKernel(
        kernel=r.kernel, name=meta.name, variant=r.variant, compute_capability=f"{r.cc // 10}.{r.cc % 10}",
        target=_directive(ptx, "target"), ptx_version=_directive(ptx, "version"), ptx=ptx, cubin=cubin,
        num_warps=meta.num_warps, num_stages=meta.num_stages, shared_mem=meta.shared,
        args=(*runtime, *(KernelArg(n, "*i8", hidden=True) for n in SCRATCH)), triton_version=triton.__version__,
    )


def _signature(arg_names: list[str], r: Request) -> tuple[dict[str, str], dict[str, object]]:
    """triton's signature (name -> type or "constexpr", in the kernel's order) and the constexpr values."""
    v = r.variant
    constants = kernel_constants(r.kernel, v, num_splits=r.num_splits)
    types = {name: f"*{TRITON_TYPES[getattr(v, field)]}" for field, names in _POINTERS.items() for name in names}
    types |= dict.fromkeys(_FLOAT32, "*fp32") | dict.fromkeys(_INT32, "i32") | dict.fromkeys(constants, "constexpr")
    missing = set(arg_names) - set(types)
    assert not missing, f"{r.kernel}: no type for {sorted(missing)}"
    return {name: types[name] for name in arg_names}, constants


def _directive(ptx: str, name: str) -> str:
    match = re.search(rf"^\.{name}\s+(\S+)", ptx, re.MULTILINE)
    assert match, f"no .{name} in the PTX"
    return match[1]


def _compile_in_child(requests: list[Request]) -> list[CompiledKernel]:
    """compile_kernels in a fresh Python with the interpreter off; records come back pickled."""
    import os
    import pickle
    import subprocess
    import sys

    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "TRITON_INTERPRET": "0",
           "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    code = ("import pickle, sys; from ingot.kernels.aot import compile_kernels; "
            "sys.stdout.buffer.write(pickle.dumps(compile_kernels(pickle.load(sys.stdin.buffer))))")
    child = subprocess.run([sys.executable, "-c", code], input=pickle.dumps(requests), capture_output=True, env=env,
                           timeout=900)
    if child.returncode:
        lines = child.stderr.decode(errors="replace").strip().splitlines()
        raise KernelError(lines[-1].removeprefix("ingot.kernels.errors.KernelError: ") if lines
                          else f"the compiling process failed ({child.returncode})")
    return pickle.loads(child.stdout)
