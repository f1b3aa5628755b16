"""Quantization fixtures: the tiny Llama as cleaned ONNX, built once per session."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from tests.quant.util import llama_feeds


@pytest.fixture(scope="session")
def tiny_llama_onnx(tiny_llama_dir) -> onnx.ModelProto:
    """The tiny Llama (hidden 64, intermediate 128, 2 layers) as `ingot build` exports it."""
    from ingot.builder.export import export_onnx
    from ingot.builder.graph import cleanup
    from ingot.builder.sources import load_source

    return cleanup(export_onnx(load_source(str(tiny_llama_dir))))


@pytest.fixture(scope="session")
def outlier_llama_onnx(tiny_llama_onnx) -> onnx.ModelProto:
    """The tiny Llama with 4 outlier channels (x20) in each RMSNorm gamma, as trained LLMs
    have: the activation-magnitude structure AWQ exploits, which random weights lack.

    Clean-up merged the five all-ones gammas into one initializer; each norm gets its own."""
    model = onnx.ModelProto()
    model.CopyFrom(tiny_llama_onnx)
    inits = {t.name: t for t in model.graph.initializer}
    rng = np.random.default_rng(1)
    for node in model.graph.node:
        if node.op_type == "Mul" and node.name.endswith("norm/Mul_1"):
            slot = next(i for i, name in enumerate(node.input) if name in inits)
            gamma = numpy_helper.to_array(inits[node.input[slot]]).copy()
            gamma[rng.choice(gamma.size, 4, replace=False)] *= 20
            name = node.name.split("/")[0] + ".weight"
            model.graph.initializer.append(numpy_helper.from_array(gamma, name))
            node.input[slot] = name
    return model


@pytest.fixture(scope="session")
def calib_feeds() -> list[dict[str, np.ndarray]]:
    return llama_feeds(8, batch=2, seq=16, seed=0)


@pytest.fixture(scope="session")
def test_feeds() -> list[dict[str, np.ndarray]]:
    """Held out: another seed and shape than the calibration feeds."""
    return llama_feeds(4, batch=3, seq=20, seed=1)
