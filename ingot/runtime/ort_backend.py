"""The cpu target: an ONNX Runtime session over the bundle's model.onnx."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ingot.plans.llm import is_window


class OrtBackend:
    def __init__(self, model: Path | str | bytes, session_config: dict[str, str], threads: int | None = None):
        """`model`: a path, or a serialized model; `session_config`: the target's session entries."""
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        for key, value in session_config.items():
            options.add_session_config_entry(key, value)
        source = model if isinstance(model, bytes) else str(model)
        self.session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        # a paged plan's windows are scratch, never fetched (see ingot.plans.llm.window)
        self.output_names = [o.name for o in self.session.get_outputs() if not is_window(o.name)]
        self._all_outputs = {o.name for o in self.session.get_outputs()}
        self._binding, self._bound = None, {}

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self.output_names, self.session.run(self.output_names, feeds)))

    def run_bound(self, feeds: dict[str, np.ndarray], buffers: dict[str, np.ndarray]) -> None:
        """`run`, writing every output into its array in `buffers` (C-contiguous float32, of the
        call's output shapes). One binding is kept: an input or a buffer passed again as the same
        array is not bound again, so a call of shapes seen before binds only its new inputs."""
        if self._binding is None:
            self._binding = self.session.io_binding()
        assert self._all_outputs <= buffers.keys(), self._all_outputs - buffers.keys()
        binding, bound = self._binding, self._bound
        for name, value in feeds.items():
            if bound.get(name) is not value:
                binding.bind_cpu_input(name, value)
                bound[name] = value
        for name, buffer in buffers.items():
            if bound.get(name) is not buffer:
                assert buffer.flags.c_contiguous and buffer.dtype == np.float32, name
                binding.bind_output(name, "cpu", 0, np.float32, list(buffer.shape), buffer.ctypes.data)
                bound[name] = buffer
        self.session.run_with_iobinding(binding)
