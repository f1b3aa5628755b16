"""Helpers for the quantization tests: feeds, ORT runs, small hand-made graphs."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

VOCAB = 320  # tests.models.make_tiny_llama's tokenizer


def llama_feeds(n: int, batch: int, seq: int, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [
        {
            "input_ids": rng.integers(0, VOCAB, (batch, seq)).astype(np.int64),
            "attention_mask": np.ones((batch, seq), np.int64),
        }
        for _ in range(n)
    ]


def session(model: onnx.ModelProto, config: dict[str, str] | None = None, level: str = "all", optimized: str | None = None):
    options = ort.SessionOptions()
    options.graph_optimization_level = {
        "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[level]
    options.log_severity_level = 3
    if optimized:
        options.optimized_model_filepath = optimized
    for key, value in (config or {}).items():
        options.add_session_config_entry(key, value)
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def run(model: onnx.ModelProto, feeds: list[dict], config: dict[str, str] | None = None, level: str = "all") -> list[np.ndarray]:
    """The first output of `model` on each feed."""
    s = session(model, config, level)
    name = s.get_outputs()[0].name
    return [s.run([name], f)[0] for f in feeds]


def rel_rms(got: list[np.ndarray], ref: list[np.ndarray]) -> float:
    """sqrt(mean (got - ref)^2 / mean ref^2) over all feeds."""
    err = sum(float(np.sum((g.astype(np.float64) - r) ** 2)) for g, r in zip(got, ref))
    return (err / sum(float(np.sum(r.astype(np.float64) ** 2)) for r in ref)) ** 0.5


def ops(model: onnx.ModelProto, op: str) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.op_type == op]


def initializer(model: onnx.ModelProto, name: str) -> np.ndarray:
    return numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == name))


def make_model(nodes, inputs, outputs, weights: dict[str, np.ndarray], opset: int = 21) -> onnx.ModelProto:
    """`inputs`/`outputs`: {name: shape} float32 (a str dim is dynamic)."""
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs.items()],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs.items()],
        [numpy_helper.from_array(w, n) for n, w in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(model)
    return model


def mlp(k: int = 128, n: int = 64, seed: int = 0, **extra: np.ndarray) -> onnx.ModelProto:
    """x [m, k] → fc1/MatMul → Relu → fc2/MatMul → y [m, n]."""
    rng = np.random.default_rng(seed)
    weights = {"w1": rng.standard_normal((k, 2 * n)).astype(np.float32), "w2": rng.standard_normal((2 * n, n)).astype(np.float32)}
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1/MatMul"),
        helper.make_node("Relu", ["h"], ["r"], name="act/Relu"),
        helper.make_node("MatMul", ["r", "w2"], ["y"], name="fc2/MatMul"),
    ]
    return make_model(nodes, {"x": ["m", k]}, {"y": ["m", n]}, {**weights, **extra})
