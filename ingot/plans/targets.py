"""Target names and choosing the target this machine runs.

Names: `cpu-x86_64` / `cpu-aarch64` for ONNX Runtime on the CPU, `sm_XY` for a TensorRT
plan built on (and only loadable by) a GPU of compute capability X.Y.
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


@dataclass(frozen=True)
class Host:
    """What this machine can run: its CPU target and one sm target per visible GPU."""

    cpu: str
    gpus: tuple[str, ...] = ()


def select_target(manifest: Manifest, host: Host, requested: str | None = None) -> Target:
    """The target to run here, or NoTargetError naming what is there and how to build it.

    Without `requested`: a machine with a GPU needs the exact sm target of its GPU (a plan
    for another arch does not load); a machine without one runs its CPU target.
    """
    if requested is not None:
        name = TargetName.parse(requested, host.cpu.removeprefix("cpu-")).name
        if name not in manifest.targets:
            raise NoTargetError(f"bundle has no target {name}; {_listing(manifest)}; {_hint(manifest, name)}")
        runnable = {host.cpu, *host.gpus}
        if name not in runnable:
            raise NoTargetError(f"target {name} cannot run on this machine (it can run: {', '.join(sorted(runnable))})")
        return manifest.targets[name]
    wanted = host.gpus[0] if host.gpus else host.cpu
    if wanted in manifest.targets:
        return manifest.targets[wanted]
    extra = ""
    if host.gpus and host.cpu in manifest.targets:
        extra = f"; or run on the CPU with --target {host.cpu}"
    machine = f"a {wanted} GPU" if host.gpus else f"a {host.cpu.removeprefix('cpu-')} CPU and no GPU"
    raise NoTargetError(f"no target for this machine ({machine}); {_listing(manifest)}; {_hint(manifest, wanted)}{extra}")


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
