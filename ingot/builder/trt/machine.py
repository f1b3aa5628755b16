"""Can this machine build a target's plan: TensorRT installed, and a GPU of the target's arch.

A datacenter TensorRT plan is built on the GPU arch it targets: TensorRT times its tactics on
that GPU, and there is no cross-compilation for sm_80/sm_90 (CPU-only AOT exists only in
TensorRT-RTX, for other archs: research/anchors-trt.md §0).
"""

from __future__ import annotations

from ingot.builder.errors import BuildError
from ingot.plans import TargetName, detect_host


def check_tensorrt_target(target: TargetName) -> None:
    """One BuildError line unless TensorRT imports and a GPU of `target`'s arch is visible."""
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
