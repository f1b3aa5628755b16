"""The TensorRT network of a plan: the ONNX file parsed into a strongly typed network.

TensorRT 11 networks are strongly typed only (NetworkDefinitionCreationFlag.STRONGLY_TYPED is
deprecated and ignored there; passing it builds the same network on TensorRT 10). Every tensor's
dtype is the ONNX graph's, Q/DQ included: there are no precision flags.
"""

from __future__ import annotations

from pathlib import Path

from ingot.builder.errors import BuildError


def parse_onnx(trt, logger, onnx_path: Path, target: str, plugins: bool):
    """(builder, network, parser) from `onnx_path` (its external data beside it). `plugins`: the
    graph has QDP plugin nodes, whose AOT implementations are preferred
    (NetworkDefinitionCreationFlag.PREFER_AOT_PYTHON_PLUGINS, TensorRT 10.12+; NvInfer.h)."""
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    if plugins:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.PREFER_AOT_PYTHON_PLUGINS)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)).strip().replace("\n", " ") for i in range(parser.num_errors))
        raise BuildError(f"TensorRT could not parse the model for {target}: {errors[:600]}")
    return builder, network, parser
