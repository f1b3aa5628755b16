"""The TensorRT runtime of sm targets: a plan checked against this machine before TensorRT sees
it (checks.py, over the facts of device.py), then loaded (engine.py) behind `ingot.runtime.Model`
(backend.py) or, for paged LLM plans, behind the engine loop (runner.py: KV pool in device memory,
CUDA graphs of decode steps).

Importing this package imports nothing heavy: tensorrt and cuda-python are imported by engine.py,
cuda.py and runner.py only, which only an sm target loads (`pip install 'ingot[tensorrt]'`).
"""
