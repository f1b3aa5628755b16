"""`ingot bench DIR`: the serving benchmark (ingot/runtime/llm/bench.py) from the command line;
`ingot bench --url URL --tokenizer DIR`: the same workload against a running server
(ingot/serve/bench_client.py)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from ingot.runtime.llm.bench import BenchConfig, BenchResult

# --kv-cache-memory's help (bench, run, serve): what the default is, and what the budget leaves out
KV_DEFAULT = "max_num_seqs sequences of max_model_len, at most 25% of available RAM."
KV_NOT_COVERED = ("Not counted in it: the weights, ONNX Runtime's buffers, and on the CPU target the attention "
                  "windows' page tables and prefill scratch, or, where windows cannot map the pool's pages, "
                  "a copy of the running sequences' K/V (their bound is printed at load).")

LOCAL_ONLY = ("kv_cache_memory", "threads", "max_num_tokens", "target")


def bench(
    bundle: Annotated[Path | None, typer.Argument(help="LLM bundle folder (with --url: the default --tokenizer).")] = None,
    num_requests: Annotated[int, typer.Option(help="Requests in all.")] = 32,
    prompt_len: Annotated[int, typer.Option(help="Prompt tokens of every request (from real text).")] = 128,
    output_len: Annotated[int, typer.Option(help="Output tokens of every request (EOS ignored).")] = 64,
    concurrency: Annotated[int, typer.Option(help="Requests in flight at most.")] = 16,
    request_rate: Annotated[float | None, typer.Option(help="Poisson arrivals/s (default: all at once).")] = None,
    prefix_len: Annotated[int, typer.Option(help="Leading prompt tokens every request shares (prefix caching).")] = 0,
    seed: Annotated[int, typer.Option(help="Seed of the arrivals (and of synthetic prompts).")] = 0,
    url: Annotated[str | None, typer.Option(help="Benchmark a running `ingot serve`: grpc://HOST:PORT or http://HOST:PORT.")] = None,
    tokenizer: Annotated[Path | None, typer.Option(help="With --url: a bundle (or tokenizer folder) to make the prompts with.")] = None,
    model: Annotated[str | None, typer.Option(help="With --url: the served model (default: the only one).")] = None,
    kv_cache_memory: Annotated[str | None, typer.Option(help="The paged KV cache: bytes (512MiB) or a fraction of available RAM (0.5). Default: " + KV_DEFAULT + " " + KV_NOT_COVERED, show_default=False)] = None,
    threads: Annotated[int | None, typer.Option(help="Intra-op threads of the model (default: the runtime's).")] = None,
    max_num_tokens: Annotated[int | None, typer.Option(help="Token budget per step, up to the plan's limit (default 768; smaller: earlier first tokens).")] = None,
    target: Annotated[str | None, typer.Option(help="Run this target instead of the automatic choice.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable output on stdout.")] = False,
) -> None:
    """Throughput and latency of an LLM bundle, or of a server (--url). N requests, at most C in flight."""
    from ingot.cli import render

    cfg = _config(num_requests=num_requests, prompt_len=prompt_len, output_len=output_len, concurrency=concurrency,
                  request_rate=request_rate, prefix_len=prefix_len, seed=seed)
    local = {"kv_cache_memory": kv_cache_memory, "threads": threads, "max_num_tokens": max_num_tokens, "target": target}
    if url is not None:
        result = _bench_server(url, tokenizer or bundle, model, cfg, local)
    else:
        result = _bench_local(bundle, cfg, tokenizer, model, **local)
    if json_out:
        render.print_json(result.model_dump())
        return
    _print(result)


def _config(**options) -> BenchConfig:
    from pydantic import ValidationError

    from ingot.cli.errors import UsageError
    from ingot.runtime.llm.bench import BenchConfig, check_prefix

    try:
        cfg = BenchConfig(**options)
    except ValidationError as e:
        err = e.errors()[0]
        raise UsageError(f"--{str(err['loc'][0]).replace('_', '-')}: {err['msg'].lower()}") from None
    check_prefix(cfg)  # before any bundle is loaded
    return cfg


def _bench_server(url: str, tokenizer: Path | None, model: str | None, cfg: BenchConfig,
                  local: dict[str, object]) -> BenchResult:
    from ingot.runtime.errors import InputError
    from ingot.serve.bench_client import run_server_bench

    given = [f"--{k.replace('_', '-')}" for k in LOCAL_ONLY if local[k] is not None]
    if given:
        raise InputError(f"{', '.join(given)}: for an in-process bench, not with --url (set it on `ingot serve`)")
    if tokenizer is None:
        raise InputError("--url needs --tokenizer DIR: the bundle whose tokenizer makes the prompts")
    return run_server_bench(url, cfg, tokenizer, model)


def _bench_local(bundle: Path | None, cfg: BenchConfig, tokenizer: Path | None, model: str | None,
                 kv_cache_memory: str | None, threads: int | None, max_num_tokens: int | None,
                 target: str | None) -> BenchResult:
    from ingot.cli.errors import UsageError
    from ingot.cli.generate import check_llm_bundle, parse_memory
    from ingot.runtime.errors import InputError
    from ingot.runtime.llm import LLM
    from ingot.runtime.llm.bench import run_bench

    if bundle is None:
        raise InputError("give an LLM bundle folder, or --url URL for a running server")
    if tokenizer is not None or model is not None:
        raise InputError("--tokenizer and --model go with --url")
    memory = parse_memory(kv_cache_memory)
    manifest = check_llm_bundle(bundle)
    if max_num_tokens is not None and max_num_tokens < 1:
        raise UsageError(f"--max-num-tokens {max_num_tokens}: must be at least 1")
    _note_plan_limits(manifest.llm, max_num_tokens, cfg.concurrency)
    with LLM(bundle, kv_cache_memory=memory, threads=threads, target=target, max_num_tokens=max_num_tokens) as llm:
        print(llm.startup_report(), file=sys.stderr, flush=True)
        return run_bench(llm.engine, cfg)


def _note_plan_limits(llm, max_num_tokens: int | None, concurrency: int) -> None:
    """Say so (on stderr) where an option goes past the plan's limits, which the engine applies."""
    if max_num_tokens is not None and max_num_tokens > llm.max_num_tokens:
        print(f"note: --max-num-tokens {max_num_tokens} clamped to the plan's limit {llm.max_num_tokens}",
              file=sys.stderr, flush=True)
    if concurrency > llm.max_num_seqs:
        print(f"note: --concurrency {concurrency}: at most {llm.max_num_seqs} requests (the plan's max_num_seqs) "
              "run at once; the others wait in the queue", file=sys.stderr, flush=True)


