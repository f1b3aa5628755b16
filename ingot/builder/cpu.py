"""The CPU target: the cleaned ONNX model with a few exact fusions (fuse_cpu.py), run by ONNX Runtime."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ingot.plans import BundleWriter, Target, TargetName

if TYPE_CHECKING:
    import onnx

_EXTERNAL_DATA_ABOVE = 1 << 30  # protobuf caps one message at 2 GiB


def compile_cpu(
    model: onnx.ModelProto, target: TargetName, writer: BundleWriter, opset: int, session_config: dict[str, str],
    max_positions: int | None = None,
) -> Target:
    """`max_positions`: rows of the fused plan's rotary tables, a causal LM's max(max_model_len,
    max_num_tokens): ORT's RotaryEmbedding checks a call's packed tokens against them."""
    import onnx
    import onnxruntime as ort

    from ingot.builder.fuse_cpu import fuse_for_cpu

    fused, fusions = fuse_for_cpu(model, max_positions)  # a new model, or `model` itself when nothing matched
    rel = f"targets/{target.name}/model.onnx"
    files = [rel]
    if fused.ByteSize() > _EXTERNAL_DATA_ABOVE:
        # saving moves the weights out of the proto it writes: not out of the caller's model, which may
        # still go to other targets or be the float reference
        if fused is model:
            fused = onnx.ModelProto()
            fused.CopyFrom(model)
        onnx.save_model(fused, writer.path(rel), save_as_external_data=True, location="model.onnx.data")
        files.append(rel + ".data")
    else:
        onnx.save_model(fused, writer.path(rel))
    return Target(
        name=target.name,
        device="cpu",
        arch=target.arch,
        backend="onnxruntime",
        backend_version=ort.__version__,
        entrypoint=rel,
        build_options={"opset": opset, "graph_optimization_level": "all", **{f"fused.{k}": v for k, v in fusions.items() if v}},
        session_config=session_config,
        files=[writer.entry(f) for f in files],
    )


def ort_runner(model: str | bytes, session_config: dict[str, str]):
    """A `feeds -> {name: array}` callable over a plan (a path, or a serialized model), run the
    way the runtime runs it."""
    from ingot.runtime.ort_backend import OrtBackend

    return OrtBackend(model, session_config).run
