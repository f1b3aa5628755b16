"""What `ingot build` was asked for its TensorRT targets, and the combinations refused up front.

Checked before any model is loaded, so a build that cannot work says so in one line and in
seconds, not after an export. Everything here is pure: no TensorRT, no GPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ingot.builder.errors import BuildError
from ingot.plans import Host, TargetName, targets

HardwareCompatibility = Literal["none", "ampere-plus"]
DEFAULT_OPTIMIZATION_LEVEL = 3  # TensorRT's own default; 0 builds fastest, 5 searches longest
AMPERE = 80  # sm_80: the oldest arch an ampere-plus plan loads on
FP8_ARCH = 89  # sm_89 (Ada) and newer run FP8 GEMMs


@dataclass(frozen=True)
class TensorRTOptions:
    """The TensorRT build options of `ingot build`; none of them changes a cpu target."""

    builder_optimization_level: int = DEFAULT_OPTIMIZATION_LEVEL
    hardware_compatibility: HardwareCompatibility = "none"
    strip_weights: bool = False  # a weightless plan, refitted at load from the ONNX kept in the bundle
    timing_cache: Path | None = None  # a folder: one timing-cache file per arch and TensorRT version

    @property
    def given(self) -> list[str]:
        """The options set away from their defaults, as --flags."""
        flags = {
            "--builder-optimization-level": self.builder_optimization_level != DEFAULT_OPTIMIZATION_LEVEL,
            "--hardware-compatibility-level": self.hardware_compatibility != "none",
            "--strip-weights": self.strip_weights,
            "--timing-cache": self.timing_cache is not None,
        }
        return [flag for flag, on in flags.items() if on]


def sm_number(target: TargetName) -> int:
    """sm_90 -> 90, sm_120 -> 120."""
    assert target.device == "cuda", target
    return int(target.arch.removeprefix("sm_"))


def compute_capability(target: TargetName) -> str:
    """sm_90 -> "9.0", sm_89 -> "8.9", sm_120 -> "12.0": ingot.plans.targets' reading, as the manifest writes it."""
    return "{}.{}".format(*targets.compute_capability(target.arch))


def resolve_auto(text: str, host: Host) -> str:
    """`--target auto`: the sm target of this machine's (first) GPU; other names as they are."""
    if text.strip().lower() != "auto":
        return text
    if not host.gpus:
        raise BuildError("--target auto: this machine has no NVIDIA GPU (nvidia-smi lists none); "
                         "name the target instead (cpu, or sm_XY to build on a machine with that GPU)")
    return host.gpus[0]


def check_options(targets: list[TargetName], options: TensorRTOptions, quant: str) -> None:
    """One BuildError line for a combination of targets and TensorRT options that cannot work."""
    gpu = [t for t in targets if t.device == "cuda"]
    if not gpu:
        if options.given:
            raise BuildError(f"{', '.join(options.given)}: TensorRT options, for sm_XY targets only "
                             f"(this build has {', '.join(t.name for t in targets)})")
        return
    if not 0 <= options.builder_optimization_level <= 5:
        raise BuildError(f"--builder-optimization-level {options.builder_optimization_level}: "
                         "TensorRT takes 0 (fastest build) to 5 (longest search)")
    for t in gpu:
        if quant == "fp8" and sm_number(t) < FP8_ARCH:
            raise BuildError(f"--quant fp8 needs an sm_89 or newer target (FP8 GEMMs); {t.name} has none")
        if options.hardware_compatibility == "ampere-plus":
            _check_ampere_plus(t, quant)


def _check_ampere_plus(target: TargetName, quant: str) -> None:
    """An ampere-plus plan must load on every sm_80+ GPU: it is built on one (TensorRT refuses
    older), and nothing in it may need more than sm_80 has."""
    if sm_number(target) < AMPERE:
        raise BuildError(f"--hardware-compatibility-level ampere-plus: plans that load on sm_80 and newer are built "
                         f"on an sm_80 or newer GPU; {target.name} is older")
    if quant == "fp8":
        raise BuildError("--hardware-compatibility-level ampere-plus with --quant fp8: the plan must load on sm_80, "
                         "which has no FP8 (sm_89 and newer); build one plan per arch (the default level, none)")


def check_paged_options(targets: list[TargetName], options: TensorRTOptions) -> None:
    """The options a paged LLM plan cannot take: its PagedAttention kernels are compiled ahead of
    time as a cubin for the GPU that builds the plan (ingot.kernels.trt_plugin), which loads on that
    arch only, so the plan cannot be hardware-compatible."""
    if options.hardware_compatibility == "ampere-plus" and any(t.device == "cuda" for t in targets):
        raise BuildError("--hardware-compatibility-level ampere-plus: a paged LLM plan embeds its attention kernels "
                         "compiled for the GPU it is built on, so it loads on that arch only; build one plan per arch "
                         "(the default level, none), or pass --layout dense")