def _print(result: BenchResult) -> None:
    from ingot.cli import render

    r = result
    rate = "all at once" if r.request_rate is None else f"Poisson {r.request_rate}/s"
    where = "" if r.url is None else f", {r.model} at {r.url}"
    render.out.print(f"{r.num_requests} requests x ({r.prompt_len} prompt + {r.output_len} output) "
                     f"tokens, concurrency {r.concurrency}, {rate}, prefix {r.prefix_len}, "
                     f"prompts from {r.prompt_source}{where}")
    render.out.print(f"  wall {r.wall_s:.2f}s  output {r.output_tokens_per_s:.1f} tok/s  "
                     f"total {r.total_tokens_per_s:.1f} tok/s  {r.requests_per_s:.2f} req/s")
    render.out.print(f"  TTFT p50 {r.ttft_p50_s * 1e3:.1f} ms  p90 {r.ttft_p90_s * 1e3:.1f} ms  "
                     f"TPOT p50 {r.tpot_p50_s * 1e3:.1f} ms  p90 {r.tpot_p90_s * 1e3:.1f} ms")
    if r.url is None:
        render.out.print(f"  preemptions {r.preemptions}  prefix cache hit rate {r.prefix_cache_hit_rate:.1%}")
        return
    if r.itl_p50_s is not None:
        render.out.print(f"  ITL p50 {r.itl_p50_s * 1e3:.1f} ms  p90 {r.itl_p90_s * 1e3:.1f} ms  "
                         f"p99 {r.itl_p99_s * 1e3:.1f} ms")
    render.out.print(f"  errors {r.errors}" + (f" (the first: {r.first_error})" if r.first_error else ""), markup=False)
