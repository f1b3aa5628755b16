"""Speed of quantized CPU plans against the fp32 plan, measured in one interleaved run.

    .venv/bin/python scripts/bench_quant.py FP32_BUNDLE QUANT_BUNDLE [QUANT_BUNDLE ...] --tokens 128

Each round runs every plan once on the same `tokens`-long input (batch 1), in turn, so
machine noise hits all plans alike; the figure is the ratio of medians to the first bundle.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from ingot.plans import open_bundle
from ingot.runtime import load


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundles", nargs="+", type=Path, help="reference (fp32) bundle first")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    models = [load(b, threads=args.threads) for b in args.bundles]
    vocab = int(models[0].manifest.outputs[0].shape[-1])
    ids = np.random.default_rng(0).integers(0, vocab, size=(1, args.tokens), dtype=np.int64)
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    for m in models:  # warm-up: session optimizations, allocations
        m.run(feeds)
    times: list[list[float]] = [[] for _ in models]
    for _ in range(args.rounds):
        for i, m in enumerate(models):
            start = time.perf_counter()
            m.run(feeds)
            times[i].append(time.perf_counter() - start)
    ref = statistics.median(times[0])
    rows = []
    for b, t in zip(args.bundles, times):
        med = statistics.median(t)
        size = sum(f.size for f in open_bundle(b, verify=False).manifest.files())
        rows.append({"bundle": str(b), "precision": open_bundle(b, verify=False).manifest.precision,
                     "median_s": round(med, 4), "speedup_vs_first": round(ref / med, 3), "bundle_mb": round(size / 1e6, 1)})
    print(json.dumps({"tokens": args.tokens, "rounds": args.rounds, "threads": args.threads, "results": rows}, indent=2))


if __name__ == "__main__":
    main()
