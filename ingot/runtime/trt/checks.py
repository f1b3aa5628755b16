"""The checks before TensorRT sees a plan, so that it is never handed one it would reject.

In order, each failing with one line that names the plan (target and bundle), what it needs,
what this machine has, and what to do:
1. the sha256 of the target's files (Bundle.verify_target: ChecksumError);
2. the manifest's own record: a weight-stripped plan must name the ONNX file it is refitted from;
3. the GPU: its compute capability equals the plan's, or, for a hardware-compatible ("ampere-plus")
   plan, is 8.0 or newer (8.9 or newer with FP8). TensorRT's own failure would be "Error Code 6:
   The engine plan file is generated on an incompatible device";
4. the TensorRT version: the one that built the plan, in full (major.minor.patch.build). TensorRT's
   docs: "By default, TensorRT engines are compatible only with the version of TensorRT used to
   build them" (docs.nvidia.com/deeplearning/tensorrt, "Version Compatibility"); its serialization
   tag changes with each release, and ingot does not build version-compatible plans (BuilderFlag.
   VERSION_COMPATIBLE, a lean runtime inside the plan). TensorRT's own failure would be "Error Code 1:
   Serialization ... Version tag does not match";
5. cuda-python, through which the runner holds device memory and streams.

Pure: the facts of the machine are data (device.DeviceFacts), so every line is tested on a CPU.
"""

from __future__ import annotations

import re

from ingot.plans import Bundle, Target
from ingot.plans.targets import gpu_needs
from ingot.runtime.trt.device import DeviceFacts
from ingot.runtime.trt.errors import IncompatiblePlanError

EXTRA = "pip install 'ingot[tensorrt]'"


def check_plan(bundle: Bundle, target: Target, facts: DeviceFacts) -> None:
    """Raise ChecksumError or IncompatiblePlanError unless `target`'s plan loads on this machine."""
    assert target.backend == "tensorrt", target.name
    bundle.verify_target(target)
    check_record(bundle, target)
    check_gpu(bundle, target, facts)
    check_tensorrt(bundle, target, facts)
    if not facts.cuda_python:
        raise IncompatiblePlanError(f"{_plan(bundle, target)} needs cuda-python for device memory and streams, "
                                    f"which is not installed: {EXTRA}")


def plan_version(target: Target) -> str:
    """The TensorRT version that built `target`'s plan."""
    return target.tensorrt.version if target.tensorrt is not None else target.backend_version


def check_record(bundle: Bundle, target: Target) -> None:
    info = target.tensorrt
    if info is None or not info.weights_stripped:
        return
    files = {f.path for f in target.files}
    if info.refit_source is None or info.refit_source not in files:
        named = f"names {info.refit_source}, which is not among its files" if info.refit_source else "names none"
        raise IncompatiblePlanError(f"{_plan(bundle, target)} holds no weights and its manifest {named} to refit "
                                    f"them from: rebuild it ({_build(bundle, target.name)})")


def check_gpu(bundle: Bundle, target: Target, facts: DeviceFacts) -> None:
    needs = gpu_needs(bundle.manifest, target)
    cc = facts.compute_capability
    if cc is not None and needs.accepts(cc):
        return
    wanted = needs.describe() + (" (a hardware-compatible plan)" if needs.ampere_plus and not needs.fp8 else "")
    if cc is None:
        raise IncompatiblePlanError(
            f"{_plan(bundle, target)} needs an NVIDIA GPU of {wanted}; this machine has no NVIDIA GPU visible to "
            "CUDA (check the driver, and CUDA_VISIBLE_DEVICES): run it on such a GPU, or run the CPU target with "
            "--target cpu if the bundle has one")
    here = f"sm_{cc[0]}{cc[1]}"
    raise IncompatiblePlanError(
        f"{_plan(bundle, target)} needs a GPU of {wanted}; this machine's GPU is {facts.describe()}: "
        f"build a plan for it on this machine ({_build(bundle, here)}), or run the bundle on a GPU the plan fits")


def check_tensorrt(bundle: Bundle, target: Target, facts: DeviceFacts) -> None:
    built = plan_version(target)
    have = facts.tensorrt_version
    if have is None:
        raise IncompatiblePlanError(f"{_plan(bundle, target)} needs TensorRT {built}, which is not installed: "
                                    f"{EXTRA} 'tensorrt=={built}'")
    if _release(have) != _release(built):
        raise IncompatiblePlanError(
            f"{_plan(bundle, target)} was built with TensorRT {built} and loads only in that version; this machine "
            f"has TensorRT {have}: pip install 'tensorrt=={built}', or rebuild the plan with this TensorRT "
            f"({_build(bundle, target.name)})")


def _release(version: str) -> str:
    """The dotted numbers of a version ("11.4.0.106" of "11.4.0.106+cuda13"); the text itself if it has none."""
    m = re.match(r"\d+(\.\d+)*", version.strip())
    return m.group() if m else version.strip()


def _plan(bundle: Bundle, target: Target) -> str:
    return f"the {target.name} plan of {bundle.root}"


def _build(bundle: Bundle, target: str) -> str:
    return f"ingot build {bundle.manifest.model.source.name} --target {target} --output {bundle.root}"
