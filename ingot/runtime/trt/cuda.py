"""Device memory, pinned host memory, streams and graphs, through cuda-python (cuda.bindings.runtime).

Only the TensorRT runtime imports this module (never `import ingot` or the CPU runtime). cuda-python
rather than torch: it is a thin binding of the CUDA runtime (a few MB, no CUDA kernels of its own),
and the runner needs nothing but allocations, copies, a stream and graph capture. Every call of
cuda-python returns (cudaError_t, values...); `_ok` turns an error into a DeviceError naming the call.
All on the current device (device 0 unless CUDA_VISIBLE_DEVICES says otherwise).
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

import numpy as np
from cuda.bindings import runtime as rt

from ingot.runtime.trt.errors import DeviceError


def _ok(result, what: str):
    """The values of a cuda-python call's result, or DeviceError."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != rt.cudaError_t.cudaSuccess:
        _, name = rt.cudaGetErrorName(err)
        _, text = rt.cudaGetErrorString(err)
        raise DeviceError(f"CUDA {what} failed: {name.decode()}: {text.decode()}")
    return values[0] if len(values) == 1 else tuple(values) or None


def memory_info() -> tuple[int, int]:
    """(free, total) bytes of the current device."""
    return _ok(rt.cudaMemGetInfo(), "cudaMemGetInfo")


class DeviceMemory:
    """One cudaMalloc allocation of `nbytes` (at least 1), 256-byte aligned as cudaMalloc guarantees."""

    def __init__(self, nbytes: int, what: str = "device memory"):
        self.nbytes = max(int(nbytes), 1)
        self.ptr: int = int(_ok(rt.cudaMalloc(self.nbytes), f"cudaMalloc of {self.nbytes} bytes for {what}"))

    def zero(self, stream: Stream) -> None:
        _ok(rt.cudaMemsetAsync(self.ptr, 0, self.nbytes, stream.handle), "cudaMemsetAsync")

    def close(self) -> None:
        if self.ptr:
            _ok(rt.cudaFree(self.ptr), "cudaFree")
            self.ptr = 0


class PinnedMemory:
    """Page-locked host memory (cudaMallocHost), so copies to and from the device are asynchronous DMA."""

    def __init__(self, nbytes: int):
        self.nbytes = max(int(nbytes), 1)
        self.ptr: int = int(_ok(rt.cudaMallocHost(self.nbytes), f"cudaMallocHost of {self.nbytes} bytes"))
        self._bytes = np.frombuffer((ctypes.c_byte * self.nbytes).from_address(self.ptr), np.uint8)

    def view(self, offset: int, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
        """An array of `shape` over these bytes from `offset`."""
        dtype = np.dtype(dtype)
        size = int(np.prod(shape)) * dtype.itemsize
        assert 0 <= offset and offset + size <= self.nbytes, (offset, size, self.nbytes)
        return self._bytes[offset: offset + size].view(dtype).reshape(shape)

    def close(self) -> None:
        if self.ptr:
            self._bytes = None
            _ok(rt.cudaFreeHost(self.ptr), "cudaFreeHost")
            self.ptr = 0


class Stream:
    """A non-blocking stream: it does not synchronize with the legacy default stream."""

    def __init__(self):
        self._stream = _ok(rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking), "cudaStreamCreateWithFlags")
        self.handle = int(self._stream)  # the cudaStream_t as TensorRT's execute_async_v3 takes it

    def synchronize(self) -> None:
        _ok(rt.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")

    def close(self) -> None:
        if self._stream is not None:
            _ok(rt.cudaStreamDestroy(self._stream), "cudaStreamDestroy")
            self._stream = None


def copy_to_device(dst: int, src: np.ndarray, stream: Stream) -> None:
    """Enqueue a copy of `src` (pinned, C-contiguous) to device address `dst`."""
    assert src.flags.c_contiguous, "copies need C-contiguous arrays"
    _ok(rt.cudaMemcpyAsync(dst, src.ctypes.data, src.nbytes, rt.cudaMemcpyKind.cudaMemcpyHostToDevice, stream.handle),
        "cudaMemcpyAsync to the device")


def copy_to_host(dst: np.ndarray, src: int, stream: Stream) -> None:
    """Enqueue a copy from device address `src` into `dst` (pinned, C-contiguous); valid after synchronize()."""
    assert dst.flags.c_contiguous, "copies need C-contiguous arrays"
    _ok(rt.cudaMemcpyAsync(dst.ctypes.data, src, dst.nbytes, rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream.handle),
        "cudaMemcpyAsync to the host")


class Graph:
    """An executable CUDA graph, replayed on the stream it was captured on."""

    def __init__(self, graph_exec, stream: Stream):
        self._exec, self.stream = graph_exec, stream

    @classmethod
    def capture(cls, stream: Stream, work: Callable[[], None]) -> Graph:
        """The graph of what `work()` enqueues on `stream` (it must run once before, uncaptured:
        the pattern of TensorRT's demo/Diffusion/demo_diffusion/engine.py). A failure inside ends the
        capture, so the stream stays usable."""
        _ok(rt.cudaStreamBeginCapture(stream.handle, rt.cudaStreamCaptureMode.cudaStreamCaptureModeGlobal),
            "cudaStreamBeginCapture")
        try:
            work()
        finally:
            graph = _ok(rt.cudaStreamEndCapture(stream.handle), "cudaStreamEndCapture")
        try:
            return cls(_ok(rt.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate"), stream)
        finally:
            _ok(rt.cudaGraphDestroy(graph), "cudaGraphDestroy")  # the executable graph keeps what it needs

    def launch(self) -> None:
        _ok(rt.cudaGraphLaunch(self._exec, self.stream.handle), "cudaGraphLaunch")

    def close(self) -> None:
        if self._exec is not None:
            _ok(rt.cudaGraphExecDestroy(self._exec), "cudaGraphExecDestroy")
            self._exec = None
