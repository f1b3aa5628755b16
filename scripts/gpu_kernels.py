"""The paged-attention kernels on a GPU, in one run (issue 18): tests, then benchmarks.

    python scripts/gpu_kernels.py [--json gpu_kernels.json]          # on a GPU machine, a few minutes
    python scripts/gpu_kernels.py --device cpu                       # a seconds-long smoke run (interpreter)

1. tests/kernels on CUDA (INGOT_KERNEL_DEVICE=cuda: the CPU tests' cases, bf16 added);
2. the machine's read bandwidth: a Triton streaming read kernel (and torch.sum) over a large buffer;
3. decode: batch 1/16/64 x context 512/2048/8192, Llama-3-8B's attention (32 query heads, 8 KV heads,
   head_dim 128, 16-token blocks scattered over the pool, bf16): our decode (split as the heuristic
   picks, and unsplit), the fused kernel, and SDPA on contiguous K/V. Effective bandwidth = bytes of
   K+V read / time, as a fraction of the measured read bandwidth (goal: >= 70% at batch >= 16 and
   context >= 2048);
4. prefill: prompts from scratch and a chunk after a cached past, against SDPA (causal) on contiguous K/V.

Every timing is a CUDA graph of the call replayed (so launch overhead is not counted), median of a
few rounds. Prints a markdown table for BENCHMARKS.md and writes everything as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HEADS, KV_HEADS, HEAD_DIM, BLOCK = 32, 8, 128, 16
BATCHES, CONTEXTS = (1, 16, 64), (512, 2048, 8192)
PREFILLS = ((4, 2048, 0), (1, 512, 4096))  # (sequences, new tokens each, cached past each)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.device == "cpu":
        os.environ["TRITON_INTERPRET"] = "1"  # before ingot.kernels (and triton) are imported
    sys.path.insert(0, str(REPO))
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA device (use --device cpu for the smoke run)", file=sys.stderr)
        return 1
    shapes = smoke_shapes() if args.device == "cpu" else full_shapes()
    report = {"machine": machine(args.device), "shapes": shapes, "command": " ".join(["python", *sys.argv])}
    report["tests"] = run_tests(args.device) if not args.skip_tests else None
    report["read_bandwidth"] = read_bandwidth(args.device, shapes["read_bytes"])
    report["decode"] = [bench_decode(args.device, b, c, shapes) for b in shapes["batches"] for c in shapes["contexts"]]
    report["prefill"] = [bench_prefill(args.device, *p, shapes) for p in shapes["prefills"]]
    print(markdown(report))
    Path(args.json).write_text(json.dumps(report, indent=1))
    print(f"\nwrote {args.json}")
    failed = report["tests"] is not None and report["tests"]["returncode"] != 0
    return 1 if failed else 0


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--json", default="gpu_kernels.json", help="where the results go")
    p.add_argument("--skip-tests", action="store_true", help="benchmarks only")
    return p.parse_args(argv)


def full_shapes() -> dict:
    return {"heads": HEADS, "kv_heads": KV_HEADS, "head_dim": HEAD_DIM, "block_size": BLOCK, "dtype": "bfloat16",
            "batches": BATCHES, "contexts": CONTEXTS, "prefills": PREFILLS, "read_bytes": 2 << 30, "rounds": 5,
            "replays": 20}


def smoke_shapes() -> dict:
    """Tiny shapes the interpreter runs in seconds: the script's every path, none of its numbers."""
    return {"heads": 4, "kv_heads": 2, "head_dim": 16, "block_size": 4, "dtype": "float32", "batches": (2,),
            "contexts": (9,), "prefills": ((1, 3, 2),), "read_bytes": 1 << 16, "rounds": 1, "replays": 1}


def machine(device: str) -> dict:
    import torch
    import triton

    info = {"date": time.strftime("%Y-%m-%d"), "host": platform.node(), "torch": torch.__version__,
            "triton": triton.__version__, "device": device}
    if device == "cuda":
        p = torch.cuda.get_device_properties(0)
        info |= {"gpu": p.name, "sms": p.multi_processor_count, "memory_gib": round(p.total_memory / 2**30, 1),
                 "capability": f"{p.major}.{p.minor}", "cuda": torch.version.cuda}
    return info


