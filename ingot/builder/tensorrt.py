"""TensorRT targets (sm_80, sm_89, sm_90, ...): one plan per GPU arch.

Written against the TensorRT 11 Python API (strongly typed networks, explicit Q/DQ).
TensorRT cannot be installed on the CPU build machines, so this path has not been run
there; `check_tensorrt_target` makes a build for a GPU target fail with one clear line
when TensorRT or a GPU of that arch is missing. A datacenter TensorRT plan can only be
built on the GPU arch it targets (there is no cross-compilation for sm_80/sm_90).
"""

from __future__ import annotations

from pathlib import Path

from ingot.builder.errors import BuildError
from ingot.plans import BundleWriter, Target, TargetName, TensorSpec, detect_host


def check_tensorrt_target(target: TargetName) -> None:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        raise BuildError(
            f"target {target.name} needs TensorRT 11, which is not installed: "
            f"pip install 'ingot[tensorrt]' on a machine with an {target.name} GPU (or build --target cpu)"
        ) from None
    gpus = detect_host().gpus
    if target.name not in gpus:
        have = ", ".join(gpus) if gpus else "no NVIDIA GPU"
        raise BuildError(
            f"target {target.name} must be built on an {target.name} GPU (TensorRT plans are specific to the "
            f"GPU arch); this machine has {have}"
        )


def compile_tensorrt(onnx_path: Path, target: TargetName, inputs: list[TensorSpec], writer: BundleWriter) -> Target:
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BuildError(f"TensorRT could not parse the model for {target.name}: {errors}")
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    for spec in inputs:
        lo, opt, hi = _profile_shapes(spec)
        profile.set_shape(spec.name, lo, opt, hi)
    config.add_optimization_profile(profile)
    config.builder_optimization_level = 3
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise BuildError(f"TensorRT failed to build the {target.name} plan (see the TensorRT log above)")
    rel = f"targets/{target.name}/model.plan"
    writer.path(rel).write_bytes(bytes(plan))
    return Target(
        name=target.name,
        device="cuda",
        arch=target.arch,
        backend="tensorrt",
        backend_version=trt.__version__,
        entrypoint=rel,
        build_options={"strongly_typed": True, "builder_optimization_level": 3},
        files=[writer.entry(rel)],
    )


def _profile_shapes(spec: TensorSpec) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """(min, opt, max) shapes from the manifest's dim ranges; opt sits mid-range."""
    lo = tuple(d if isinstance(d, int) else d.min for d in spec.shape)
    hi = tuple(d if isinstance(d, int) else d.max for d in spec.shape)
    opt = tuple(a if a == b else max(a, (a + b) // 2) for a, b in zip(lo, hi))
    return lo, opt, hi
