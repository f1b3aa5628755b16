"""The cpu target: an ONNX Runtime session over the bundle's model.onnx."""

from __future__ import annotations

from pathlib import Path

import numpy as np


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
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self.output_names, self.session.run(self.output_names, feeds)))
