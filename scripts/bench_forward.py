"""One prefill of P tokens on several paged plans, calls interleaved in one process: median
seconds per call and each plan's speed against the first (the reference).

    .venv/bin/python scripts/bench_forward.py REFERENCE PLAN [PLAN ...] [--tokens 128] [--calls 25]
        [--threads 2] [--spin/--no-spin]

Each call is `input_ids` of one sequence from scratch and the logits of its last row, what
generation asks of a prompt. Interleaving the calls keeps a slow minute from favouring one plan.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np


def main() -> None:
    import onnxruntime as ort

    from ingot.plans import detect_host, open_bundle, select_target
    from ingot.plans.llm import blocks_needed
    from ingot.runtime.llm.batch import pack
    from ingot.runtime.llm.cpu_lowering import plan_feeds, window_feeds

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("plans", type=Path, nargs="+")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--calls", type=int, default=25)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--spin", action=argparse.BooleanOptionalAction, default=False,
                    help="ONNX Runtime's spinning threads (off: sessions in one process do not steal each other's cores)")
    args = ap.parse_args()
    tokens = np.random.default_rng(0).integers(100, 20000, args.tokens).tolist()
    sessions, feeds = [], []
    for plan in args.plans:
        bundle = open_bundle(plan)
        info, target = bundle.manifest.llm, select_target(bundle.manifest, detect_host(), None)
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if args.spin else "0")
        for key, value in target.session_config.items():
            options.add_session_config_entry(key, value)
        sessions.append(ort.InferenceSession(str(bundle.path(target.entrypoint)), options,
                                             providers=["CPUExecutionProvider"]))
        blocks = list(range(blocks_needed(args.tokens, info.kv_block_size)))  # never read: no past
        batch = pack([tokens], [0], [blocks], info.kv_block_size, [[args.tokens - 1]])
        feeds.append(plan_feeds(batch) | window_feeds(batch, info, None))
    times: list[list[float]] = [[] for _ in sessions]
    for call in range(args.calls + 1):
        for i, (s, f) in enumerate(zip(sessions, feeds)):
            started = time.perf_counter()
            s.run(None, f)
            if call:  # the first round warms up
                times[i].append(time.perf_counter() - started)
    medians = [float(np.median(t)) for t in times]
    for plan, m in zip(args.plans, medians):
        print(f"{plan.name}: {m * 1000:.1f} ms a call, {medians[0] / m:.3f}x the reference")


if __name__ == "__main__":
    main()
