"""Run the float model on calibration feeds and collect statistics of chosen tensors.

The tensors are exposed as extra graph outputs of a copy of the model; the caller's model
is not touched. Memory stays bounded whatever the number of feeds: |x| values and rows
are kept as weighted reservoir samples of fixed size (deterministic for a given seed), and
the Gram matrix (GPTQ's Hessian, for the tensors asked) is (C, C) however many rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from ingot.quant.errors import QuantError
from ingot.quant.report import Progress, silent

MAX_ROWS = 512  # activation rows kept per tensor for AWQ's error measurement
MAX_VALUES = 1 << 17  # |x| values kept per tensor for percentiles


@dataclass(frozen=True)
class TensorStats:
    """Statistics of one tensor over all calibration feeds. Rows are its last dim (channels)."""

    absmax: float  # max |x|, exact
    abs_sample: np.ndarray  # (<= MAX_VALUES,) float32 sample of |x|
    channel_mean_abs: np.ndarray  # (C,) mean |x| per channel over every row, exact
    rows: np.ndarray  # (<= max_rows, C) float32 sample of rows
    count: int  # rows seen
    # (C, C) float64 sum over every row of x^T x / |x|^2: the Gram matrix of the rows scaled to
    # unit norm (each token weighs the same, as in awq.unit_rows); only where asked
    gram: np.ndarray | None = None

    def percentile(self, p: float) -> float:
        """The p-th percentile of |x|, estimated from the sample."""
        return float(np.percentile(self.abs_sample, p)) if self.abs_sample.size else 0.0


def calibrate(
    model: onnx.ModelProto,
    feeds: list[dict[str, np.ndarray]],
    tensors: list[str],
    max_rows: int = MAX_ROWS,
    max_values: int = MAX_VALUES,
    seed: int = 0,
    grams: list[str] | None = None,
    progress: Progress = silent,
) -> dict[str, TensorStats]:
    """Statistics of `tensors` over `feeds`, by running `model` with ONNX Runtime on CPU;
    `grams`: those of `tensors` that also get a Gram matrix (8 C^2 bytes each).

    One run per feed fetches every tensor at once, so a feed's peak memory is the sum of
    their sizes: keep calibration feeds small (e.g. one sequence of 512 tokens each).
    """
    assert feeds, "calibration needs at least one feed"
    inputs = {i.name for i in model.graph.input}
    fetch = [t for t in dict.fromkeys(tensors) if t not in inputs]  # graph inputs come from the feeds
    session = _session(_with_outputs(model, fetch))
    rng = np.random.default_rng(seed)
    grams = set(grams or ())
    assert grams <= set(tensors), grams - set(tensors)
    acc = {t: _Accumulator(max_rows, max_values, t in grams) for t in dict.fromkeys(tensors)}
    for i, feed in enumerate(feeds):
        progress("calibration sample", i, len(feeds))
        try:
            values = dict(zip(fetch, session.run(fetch, feed))) if fetch else {}
        except Exception as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise QuantError(f"calibration sample {i} failed to run: {first}") from None
        for name, a in acc.items():
            a.add(values[name] if name in values else np.asarray(feed[name]), rng)
    return {name: a.result() for name, a in acc.items()}


def _with_outputs(model: onnx.ModelProto, names: list[str]) -> bytes:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    have = {o.name for o in copy.graph.output}
    copy.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names if n not in have)
    return copy.SerializeToString()


def _session(model: bytes):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.log_severity_level = 3
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


class _Accumulator:
    def __init__(self, max_rows: int, max_values: int, gram: bool = False):
        self.absmax = 0.0
        self.gram: np.ndarray | None = None  # (C, C) float64, when `gram`
        self.want_gram = gram
        self.sum_abs: np.ndarray | None = None  # (C,) float64
        self.count = 0
        self.rows = _Reservoir(max_rows)
        self.values = _Reservoir(max_values)

    def add(self, x: np.ndarray, rng: np.random.Generator) -> None:
        rows = np.asarray(x, dtype=np.float32).reshape(-1, x.shape[-1] if x.ndim else 1)  # (R, C)
        if rows.size == 0:
            return
        a = np.abs(rows)
        self.absmax = max(self.absmax, float(a.max()))
        sums = a.sum(axis=0, dtype=np.float64)
        self.sum_abs = sums if self.sum_abs is None else self.sum_abs + sums
        self.count += rows.shape[0]
        if self.want_gram:
            unit = rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-30)
            g = unit.T @ unit  # float32 per feed (fast), summed in float64
            self.gram = g.astype(np.float64) if self.gram is None else self.gram + g
        self.rows.add(rows, rng)
        self.values.add(a.ravel(), rng)

    def result(self) -> TensorStats:
        assert self.sum_abs is not None, "tensor was never seen"
        return TensorStats(
            absmax=self.absmax,
            abs_sample=self.values.items(),
            channel_mean_abs=(self.sum_abs / self.count).astype(np.float32),
            rows=self.rows.items(),
            count=self.count,
            gram=self.gram,
        )


class _Reservoir:
    """A uniform sample of at most `size` items (first axis) from batches of any size.

    Weighted reservoir sampling (Efraimidis–Spirakis, key = u^(1/w)): a batch larger than
    `size` is first subsampled, and each kept item stands for len(batch)/size items.
    """

    def __init__(self, size: int):
        self.size = size
        self.keys = np.empty(0)
        self.data: np.ndarray | None = None

    def add(self, batch: np.ndarray, rng: np.random.Generator) -> None:
        if self.size == 0:
            return
        weight = 1.0
        if len(batch) > self.size:
            weight = len(batch) / self.size
            batch = batch[rng.choice(len(batch), self.size, replace=False)]
        keys = rng.random(len(batch)) ** (1.0 / weight)
        keys = np.concatenate([self.keys, keys])
        data = batch if self.data is None else np.concatenate([self.data, batch])
        if len(keys) > self.size:  # the `size` largest keys, in no particular order
            keep = np.argpartition(-keys, self.size - 1)[: self.size]
            keys, data = keys[keep], data[keep]
        self.keys, self.data = keys, data

    def items(self) -> np.ndarray:
        return self.data if self.data is not None else np.empty(0, np.float32)
