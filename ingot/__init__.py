"""Ingot: ahead-of-time engine builder and runtime for serving models.

`import ingot` is cheap: it needs no GPU, no TensorRT and not even torch. The heavy
parts (builder, runtime backends) import their dependencies when they are used.
"""

__version__ = "0.1.0"
