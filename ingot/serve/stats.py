"""Per-version inference statistics, as Triton's ModelStatistics reports them."""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, seconds: float, count: int = 1) -> None:
        self.count += count
        self.ns += int(seconds * 1e9)


@dataclass
class VersionStats:
    """Counts and summed durations of one model version (Triton's InferStatistics)."""

    success: Duration = field(default_factory=Duration)  # whole requests, queue to last response
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)  # waiting for a batch, or for the first step
    compute_infer: Duration = field(default_factory=Duration)  # plan calls
    inference_count: int = 0  # requests' batch items inferred (generated tokens for an LLM)
    execution_count: int = 0  # plan calls (engine steps for an LLM)
    last_inference_ms: int = 0
    batch_sizes: dict[int, Duration] = field(default_factory=dict)  # batch size → compute of those calls

    def request_done(self, started: float, ok: bool) -> None:
        (self.success if ok else self.fail).add(time.perf_counter() - started)
        self.last_inference_ms = int(time.time() * 1000)

    def executed(self, batch: int, seconds: float) -> None:
        self.execution_count += 1
        self.inference_count += batch
        self.compute_infer.add(seconds, batch)
        self.batch_sizes.setdefault(batch, Duration()).add(seconds)
