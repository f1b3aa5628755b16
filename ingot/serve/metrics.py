"""Prometheus metrics on `--metrics-port` `/metrics`, labelled by model and version.

- vLLM's LLM series under `ingot:`: latency histograms observed as requests finish; gauges and
  engine counters read from the engine at scrape time (scheduler stats).
- Triton's inference series (`nv_inference_*`), read from each version's statistics at scrape.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from ingot.serve.served import LLMServed, TensorServed

LABELS = ["model_name", "model_version"]
_LATENCY = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)


class Metrics:
    def __init__(self, manager):
        self.manager = manager
        self.registry = CollectorRegistry()
        r = self.registry
        self.ttft = Histogram("ingot:time_to_first_token_seconds", "Time to first token, queueing included.",
                              LABELS, buckets=_LATENCY, registry=r)
        self.itl = Histogram("ingot:inter_token_latency_seconds", "Mean time between output tokens of a request.",
                             LABELS, buckets=_LATENCY, registry=r)
        self.e2e = Histogram("ingot:e2e_request_latency_seconds", "Request latency, arrival to last token.",
                             LABELS, buckets=_LATENCY, registry=r)
        self.queue = Histogram("ingot:request_queue_time_seconds", "Time waiting before the first step.",
                               LABELS, buckets=_LATENCY, registry=r)
        self.prompt_tokens = Counter("ingot:prompt_tokens", "Prompt tokens of finished requests.", LABELS, registry=r)
        self.generation_tokens = Counter("ingot:generation_tokens", "Generated tokens of finished requests.",
                                         LABELS, registry=r)
        self.success = Counter("ingot:request_success", "Finished requests by finish reason.",
                               [*LABELS, "finished_reason"], registry=r)
        r.register(_Scraped(manager))
        self._server = None

    def finished(self, served: LLMServed, out) -> None:
        """A request's last output: observe its latencies and tokens."""
        labels = (served.name, str(served.version))
        m = out.metrics
        if m.ttft_s is not None:
            self.ttft.labels(*labels).observe(m.ttft_s)
        if m.e2e_s is not None:
            self.e2e.labels(*labels).observe(m.e2e_s)
        if m.queue_s is not None:
            self.queue.labels(*labels).observe(m.queue_s)
        tpot = m.tpot_s(out.num_output_tokens)
        if tpot is not None:
            self.itl.labels(*labels).observe(tpot)
        self.prompt_tokens.labels(*labels).inc(out.num_prompt_tokens)
        self.generation_tokens.labels(*labels).inc(out.num_output_tokens)
        reason = out.finish_reason.value if out.finish_reason is not None else "abort"
        self.success.labels(*labels, reason).inc()

    def aborted(self, served: LLMServed) -> None:
        """A request that ended before its last output (cancelled, timed out, failed)."""
        self.success.labels(served.name, str(served.version), "abort").inc()

    def start(self, host: str, port: int) -> int:
        """Serve /metrics; the port bound (port 0: any free one)."""
        from prometheus_client import start_http_server

        self._server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return self._server.server_port

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()


class _Triton(Metric):
    """A cumulative series under Triton's exact name (prometheus-client would add `_total` to a
    counter's name; Triton's dashboards query `nv_inference_count`, not `nv_inference_count_total`)."""

    def __init__(self, name: str, documentation: str, labels: list[str]):
        super().__init__(name, documentation, "unknown")
        self._labels = labels

    def add_metric(self, values: list[str], value: float) -> None:
        self.add_sample(self.name, dict(zip(self._labels, values)), value)


class _Scraped:
    """Gauges and cumulative counters read from the served versions at each scrape."""

    def __init__(self, manager):
        self.manager = manager

    def describe(self):
        return []

    def collect(self):
        fam = {
            "running": GaugeMetricFamily("ingot:num_requests_running", "Requests in the engine's running batch.", labels=LABELS),
            "waiting": GaugeMetricFamily("ingot:num_requests_waiting", "Requests waiting to be scheduled.", labels=LABELS),
            "kv": GaugeMetricFamily("ingot:kv_cache_usage_perc", "KV cache blocks in use, 0..1.", labels=LABELS),
            "free": GaugeMetricFamily("ingot:kv_cache_free_blocks", "Free KV cache blocks.", labels=LABELS),
            "blocks": GaugeMetricFamily("ingot:kv_cache_blocks", "KV cache blocks in the pool.", labels=LABELS),
            "preempt": CounterMetricFamily("ingot:num_preemptions", "Preemptions (recompute).", labels=LABELS),
            "pq": CounterMetricFamily("ingot:prefix_cache_queries", "Prompt tokens looked up in the prefix cache.", labels=LABELS),
            "ph": CounterMetricFamily("ingot:prefix_cache_hits", "Prompt tokens found in the prefix cache.", labels=LABELS),
            "ok": _Triton("nv_inference_request_success", "Successful requests.", labels=LABELS),
            "fail": _Triton("nv_inference_request_failure", "Failed requests.", labels=LABELS),
            "count": _Triton("nv_inference_count", "Inferences (batch items).", labels=LABELS),
            "exec": _Triton("nv_inference_exec_count", "Model executions.", labels=LABELS),
            "dur": _Triton("nv_inference_request_duration_us", "Request duration, summed.", labels=LABELS),
            "queue": _Triton("nv_inference_queue_duration_us", "Queue duration, summed.", labels=LABELS),
            "compute": _Triton("nv_inference_compute_infer_duration_us", "Compute duration, summed.", labels=LABELS),
            "pending": GaugeMetricFamily("nv_inference_pending_request_count", "Requests in flight.", labels=LABELS),
        }
        for served in self.manager.loaded():
            labels = [served.name, str(served.version)]
            s = served.stats
            fam["ok"].add_metric(labels, s.success.count)
            fam["fail"].add_metric(labels, s.fail.count)
            fam["count"].add_metric(labels, s.inference_count)
            fam["exec"].add_metric(labels, s.execution_count)
            fam["dur"].add_metric(labels, (s.success.ns + s.fail.ns) // 1000)
            fam["queue"].add_metric(labels, s.queue.ns // 1000)
            fam["compute"].add_metric(labels, s.compute_infer.ns // 1000)
            pending = served.in_flight
            if isinstance(served, TensorServed):
                pending = max(pending, served.batcher.pending)
            fam["pending"].add_metric(labels, pending)
            if isinstance(served, LLMServed):
                st = served.engine.engine.stats()
                fam["running"].add_metric(labels, st.num_running)
                fam["waiting"].add_metric(labels, st.num_waiting)
                fam["kv"].add_metric(labels, st.kv_cache_usage)
                fam["free"].add_metric(labels, st.num_free_blocks)
                fam["blocks"].add_metric(labels, st.num_blocks)
                fam["preempt"].add_metric(labels, st.num_preemptions)
                fam["pq"].add_metric(labels, st.prefix_cache_queries)
                fam["ph"].add_metric(labels, st.prefix_cache_hits)
        yield from fam.values()
