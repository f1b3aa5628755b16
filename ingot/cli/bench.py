"""`ingot bench DIR`: the serving benchmark (ingot/runtime/llm/bench.py) from the command line."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer


def bench(
    bundle: Annotated[Path, typer.Argument(help="LLM bundle folder.")],
    num_requests: Annotated[int, typer.Option(help="Requests in all.")] = 32,
    prompt_len: Annotated[int, typer.Option(help="Prompt tokens of every request (from real text).")] = 128,
    output_len: Annotated[int, typer.Option(help="Output tokens of every request (EOS ignored).")] = 64,
    concurrency: Annotated[int, typer.Option(help="Requests in flight at most.")] = 16,
    request_rate: Annotated[float | None, typer.Option(help="Poisson arrivals/s (default: all at once).")] = None,
    prefix_len: Annotated[int, typer.Option(help="Leading prompt tokens every request shares (prefix caching).")] = 0,
    seed: Annotated[int, typer.Option(help="Seed of the arrivals (and of synthetic prompts).")] = 0,
    kv_cache_memory: Annotated[str | None, typer.Option(help="KV cache: bytes (512MiB) or a RAM fraction (0.5).")] = None,
    threads: Annotated[int | None, typer.Option(help="Intra-op threads of the model (default: the runtime's).")] = None,
    max_num_tokens: Annotated[int | None, typer.Option(help="Token budget per step, up to the plan's limit (default 768; smaller: earlier first tokens).")] = None,
    target: Annotated[str | None, typer.Option(help="Run this target instead of the automatic choice.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable output on stdout.")] = False,
) -> None:
    """Measure throughput and latency of an LLM bundle: N requests, at most C in flight."""
    from pydantic import ValidationError

    from ingot.cli import render
    from ingot.cli.generate import check_llm_bundle, parse_memory
    from ingot.runtime.errors import InputError
    from ingot.runtime.llm import LLM
    from ingot.runtime.llm.bench import BenchConfig, run_bench

    try:
        cfg = BenchConfig(num_requests=num_requests, prompt_len=prompt_len, output_len=output_len,
                          concurrency=concurrency, request_rate=request_rate, prefix_len=prefix_len, seed=seed)
    except ValidationError as e:
        err = e.errors()[0]
        raise InputError(f"--{str(err['loc'][0]).replace('_', '-')}: {err['msg'].lower()}") from None
    memory = parse_memory(kv_cache_memory)
    check_llm_bundle(bundle)
    if max_num_tokens is not None and max_num_tokens < 1:
        raise InputError(f"--max-num-tokens {max_num_tokens}: must be at least 1")
    with LLM(bundle, kv_cache_memory=memory, threads=threads, target=target, max_num_tokens=max_num_tokens) as llm:
        print(llm.startup_report(), file=sys.stderr, flush=True)
        result = run_bench(llm.engine, cfg)
    if json_out:
        render.print_json(result.model_dump())
        return
    rate = "all at once" if cfg.request_rate is None else f"Poisson {cfg.request_rate}/s"
    render.out.print(f"{result.num_requests} requests x ({result.prompt_len} prompt + {result.output_len} output) "
                     f"tokens, concurrency {result.concurrency}, {rate}, prefix {result.prefix_len}, "
                     f"prompts from {result.prompt_source}")
    render.out.print(f"  wall {result.wall_s:.2f}s  output {result.output_tokens_per_s:.1f} tok/s  "
                     f"total {result.total_tokens_per_s:.1f} tok/s  {result.requests_per_s:.2f} req/s")
    render.out.print(f"  TTFT p50 {result.ttft_p50_s * 1e3:.1f} ms  p90 {result.ttft_p90_s * 1e3:.1f} ms  "
                     f"TPOT p50 {result.tpot_p50_s * 1e3:.1f} ms  p90 {result.tpot_p90_s * 1e3:.1f} ms")
    render.out.print(f"  preemptions {result.preemptions}  prefix cache hit rate {result.prefix_cache_hit_rate:.1%}")
