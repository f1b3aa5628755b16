"""The CPU target's attention windows mapped onto the KV pool against gathered copies, in one run.

    HF_HUB_OFFLINE=1 .venv/bin/python scripts/bench_windows.py BUNDLE --rounds 3

One engine, one pool (`--kv-cache-memory`, default 1 GiB); each round runs the `ingot bench`
workload (Shakespeare prompts of `--prompt-len` tokens, `--output-len` greedy tokens, EOS ignored;
16 requests at C=1, 32 at C=16, each run after one unmeasured warm-up batch) with the windows
mapped onto the pool's pages (ingot/runtime/llm/page_map.py), then with gathered copies
(cpu_lowering.Windows, the fallback), each mode with fresh windows, each run on prompts not seen
before in the run (no prefix-cache hits). Prints per round and mode:
output tok/s, and the memory the windows hold beside the pool after the run (copies, scratch rows
and page tables), also as a share of the pool; then the median of each round's mapped / copied
speed ratio.
"""

from __future__ import annotations

import argparse
import statistics

from ingot.runtime.llm import LLM
from ingot.runtime.llm.bench import BenchConfig, prompts_from, run_bench
from ingot.runtime.llm.cpu_lowering import Windows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", default="1,16")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=64)
    ap.add_argument("--kv-cache-memory", default="1GiB")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    llm = LLM(args.bundle, kv_cache_memory=args.kv_cache_memory, threads=args.threads)
    runner = llm.engine.runner
    mapped = runner.mapped
    if mapped is None:
        ap.error(f"{args.bundle}: its windows cannot be mapped onto the pool here (see page_map.supported)")
    pool = runner.kv.nbytes
    print(f"pool {pool / 2**20:.0f} MiB; at load: {runner.memory()}")
    print("| round | mode | C | tok/s | beside the pool | of the pool |\n|---|---|---|---|---|---|")
    speed: dict[tuple[str, int], list[float]] = {}
    levels = [int(c) for c in args.concurrency.split(",")]
    total = args.rounds * 2 * sum(16 if c == 1 else 32 for c in levels)
    info = runner.info
    fresh, _, _ = prompts_from(llm.engine.tokenizer.tok, info.vocab_size, info.eos_token_ids,
                               BenchConfig(num_requests=total, prompt_len=args.prompt_len, concurrency=1))
    for rnd in range(args.rounds):
        for mode in ("mapped", "copied"):
            runner.mapped = mapped if mode == "mapped" else None  # the runner gathers copies without it
            runner.windows = Windows(runner.info)  # fresh: each mode's own memory
            for c in levels:
                cfg = BenchConfig(num_requests=16 if c == 1 else 32, prompt_len=args.prompt_len,
                                  output_len=args.output_len, concurrency=c)
                # prompts not seen before in this run, so no run finds its prompts in the prefix cache
                prompts, fresh = fresh[:cfg.num_requests], fresh[cfg.num_requests:]
                tok_s = run_bench(llm.engine, cfg, prompts).output_tokens_per_s
                held = runner.windows_bytes()
                speed.setdefault((mode, c), []).append(tok_s)
                print(f"| {rnd} | {mode} | {c} | {tok_s:.1f} | {held / 2**20:.1f} MiB | {held / pool:.1%} |", flush=True)
    for c in levels:
        ratios = [m / g for m, g in zip(speed[("mapped", c)], speed[("copied", c)])]
        print(f"C={c}: mapped / copied {statistics.median(ratios):.2f} (rounds: {', '.join(f'{r:.2f}' for r in ratios)})")


if __name__ == "__main__":
    main()
