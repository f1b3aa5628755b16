"""Ingot vs its peers on one workload, in one run: SmolLM2-135M, N requests of P prompt tokens
(real Shakespeare windows) and G greedy output tokens (EOS ignored).

    .venv/bin/python scripts/bench_llm.py BUNDLE [--num-requests 32 --prompt-len 128 --output-len 64]
        [--concurrency 1,16] [--peers ortgenai,transformers] [--max-num-tokens 2048,256] [--prefix 512]

Ingot: the in-flight batcher with at most C requests in flight (a new one starts when one
finishes). Peers (scripts/peers.py): static batches of C. TTFT is measured from a request's
submission (Ingot) or its batch's start (peers). Prints one JSON line per run, then ratios.
`--rounds N` runs Ingot and the peers in turn N times and reports the median of the rounds'
ratios, so that a slow minute on a shared machine does not decide a ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from bench_llm_peers import parse_concurrency, run_peers  # noqa: E402
from peers import DEFAULT_CACHE, workload  # noqa: E402

from ingot.runtime.llm.bench import BenchConfig, run_bench  # noqa: E402
from ingot.runtime.llm.engine import LLMEngine  # noqa: E402
from ingot.runtime.llm.runner import load_runner  # noqa: E402


def ingot_run(bundle: Path, prompts, output_len: int, concurrency: int, budget: int | None, threads: int) -> dict:
    engine = LLMEngine(load_runner(bundle, kv_cache_memory=1 << 30, threads=threads), max_num_tokens=budget)
    cfg = BenchConfig(num_requests=len(prompts), prompt_len=len(prompts[0]), output_len=output_len,
                      concurrency=concurrency)
    r = run_bench(engine, cfg, prompts)
    return {"peer": "ingot", **r.model_dump(include={"concurrency", "num_requests", "prompt_len", "output_len",
            "output_tokens_per_s", "ttft_p50_s", "ttft_p90_s", "tpot_p50_s", "wall_s", "preemptions"}),
            "max_num_tokens": engine.config.max_num_tokens}


def prefix_run(bundle: Path, prompts, prefix: int, threads: int) -> dict:
    """TTFT of a request whose first `prefix` tokens are cached, against the same request cold."""
    engine = LLMEngine(load_runner(bundle, kv_cache_memory=1 << 30, threads=threads))
    stream = [t for p in prompts for t in p]
    shared, tails = stream[:prefix], [stream[prefix + i * 16: prefix + (i + 1) * 16] for i in (0, 1)]
    ttft = []
    for i, tail in enumerate(tails):  # cold, then warm (same prefix, different tail)
        engine.add_request(f"p{i}", shared + tail, _params())
        while engine.has_unfinished():
            out = engine.step()
        ttft.append(out[-1].metrics.ttft_s)
    return {"peer": "ingot-prefix", "prefix_len": prefix, "cold_ttft_s": ttft[0], "warm_ttft_s": ttft[1],
            "warm_over_cold": ttft[1] / ttft[0]}


def _params():
    from ingot.runtime.llm.sampling import SamplingParams

    return SamplingParams(temperature=0, max_tokens=1, ignore_eos=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--num-requests", type=int, default=32)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=64)
    ap.add_argument("--concurrency", action="append")
    ap.add_argument("--peers", default="ortgenai,transformers")
    ap.add_argument("--max-num-tokens", default="", help="Ingot's token budget per step; a comma list runs each "
                    "(default: the plan's limit)")
    ap.add_argument("--prefix", type=int, default=512, help="prefix-cache check: shared prefix length (0: skip)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=1, help="repeat Ingot and the peers in turn; ratios are the median "
                    "of each round's (this machine's speed drifts over a run)")
    args = ap.parse_args()
    concurrency = parse_concurrency(args.concurrency or ["1,16"])
    prompts = workload(args.num_requests, args.prompt_len, cache=DEFAULT_CACHE)
    budgets = [int(b) for b in args.max_num_tokens.split(",") if b] or [None]
    peers = tuple(p for p in args.peers.split(",") if p)
    by_round = []
    for r in range(args.rounds):
        rows: list[dict] = []

        def show(row: dict) -> None:
            rows.append(row | {"round": r} if args.rounds > 1 else row)
            print(json.dumps(rows[-1]), flush=True)

        for c in concurrency:
            for budget in budgets:
                show(ingot_run(args.bundle, prompts, args.output_len, c, budget, args.threads))
        if peers:
            run_peers(prompts, args.output_len, concurrency, peers, args.threads, DEFAULT_CACHE, [], on_row=show)
        if args.prefix:
            show(prefix_run(args.bundle, prompts, args.prefix, args.threads))
        by_round.append(ratios(rows))
        if args.rounds > 1:
            print(json.dumps({"round": r, "ratios": by_round[-1]}), flush=True)
    median = {k: statistics.median(x[k] for x in by_round) for k in by_round[0]}
    print(json.dumps({"ratios": median} | ({"rounds": args.rounds} if args.rounds > 1 else {})), flush=True)


def ratios(rows: list[dict]) -> dict:
    mine = [r for r in rows if r["peer"] == "ingot"]
    out = {}
    for r in rows:
        if r["peer"] in ("ingot", "ingot-prefix"):
            continue
        for m in (m for m in mine if m["concurrency"] == r.get("concurrency")):
            tag = f"ingot(budget {m['max_num_tokens']})/{r['peer']} @C={m['concurrency']}"
            out[f"{tag} tok/s"] = m["output_tokens_per_s"] / r["output_tokens_per_s"]
            out[f"{tag} ttft_p50"] = m["ttft_p50_s"] / r["ttft_p50_s"]
    for budget in dict.fromkeys(m["max_num_tokens"] for m in mine):
        runs = sorted((m for m in mine if m["max_num_tokens"] == budget), key=lambda m: m["concurrency"])
        if len(runs) > 1:
            out[f"ingot(budget {budget}) tok/s C={runs[-1]['concurrency']} / C={runs[0]['concurrency']}"] = (
                runs[-1]["output_tokens_per_s"] / runs[0]["output_tokens_per_s"])
    return out


if __name__ == "__main__":
    started = time.perf_counter()
    main()
    print(f"total runtime {time.perf_counter() - started:.0f} s", file=sys.stderr)
