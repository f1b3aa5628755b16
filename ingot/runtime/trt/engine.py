"""A deserialized TensorRT plan: its I/O tensors, execution contexts that share one scratch
allocation, and the refit of a weight-stripped plan.

Imports tensorrt: only the TensorRT runtime imports this module, after checks.py has said that
the plan loads here. API names: NVIDIA/TensorRT python/src/infer/pyCore.cpp (ICudaEngine,
IExecutionContext, Refitter) and python/src/parsers/pyOnnx.cpp (OnnxParserRefitter). The paged
plan's PagedAttention plugin is an AOT Quickly Deployable Plugin: its kernels are inside the plan,
and loading it needs no Python definitions (samples/python/quickly_deployable_plugins/README.md,
"Loading and running a TRT engine containing an AOT plugin").
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import ml_dtypes
import numpy as np
import tensorrt as trt

from ingot.runtime.trt.cuda import DeviceMemory, Stream
from ingot.runtime.trt.errors import DeviceError

# TensorRT's types as numpy dtypes (ml_dtypes for bfloat16 and FP8, which numpy lacks; trt.nptype has neither)
_DTYPES = {trt.DataType.FLOAT: np.float32, trt.DataType.HALF: np.float16, trt.DataType.BF16: ml_dtypes.bfloat16,
           trt.DataType.FP8: ml_dtypes.float8_e4m3fn, trt.DataType.INT8: np.int8, trt.DataType.UINT8: np.uint8,
           trt.DataType.INT32: np.int32, trt.DataType.INT64: np.int64, trt.DataType.BOOL: np.bool_}


@dataclass(frozen=True)
class TensorInfo:
    """One I/O tensor of the plan."""

    name: str
    is_input: bool
    dtype: np.dtype
    shape: tuple[int, ...]  # -1 where the dim is dynamic
    max_shape: tuple[int, ...] | None  # inputs: the max of optimization profile 0
    aliased_input: str | None  # outputs: the input whose memory it is (a plugin writing in place), if any


class TrtEngine:
    def __init__(self, plan: bytes, label: str, refit_onnx: Path | None = None):
        """Deserialize `plan` ("the sm_90 plan of out/llama", `label`, names it in errors); refit a
        weight-stripped plan's weights from `refit_onnx` before any context runs it."""
        self.label = label
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(plan)  # None on failure, after TensorRT logs why
        if self.engine is None:
            raise DeviceError(f"TensorRT could not load {label} (its log above says why)")
        if refit_onnx is not None:
            self._refit(refit_onnx)
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.tensors = {name: self._tensor(name) for name in names}
        self._scratch: DeviceMemory | None = None

    def _tensor(self, name: str) -> TensorInfo:
        e = self.engine
        is_input = e.get_tensor_mode(name) == trt.TensorIOMode.INPUT
        dtype = _DTYPES.get(e.get_tensor_dtype(name))
        if dtype is None:
            raise DeviceError(f"{self.label}: tensor {name} is {e.get_tensor_dtype(name)}, which this runtime "
                              "cannot bind; rebuild the plan with this version of ingot")
        shape = tuple(e.get_tensor_shape(name))
        max_shape = None
        if is_input:  # a dynamic input's range is optimization profile 0's: (min, opt, max)
            max_shape = tuple(e.get_tensor_profile_shape(name, 0)[2]) if -1 in shape else shape
        aliased = None if is_input else (e.get_aliased_input_tensor(name) or None)
        return TensorInfo(name, is_input, np.dtype(dtype), shape, max_shape, aliased)

    def _refit(self, onnx: Path) -> None:
        """The weights of a plan built with BuilderFlag.STRIP_PLAN, from the ONNX it was built from
        (TensorRT samples/python/sample_weight_stripping/refit_engine_and_infer.py)."""
        refitter = trt.Refitter(self.engine, self.logger)
        parser = trt.OnnxParserRefitter(refitter, self.logger)
        if not parser.refit_from_file(str(onnx)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise DeviceError(f"TensorRT could not refit {self.label} from {onnx.name}: {errors}")
        if not refitter.refit_cuda_engine():
            raise DeviceError(f"TensorRT could not refit {self.label} from {onnx.name} (its log above says why)")

    @property
    def scratch_bytes(self) -> int:
        """Device memory the contexts share for activations."""
        return self._scratch.nbytes if self._scratch is not None else 0

    def context(self):
        """A new execution context on the engine's one scratch allocation: contexts share it, so they
        must run one at a time (on one stream), as the runner's do."""
        if self._scratch is None:
            self._scratch = DeviceMemory(self.engine.device_memory_size_v2, "TensorRT activations")
        ctx = self.engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
        if ctx is None:
            raise DeviceError(f"TensorRT could not create an execution context for {self.label}")
        ctx.set_device_memory(self._scratch.ptr, self._scratch.nbytes)
        return ctx

    def set_shapes(self, ctx, shapes: dict[str, tuple[int, ...]]) -> None:
        for name, shape in shapes.items():
            if not ctx.set_input_shape(name, shape):
                raise DeviceError(f"{self.label}: input {name} of shape {list(shape)} is outside the plan's limits "
                                  f"(at most {list(self.tensors[name].max_shape or ())})")

    def set_addresses(self, ctx, addresses: dict[str, int]) -> None:
        for name, ptr in addresses.items():
            if not ctx.set_tensor_address(name, ptr):
                raise DeviceError(f"{self.label}: TensorRT refused the address of {name}")

    def execute(self, ctx, stream: Stream) -> None:
        """Enqueue one run of `ctx` on `stream` (its shapes and addresses set)."""
        if not ctx.execute_async_v3(stream.handle):
            raise DeviceError(f"TensorRT could not run {self.label} (its log above says why)")

    def close(self) -> None:
        """Free the scratch; the contexts that use it must be gone first."""
        if self._scratch is not None:
            self._scratch.close()
            self._scratch = None
        self.engine = None
