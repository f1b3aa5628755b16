"""`ingot serve` against the in-process engine, in one run: what the gRPC server adds.

    .venv/bin/python scripts/bench_serve.py --llm LLM_BUNDLE [--encoder ENCODER_BUNDLE]
        [--num-requests 32 --prompt-len 128 --output-len 64 --concurrency 16] [--rounds 3] [--threads 2]

LLM: N requests of P prompt tokens (real Shakespeare windows, as scripts/bench_llm.py) and G
greedy output tokens, at most C in flight, streamed over gRPC by the stock tritonclient (aio,
one stream per request, as genai-perf does), against `ingot bench`'s `run_bench` on an engine
in this process with the same prompts (the server tokenizes their text back to the same
lengths); then the same over the OpenAI API (/v1/completions, streamed, token-id prompts
reversed so that nothing is in the prefix cache), and at C=1 the time to first token over HTTP
against in-process (8 requests each, prompts cut by one or two tokens to miss the cache). Rounds alternate the two, each on prompts not seen before (no prefix-cache hits);
the ratio is each round's.

Encoder: 32 concurrent clients each sending one sentence per request (ModelInfer, `text`
input), on a model served with dynamic batching and on the same bundle served without it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))


def start(path: Path, threads: int) -> tuple[subprocess.Popen, str]:
    proc, urls = start_urls(path, threads)
    return proc, urls["grpc"]


def start_urls(path: Path, threads: int) -> tuple[subprocess.Popen, dict]:
    proc = subprocess.Popen([sys.executable, "-m", "ingot", "serve", str(path), "--grpc-port", "0", "--http-port", "0", "--metrics-port",
                             "0", "--threads", str(threads), "--kv-cache-memory", "1GiB"],
                            stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if not line.startswith("READY"):
        sys.exit("ingot serve did not start")
    return proc, dict(f.split("=", 1) for f in line.split()[1:])


async def served_llm(url: str, model: str, texts: list[str], output_len: int, concurrency: int) -> dict:
    import tritonclient.grpc as grpcclient
    import tritonclient.grpc.aio as aioclient

    client = aioclient.InferenceServerClient(url)
    gate = asyncio.Semaphore(concurrency)
    ttfts, tokens = [], 0

    async def one(text: str) -> None:
        nonlocal tokens
        inputs = [grpcclient.InferInput("text_input", [1], "BYTES"), grpcclient.InferInput("max_tokens", [1], "INT32"),
                  grpcclient.InferInput("ignore_eos", [1], "BOOL"), grpcclient.InferInput("temperature", [1], "FP32")]
        inputs[0].set_data_from_numpy(np.array([text.encode()], dtype=object))
        inputs[1].set_data_from_numpy(np.array([output_len], dtype=np.int32))
        inputs[2].set_data_from_numpy(np.array([True]))
        inputs[3].set_data_from_numpy(np.array([0.0], dtype=np.float32))

        async def requests():
            yield {"model_name": model, "inputs": inputs}

        async with gate:
            started, first = time.perf_counter(), None
            async for result, error in client.stream_infer(requests()):
                if error is not None:
                    raise error
                if first is None:
                    first = time.perf_counter() - started
                tokens += 1 if result.as_numpy("text_output") is not None else 0
                if result.get_response().parameters["triton_final_response"].bool_param:
                    break
            ttfts.append(first)

    started = time.perf_counter()
    await asyncio.gather(*(one(t) for t in texts))
    wall = time.perf_counter() - started
    await client.close()
    return {"responses": tokens, "output_tokens_per_s": len(texts) * output_len / wall,
            "ttft_p50_s": float(np.median(ttfts)), "wall_s": wall}


async def served_http(http: str, model: str, prompts: list[list[int]], output_len: int, concurrency: int) -> dict:
    """The same workload over the OpenAI API: /v1/completions, token-id prompts, streamed."""
    import httpx2

    gate = asyncio.Semaphore(concurrency)
    ttfts = []

    async def one(client, ids: list[int]) -> None:
        body = {"model": model, "prompt": ids, "max_tokens": output_len, "temperature": 0, "ignore_eos": True,
                "stream": True}
        async with gate:
            started, first = time.perf_counter(), None
            async with client.stream("POST", f"http://{http}/v1/completions", json=body) as r:
                assert r.status_code == 200, await r.aread()
                async for line in r.aiter_lines():
                    if first is None and line.startswith("data: {"):
                        first = time.perf_counter() - started
            ttfts.append(first)

    limits = httpx2.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx2.AsyncClient(timeout=300, limits=limits) as client:
        started = time.perf_counter()
        await asyncio.gather(*(one(client, p) for p in prompts))
        wall = time.perf_counter() - started
    return {"output_tokens_per_s": len(prompts) * output_len / wall, "ttft_p50_s": float(np.median(ttfts)),
            "wall_s": wall}


def in_process(engine, prompts, output_len: int, concurrency: int) -> dict:
    from ingot.runtime.llm.bench import BenchConfig, run_bench

    cfg = BenchConfig(num_requests=len(prompts), prompt_len=len(prompts[0]), output_len=output_len,
                      concurrency=concurrency)
    r = run_bench(engine, cfg, prompts)
    return {"output_tokens_per_s": r.output_tokens_per_s, "ttft_p50_s": r.ttft_p50_s, "wall_s": r.wall_s}


def bench_llm(bundle: Path, args) -> None:
    from peers import workload

    from ingot.runtime.llm.engine import LLMEngine
    from ingot.runtime.llm.runner import load_runner

    engine = LLMEngine(load_runner(bundle, kv_cache_memory=1 << 30, threads=args.threads))
    tok = engine.tokenizer.tok
    n = args.num_requests
    prompts = workload(n * args.rounds + args.concurrency, args.prompt_len,
                       tok=lambda text, add_special_tokens: {"input_ids": tok.encode(text, add_special_tokens=False).ids})
    warm, prompts = prompts[: args.concurrency], prompts[args.concurrency:]
    rounds = [prompts[i * n: (i + 1) * n] for i in range(args.rounds)]  # fresh prompts each round: no prefix hits
    lengths = [len(engine.tokenize(tok.decode(p))) for p in prompts]
    print(json.dumps({"served_prompt_tokens_min": min(lengths), "max": max(lengths)}))
    proc, urls = start_urls(bundle, args.threads)
    url, http, name = urls["grpc"], urls["http"], bundle.name
    try:
        asyncio.run(served_llm(url, name, [tok.decode(p) for p in warm], args.output_len, args.concurrency))
        asyncio.run(served_http(http, name, warm, args.output_len, args.concurrency))
        ratios, http_ratios, ttft_gaps = [], [], []
        for i in range(args.rounds):
            texts = [tok.decode(p) for p in rounds[i]]
            s = asyncio.run(served_llm(url, name, texts, args.output_len, args.concurrency))
            h = asyncio.run(served_http(http, name, [p[::-1] for p in rounds[i]], args.output_len, args.concurrency))
            r = in_process(engine, rounds[i], args.output_len, args.concurrency)
            ratios.append(s["output_tokens_per_s"] / r["output_tokens_per_s"])
            http_ratios.append(h["output_tokens_per_s"] / r["output_tokens_per_s"])
            one = rounds[i][:8]  # C=1: time to first token over HTTP against in-process
            h1 = asyncio.run(served_http(http, name, [p[1:] for p in one], args.output_len, 1))
            r1 = in_process(engine, [p[2:] for p in one], args.output_len, 1)
            ttft_gaps.append(h1["ttft_p50_s"] - r1["ttft_p50_s"])
            print(json.dumps({"round": i, "grpc": s, "http": h, "in_process": r, "grpc/in_process tok/s": ratios[-1],
                              "http/in_process tok/s": http_ratios[-1], "C=1 ttft http": h1["ttft_p50_s"],
                              "C=1 ttft in_process": r1["ttft_p50_s"]}))
        print(json.dumps({"llm grpc/in_process tok/s (median)": statistics.median(ratios),
                          "llm http/in_process tok/s (median)": statistics.median(http_ratios),
                          "C=1 ttft http - in_process, ms (median)": 1000 * statistics.median(ttft_gaps)}))
    finally:
        proc.terminate()
        proc.wait(60)


async def encoder_load(url: str, model: str, sentences: list[str], clients: int, per_client: int) -> float:
    import tritonclient.grpc as grpcclient
    import tritonclient.grpc.aio as aioclient

    client = aioclient.InferenceServerClient(url)

    async def one(i: int) -> None:
        for j in range(per_client):
            t = grpcclient.InferInput("text", [1], "BYTES")
            t.set_data_from_numpy(np.array([sentences[(i + j) % len(sentences)].encode()], dtype=object))
            await client.infer(model, [t])

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(clients)))
    wall = time.perf_counter() - started
    await client.close()
    return clients * per_client / wall


def bench_encoder(bundle: Path, args) -> None:
    sentences = ["A man is eating food.", "A man is eating a piece of bread.", "The new movie is awesome.",
                 "A man is playing a guitar.", "The cat sits outside.", "Two men pushed carts through the woods."]
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp)
        shutil.copytree(bundle, repo / "batched" / "1")
        shutil.copytree(bundle, repo / "single" / "1")
        (repo / "single" / "config.json").write_text(json.dumps({"dynamic_batching": None}))
        proc, url = start(repo, args.threads)
        try:
            asyncio.run(encoder_load(url, "batched", sentences, 32, 2))  # warm-up
            asyncio.run(encoder_load(url, "single", sentences, 32, 2))
            ratios = []
            for i in range(args.rounds):
                on = asyncio.run(encoder_load(url, "batched", sentences, 32, 8))
                off = asyncio.run(encoder_load(url, "single", sentences, 32, 8))
                ratios.append(on / off)
                print(json.dumps({"round": i, "batching on req/s": on, "off req/s": off, "ratio": on / off}))
            print(json.dumps({"encoder batching on/off req/s (median)": statistics.median(ratios)}))
        finally:
            proc.terminate()
            proc.wait(60)
    print(json.dumps({"plan alone, items/s by batch": plan_ceiling(bundle, sentences, args.threads)}))


def plan_ceiling(bundle: Path, sentences: list[str], threads: int) -> dict:
    """The plan called in this process, no server: one sentence a call, then 32 a call. Their ratio
    bounds what batching can give when the plan's compute, not the server, is the limit."""
    from ingot.runtime import load

    model = load(bundle, threads=threads)
    out = {}
    for batch in (1, 32):
        feeds = model.encode([sentences[i % len(sentences)] for i in range(batch)])
        for _ in range(3):
            model.run(feeds)
        started = time.perf_counter()
        for _ in range(30):
            model.run(feeds)
        out[batch] = 30 * batch / (time.perf_counter() - started)
    out["ratio"] = out[32] / out[1]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--llm", type=Path)
    ap.add_argument("--encoder", type=Path)
    ap.add_argument("--num-requests", type=int, default=32)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=64)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    if args.llm:
        bench_llm(args.llm, args)
    if args.encoder:
        bench_encoder(args.encoder, args)


if __name__ == "__main__":
    main()
