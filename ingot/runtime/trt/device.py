"""The facts of this machine that decide whether a TensorRT plan loads here.

`DeviceFacts` is plain data, so the checks before deserialization (checks.py) are pure and
tested with synthetic facts. `probe()` reads the real ones, lazily and only for an sm target:
TensorRT has no compute-capability API, so the GPU comes from CUDA (cuda-python's
`cudaGetDeviceProperties` of device 0, which honours CUDA_VISIBLE_DEVICES), or from nvidia-smi's
first GPU without cuda-python; the TensorRT version is `tensorrt.__version__`.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass


@dataclass(frozen=True)
class DeviceFacts:
    """The GPU the runtime would use (CUDA device 0) and the software that would load a plan on it."""

    gpu_name: str | None  # "NVIDIA H100 80GB HBM3"; None: no NVIDIA GPU visible
    compute_capability: tuple[int, int] | None  # (9, 0)
    tensorrt_version: str | None  # "11.4.0.106"; None: TensorRT does not import
    driver_version: str | None = None  # nvidia-smi's "580.65.06", or the CUDA version the driver supports ("13.0")
    cuda_version: str | None = None  # the CUDA runtime of cuda-python ("13.0")
    cuda_python: bool = False  # cuda-python imports: the runner's device memory and streams go through it

    def describe(self) -> str:
        """`NVIDIA H100 80GB HBM3 (compute capability 9.0)`."""
        if self.gpu_name is None or self.compute_capability is None:
            return "no NVIDIA GPU visible to CUDA"
        return f"{self.gpu_name} (compute capability {self.compute_capability[0]}.{self.compute_capability[1]})"


def probe() -> DeviceFacts:
    """This machine's facts; imports cuda-python and TensorRT when they are installed."""
    name, cc, driver, cuda, cuda_python = _cuda_python() or _nvidia_smi()
    return DeviceFacts(name, cc, _tensorrt_version(), driver, cuda, cuda_python)


Gpu = tuple[str | None, tuple[int, int] | None, str | None, str | None, bool]  # name, cc, driver, cuda, cuda-python


def _cuda_python() -> Gpu | None:
    try:
        from cuda.bindings import runtime as rt
    except ImportError:
        return None
    ok = rt.cudaError_t.cudaSuccess
    err, version = rt.cudaRuntimeGetVersion()
    cuda = _cuda_text(version) if err == ok else None
    err, count = rt.cudaGetDeviceCount()  # cudaErrorInsufficientDriver / NoDevice without a usable GPU
    if err != ok or count == 0:
        return None, None, None, cuda, True
    err, prop = rt.cudaGetDeviceProperties(0)
    if err != ok:
        return None, None, None, cuda, True
    err, driver = rt.cudaDriverGetVersion()
    name = prop.name.split(b"\0", 1)[0].decode(errors="replace")
    return name, (prop.major, prop.minor), _cuda_text(driver) if err == ok else None, cuda, True


def _cuda_text(version: int) -> str:
    """13000 -> "13.0" (CUDA's 1000 * major + 10 * minor)."""
    return f"{version // 1000}.{version % 1000 // 10}"


def _nvidia_smi() -> Gpu:
    smi = shutil.which("nvidia-smi")
    none: Gpu = (None, None, None, None, False)
    if not smi:
        return none
    try:
        out = subprocess.run([smi, "--query-gpu=name,compute_cap,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return none
    lines = [line.split(",") for line in out.splitlines() if line.count(",") == 2]
    if not lines:
        return none
    name, cc, driver = (field.strip() for field in lines[0])
    major, _, minor = cc.partition(".")
    if not (major.isdigit() and minor.isdigit()):
        return none
    return name, (int(major), int(minor)), driver, None, False


def _tensorrt_version() -> str | None:
    try:
        import tensorrt
    except (ImportError, OSError):  # OSError: the wheel is there but its libraries do not load
        return None
    return str(tensorrt.__version__)
