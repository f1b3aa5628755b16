"""TensorRT targets (sm_80, sm_89, sm_90, ...): one plan per GPU arch, built with TensorRT 11.

TensorRT cannot be installed on the CPU build machines, so compile.py, network.py and
builder_config.py have never run there; what they are handed is decided by pure functions that
are tested on a CPU: options.py (what may be combined), sm_graph.py (the ONNX TensorRT parses:
paged_graph.py and plugin_nodes.py for LLM plans), profiles.py (the optimization profile) and
timing_cache.py (where the cache lives). `import tensorrt` happens only inside compile_tensorrt and
check_tensorrt_target.
"""

from ingot.builder.trt.compile import compile_tensorrt
from ingot.builder.trt.machine import check_tensorrt_target
from ingot.builder.trt.options import TensorRTOptions, check_options, check_paged_options, resolve_auto
from ingot.builder.trt.sm_graph import SmGraph, sm_graph

__all__ = ["SmGraph", "TensorRTOptions", "check_options", "check_paged_options", "check_tensorrt_target",
           "compile_tensorrt", "resolve_auto", "sm_graph"]
