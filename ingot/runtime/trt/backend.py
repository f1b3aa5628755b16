"""An sm target behind `ingot.runtime.Model`: the checks, then the plan, run with host arrays.

`open_backend` runs checks.py before TensorRT sees the plan. `TrtBackend.run` serves plain plans
(encoders, classifiers: `ingot run --text/--input`), one call at a time, with device buffers made
for the call; the LLM runner (runner.py) takes its engine and keeps its own buffers and pool.
"""

from __future__ import annotations

import numpy as np

from ingot.plans import Bundle, Target
from ingot.runtime.trt.checks import check_plan
from ingot.runtime.trt.device import DeviceFacts, probe


def open_backend(bundle: Bundle, target: Target, facts: DeviceFacts | None = None) -> TrtBackend:
    """Check `target`'s plan against this machine (checks.py), then load it."""
    facts = facts or probe()
    check_plan(bundle, target, facts)
    return TrtBackend(bundle, target, facts)


class TrtBackend:
    def __init__(self, bundle: Bundle, target: Target, facts: DeviceFacts):
        from ingot.runtime.trt.cuda import Stream
        from ingot.runtime.trt.engine import TrtEngine

        info = target.tensorrt
        refit = bundle.path(info.refit_source) if info is not None and info.weights_stripped else None
        self.facts = facts
        self.label = f"the {target.name} plan of {bundle.root}"
        self.engine = TrtEngine(bundle.path(target.entrypoint).read_bytes(), self.label, refit)
        self.stream = Stream()
        self._context = None  # made at the first run(): an LLM runner makes its own
        self._dense = None  # a paged plan's DenseRunner (dense.py), made at its first dense run

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.engine.tensors.values() if not t.is_input]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Outputs by name for `feeds` (every input of the plan), in the plan's dtypes."""
        from ingot.runtime.trt import cuda

        engine = self.engine
        if self._context is None:
            self._context = engine.context()
        ctx = self._context
        inputs = {t.name: np.ascontiguousarray(feeds[t.name], t.dtype) for t in engine.tensors.values() if t.is_input}
        engine.set_shapes(ctx, {name: a.shape for name, a in inputs.items()})
        outputs = {name: np.empty(tuple(ctx.get_tensor_shape(name)), engine.tensors[name].dtype)
                   for name in self.output_names}
        buffers = {name: cuda.DeviceMemory(a.nbytes, name) for name, a in (inputs | outputs).items()}
        try:
            engine.set_addresses(ctx, {name: b.ptr for name, b in buffers.items()})
            for name, a in inputs.items():
                cuda.copy_to_device(buffers[name].ptr, a, self.stream)
            engine.execute(ctx, self.stream)
            for name, a in outputs.items():
                cuda.copy_to_host(a, buffers[name].ptr, self.stream)
            self.stream.synchronize()
        finally:
            for b in buffers.values():
                b.close()
        return outputs

    def run_dense(self, model, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """A paged LLM plan's dense logits (dense.py) for `model` (whose backend this is)."""
        if self._dense is None:
            from ingot.runtime.trt.dense import DenseRunner

            self._dense = DenseRunner(model)
        return self._dense(feeds)

    def close(self) -> None:
        if self._dense is not None:
            self._dense.runner.release()
            self._dense = None
        self._context = None
        self.engine.close()
        self.stream.close()