def run_tests(device: str) -> dict:
    """tests/kernels on `device`, in a child pytest: its summary line and exit code."""
    if device == "cpu":
        return {"returncode": 0, "summary": "skipped in the smoke run (CI runs tests/kernels on the CPU)"}
    env = {**os.environ, "INGOT_KERNEL_DEVICE": device, "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", "tests/kernels", "-q", "-p", "no:cacheprovider", "-rfEs"],
                          cwd=REPO, env=env, capture_output=True, text=True)
    print(proc.stdout[-4000:], proc.stderr[-2000:], sep="\n")
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    return {"returncode": proc.returncode, "summary": lines[-1] if lines else "",
            "seconds": time.perf_counter() - start}


# ---- timing


def timed(device: str, fn, shapes: dict) -> float:
    """Seconds per call of fn: a CUDA graph of `replays` calls, replayed; median of `rounds`. On the CPU
    (the smoke run), one plain call."""
    import torch

    if device == "cpu":
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start
    fn()  # compile outside the capture
    torch.cuda.synchronize()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(shapes["replays"]):
            fn()
    times = []
    for _ in range(shapes["rounds"]):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop) / 1e3 / shapes["replays"])
    return statistics.median(times)


# ---- read bandwidth


def read_bandwidth(device: str, nbytes: int) -> dict:
    """GB/s reading a `nbytes` bf16 buffer once: a Triton streaming kernel, and torch.sum."""
    import torch
    import triton
    import triton.language as tl

    @triton.jit
    def read_kernel(x, out, n, BLOCK_ELEMS: tl.constexpr):
        pid, programs = tl.program_id(0), tl.num_programs(0)
        acc = tl.zeros([BLOCK_ELEMS], tl.float32)
        for first in range(pid * BLOCK_ELEMS, n, programs * BLOCK_ELEMS):
            offs = first + tl.arange(0, BLOCK_ELEMS)
            acc += tl.load(x + offs, mask=offs < n, other=0.0).to(tl.float32)
        tl.store(out + pid, tl.sum(acc, 0))

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    x = torch.ones(nbytes // dtype.itemsize, dtype=dtype, device=device)
    programs = torch.cuda.get_device_properties(0).multi_processor_count * 8 if device == "cuda" else 2
    out = torch.empty(programs, dtype=torch.float32, device=device)
    shapes = {"rounds": 5, "replays": 5} if device == "cuda" else {"rounds": 1, "replays": 1}
    kernel = timed(device, lambda: read_kernel[(programs,)](x, out, x.numel(), BLOCK_ELEMS=4096, num_warps=8), shapes)
    total = timed(device, lambda: x.sum(), shapes)
    return {"bytes": x.nbytes, "triton_gbps": x.nbytes / kernel / 1e9, "torch_sum_gbps": x.nbytes / total / 1e9}


# ---- workloads


def paged_batch(device: str, past: list[int], new: list[int], shapes: dict, seed: int = 0) -> dict:
    """Tensors of one call: sequences with `past` cached tokens adding `new`, blocks scattered."""
    import torch

    g = torch.Generator().manual_seed(seed)  # the block ids; the values come from the device's generator
    torch.manual_seed(seed)
    block, kv, dim = shapes["block_size"], shapes["kv_heads"], shapes["head_dim"]
    dtype = getattr(torch, shapes["dtype"])
    need = [-(-(p + n) // block) for p, n in zip(past, new)]
    ids = torch.randperm(sum(need), generator=g)
    tables = torch.zeros(len(past), max(need), dtype=torch.int32)
    start = 0
    for b, n in enumerate(need):
        tables[b, :n] = ids[start:start + n]
        start += n
    qsl = torch.tensor([0, *torch.tensor(new).cumsum(0).tolist()], dtype=torch.int32)
    seq = torch.repeat_interleave(torch.arange(len(new)), torch.tensor(new))
    pos = torch.arange(int(qsl[-1])) - qsl[seq] + torch.tensor(past)[seq]
    slots = (tables[seq, pos // block] * block + pos % block).to(torch.int32)
    tokens = int(qsl[-1])

    def randn(*s):
        return torch.randn(*s, device=device, dtype=dtype)

    return {"query": randn(tokens, shapes["heads"], dim), "key": randn(tokens, kv, dim),
            "value": randn(tokens, kv, dim),
            "key_cache": randn(kv, sum(need), block, dim), "value_cache": randn(kv, sum(need), block, dim),
            "slot_mapping": slots.to(device), "block_tables": tables.to(device),
            "context_lens": torch.tensor([p + n for p, n in zip(past, new)], dtype=torch.int32, device=device),
            "query_start_loc": qsl.to(device)}


def call(batch: dict, shapes: dict, kernel: str, **kw):
    from ingot.kernels import paged_attention

    return paged_attention(**batch, num_heads=shapes["heads"], num_kv_heads=shapes["kv_heads"],
                           scale=shapes["head_dim"] ** -0.5, kernel=kernel, **kw)


def bench_decode(device: str, batch_size: int, context: int, shapes: dict) -> dict:
    """One decode step of `batch_size` sequences at `context` tokens each."""
    import torch

    from ingot.kernels.paged import _sms, decode_splits

    batch = paged_batch(device, [context - 1] * batch_size, [1] * batch_size, shapes)
    kv_bytes = 2 * batch_size * context * shapes["kv_heads"] * shapes["head_dim"] * batch["key_cache"].element_size()
    splits = decode_splits(batch_size, shapes["kv_heads"], context, _sms(batch["query"]))
    row = {"batch": batch_size, "context": context, "splits": splits, "kv_bytes": kv_bytes}
    for name, kernel, extra in (("auto", "auto", {"max_context_len": context}), ("unsplit", "decode", {}),
                                ("fused", "fused", {})):
        row[f"{name}_s"] = timed(device, lambda k=kernel, e=extra: call(batch, shapes, k, **e), shapes)
    q = batch["query"].view(batch_size, shapes["heads"], 1, shapes["head_dim"])
    k = torch.randn(batch_size, shapes["kv_heads"], context, shapes["head_dim"], device=device, dtype=q.dtype)
    v = torch.randn_like(k)
    row["sdpa_s"] = timed(device, lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, enable_gqa=True),
                          shapes)
    return row


def bench_prefill(device: str, seqs: int, new: int, past: int, shapes: dict) -> dict:
    """`seqs` chunks of `new` tokens after `past` cached ones (0: prompts from scratch)."""
    import torch

    batch = paged_batch(device, [past] * seqs, [new] * seqs, shapes)
    row = {"seqs": seqs, "new": new, "past": past}
    row["prefill_s"] = timed(device, lambda: call(batch, shapes, "prefill"), shapes)
    row["fused_s"] = timed(device, lambda: call(batch, shapes, "fused"), shapes)
    h, dim = shapes["heads"], shapes["head_dim"]
    q = batch["query"].view(seqs, new, h, dim).transpose(1, 2)
    k = torch.randn(seqs, shapes["kv_heads"], past + new, dim, device=device, dtype=q.dtype)
    v = torch.randn_like(k)
    # causal over the chunk's own tokens after the whole past: a mask when there is a past
    mask = None if not past else torch.ones(new, past + new, dtype=torch.bool, device=device).tril(past)
    row["sdpa_s"] = timed(device, lambda: torch.nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, is_causal=not past, enable_gqa=True), shapes)
    row["flops"] = 4 * seqs * h * dim * new * (past + (new + 1) / 2)  # QK^T and PV over the visible keys
    return row


# ---- report


def markdown(r: dict) -> str:
    bw = r["read_bandwidth"]["triton_gbps"]
    m = r["machine"]
    lines = [f"GPU kernels on {m.get('gpu', m['device'])} ({m['date']}; torch {m['torch']}, triton {m['triton']}); "
             f"read bandwidth {bw:,.0f} GB/s (Triton streaming read; torch.sum "
             f"{r['read_bandwidth']['torch_sum_gbps']:,.0f} GB/s)", ""]
    if r["tests"] is not None:
        lines += [f"tests/kernels on {m['device']}: {r['tests']['summary']}", ""]
    lines += ["| batch | context | splits | decode µs | GB/s | % of read BW | unsplit µs | fused µs | SDPA µs |",
              "|---|---|---|---|---|---|---|---|---|"]
    for d in r["decode"]:
        gbps = d["kv_bytes"] / d["auto_s"] / 1e9
        lines.append(f"| {d['batch']} | {d['context']} | {d['splits']} | {d['auto_s'] * 1e6:,.1f} | {gbps:,.0f} | "
                     f"{100 * gbps / bw:.0f}% | {d['unsplit_s'] * 1e6:,.1f} | {d['fused_s'] * 1e6:,.1f} | "
                     f"{d['sdpa_s'] * 1e6:,.1f} |")
    lines += ["", "| sequences x new (past) | prefill µs | TFLOP/s | fused µs | SDPA µs |", "|---|---|---|---|---|"]
    for p in r["prefill"]:
        lines.append(f"| {p['seqs']} x {p['new']} ({p['past']}) | {p['prefill_s'] * 1e6:,.1f} | "
                     f"{p['flops'] / p['prefill_s'] / 1e12:.1f} | {p['fused_s'] * 1e6:,.1f} | "
                     f"{p['sdpa_s'] * 1e6:,.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
