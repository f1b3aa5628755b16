"""Target names and choosing the target this machine runs.

Names: `cpu-x86_64` / `cpu-aarch64` for ONNX Runtime on the CPU, `sm_XY` for a TensorRT
plan built on a GPU of compute capability X.Y. Such a plan loads only on a GPU of that compute
capability, unless it was built hardware-compatible ("ampere-plus": any GPU of 8.0 or newer, and
8.9 or newer when it holds FP8). A GPU machine runs the exact sm target of its GPU, else a
hardware-compatible one it can load; the CPU target only when asked (`--target cpu`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ingot.plans.errors import NoTargetError
from ingot.plans.manifest import Manifest, Target

_CPU_ARCHES = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}
_SM = re.compile(r"^sm_(\d)(\d{1,2})$")


@dataclass(frozen=True)
class TargetName:
    name: str
    device: str  # "cpu" | "cuda"
    arch: str  # "x86_64" | "sm_90"

    @classmethod
    def parse(cls, text: str, host_cpu: str = "x86_64") -> TargetName:
        """`cpu` (this machine's CPU), `cpu-x86_64`, `sm_90`, `sm_120` (or `9.0`)."""
        text = text.strip().lower()
        if text == "cpu":
            text = f"cpu-{host_cpu}"
        if text.startswith("cpu-") and text[4:] in _CPU_ARCHES:
            arch = _CPU_ARCHES[text[4:]]
            return cls(f"cpu-{arch}", "cpu", arch)
        if re.fullmatch(r"\d+\.\d", text):
            text = "sm_" + text.replace(".", "")
        if _SM.match(text):
            return cls(text, "cuda", text)
        raise ValueError(f"unknown target {text!r}: use cpu, cpu-x86_64, cpu-aarch64 or sm_XY (e.g. sm_90)")

    @staticmethod
    def cpu(machine: str) -> str:
        return f"cpu-{_CPU_ARCHES.get(machine.lower(), machine.lower())}"

    @staticmethod
    def gpu(compute_capability: str) -> str:
        """"9.0" -> "sm_90"."""
        major, minor = compute_capability.strip().split(".")
        return f"sm_{int(major)}{int(minor)}"


def compute_capability(sm: str) -> tuple[int, int]:
    """"sm_90" -> (9, 0), "sm_120" -> (12, 0): the last digit is the minor version, as in CUDA's sm_XY."""
    assert _SM.match(sm), sm
    digits = sm.removeprefix("sm_")
    return int(digits[:-1]), int(digits[-1])


def _cc(cc: tuple[int, int]) -> str:
    return f"{cc[0]}.{cc[1]}"


AMPERE = (8, 0)  # what a hardware-compatible ("ampere-plus") plan needs at least
FP8_MIN = (8, 9)  # FP8 tensor cores: Ada (8.9), Hopper (9.0) and newer


@dataclass(frozen=True)
class GpuNeeds:
    """What an sm target's plan needs of the GPU that loads it (ingot.plans.manifest.TensorRTInfo)."""

    built_on: tuple[int, int]  # compute capability of the GPU it was built on
    ampere_plus: bool = False  # hardware-compatible: loads on any GPU of compute capability 8.0 or newer
    fp8: bool = False  # holds FP8 layers or an FP8 KV cache: needs 8.9 or newer

    @property
    def minimum(self) -> tuple[int, int]:
        """The oldest compute capability a hardware-compatible plan loads on."""
        return max(AMPERE, FP8_MIN) if self.fp8 else AMPERE

    def accepts(self, cc: tuple[int, int]) -> bool:
        if not self.ampere_plus:
            return cc == self.built_on
        return cc >= self.minimum

    def describe(self) -> str:
        """`compute capability 9.0`, or for a hardware-compatible plan `compute capability 8.0 or
        newer` (`8.9 or newer (FP8)`)."""
        if not self.ampere_plus:
            return f"compute capability {_cc(self.built_on)}"
        return f"compute capability {_cc(self.minimum)} or newer" + (" (FP8)" if self.fp8 else "")


def gpu_needs(manifest: Manifest, target: Target) -> GpuNeeds:
    """What `target` (an sm target of `manifest`) needs of a GPU; a target without a tensorrt
    record (older bundles) needs the exact compute capability of its name."""
    assert target.device == "cuda", target.name
    trt = target.tensorrt
    built_on = _parse_cc(trt.compute_capability) if trt is not None else compute_capability(target.name)
    quant = manifest.quantization
    fp8 = (quant is not None and quant.scheme == "fp8") or (
        manifest.llm is not None and manifest.llm.kv_dtype.startswith("float8"))
    return GpuNeeds(built_on, trt is not None and trt.hardware_compatibility == "ampere-plus", fp8)


def _parse_cc(text: str) -> tuple[int, int]:
    major, minor = text.strip().split(".")
    return int(major), int(minor)


@dataclass(frozen=True)
class Host:
    """What this machine can run: its CPU target and one sm target per visible GPU."""

    cpu: str
    gpus: tuple[str, ...] = ()


def select_target(manifest: Manifest, host: Host, requested: str | None = None) -> Target:
    """The target to run here, or NoTargetError naming what is there and how to build it.

    Without `requested`: a machine with a GPU runs the exact sm target of its GPU, else a
    hardware-compatible plan its GPU loads (the one built on the newest GPU not newer than it);
    the CPU target only when asked. A machine without a GPU runs its CPU target.
    """
    if requested is not None:
        name = TargetName.parse(requested, host.cpu.removeprefix("cpu-")).name
        if name not in manifest.targets:
            raise NoTargetError(f"bundle has no target {name}; {_listing(manifest)}; {_hint(manifest, name)}")
        if not _runs_here(manifest, manifest.targets[name], host):
            runnable = {host.cpu, *host.gpus}
            raise NoTargetError(f"target {name} cannot run on this machine (it can run: {', '.join(sorted(runnable))}"
                                f"{_compatible_note(manifest, manifest.targets[name])})")
        return manifest.targets[name]
    wanted = host.gpus[0] if host.gpus else host.cpu
    chosen = _for_gpu(manifest, wanted) if host.gpus else manifest.targets.get(wanted)
    if chosen is not None:
        return chosen
    extra = "".join(_compatible_note(manifest, t) for t in _sm_targets(manifest) if host.gpus)
    if host.gpus and host.cpu in manifest.targets:
        extra += f"; or run on the CPU with --target {host.cpu}"
    machine = f"a {wanted} GPU" if host.gpus else f"a {host.cpu.removeprefix('cpu-')} CPU and no GPU"
    raise NoTargetError(f"no target for this machine ({machine}); {_listing(manifest)}; "
                        f"{_hint(manifest, wanted)}{extra}")


def _sm_targets(manifest: Manifest) -> list[Target]:
    return [t for t in manifest.targets.values() if t.device == "cuda"]


def _for_gpu(manifest: Manifest, gpu: str) -> Target | None:
    """The exact target of `gpu`, else the hardware-compatible plan it loads that was built on
    the newest GPU not newer than it (then the oldest newer one)."""
    if gpu in manifest.targets:
        return manifest.targets[gpu]
    cc = compute_capability(gpu)
    loadable = [t for t in _sm_targets(manifest) if gpu_needs(manifest, t).accepts(cc)]

    def preference(t: Target) -> tuple:
        built = gpu_needs(manifest, t).built_on
        return (built > cc, tuple(-x for x in built) if built <= cc else built, t.name)

    return min(loadable, key=preference, default=None)


def _runs_here(manifest: Manifest, target: Target, host: Host) -> bool:
    if target.device == "cpu":
        return target.name == host.cpu
    needs = gpu_needs(manifest, target)
    return any(needs.accepts(compute_capability(gpu)) for gpu in host.gpus)


def _compatible_note(manifest: Manifest, target: Target) -> str:
    """`; sm_89 is hardware-compatible: it needs compute capability 8.9 or newer (..., FP8)` for such a plan."""
    if target.device != "cuda" or not gpu_needs(manifest, target).ampere_plus:
        return ""
    return f"; {target.name} is hardware-compatible: it needs {gpu_needs(manifest, target).describe()}"


def _listing(manifest: Manifest) -> str:
    return "bundle targets: " + (", ".join(sorted(manifest.targets)) or "none")


def _hint(manifest: Manifest, target: str) -> str:
    return f"build it with: ingot build {manifest.model.source.name} --target {target} --output <bundle>"


def detect_host(machine: str | None = None) -> Host:
    """This machine's CPU target and the sm target of each NVIDIA GPU (via nvidia-smi)."""
    import platform
    import shutil
    import subprocess

    cpu = TargetName.cpu(machine or platform.machine())
    smi = shutil.which("nvidia-smi")
    if not smi:
        return Host(cpu)
    try:
        out = subprocess.run(
            [smi, "--query-gpu=compute_cap", "--format=csv,noheader"], capture_output=True, text=True, timeout=20
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return Host(cpu)
    gpus = tuple(dict.fromkeys(TargetName.gpu(line) for line in out.split() if re.fullmatch(r"\d+\.\d+", line)))
    return Host(cpu, gpus)
