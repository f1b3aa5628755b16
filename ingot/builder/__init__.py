"""Model → ONNX → (quantize) → per-target plan → bundle. The only writer of bundles.

Heavy dependencies (torch, transformers, onnx) are imported by the stages that use them.
"""

from ingot.builder.errors import BuildError, ExportError, SourceError, VerificationError
from ingot.builder.spec import DimSpec, ModelSpec

__all__ = ["BuildError", "DimSpec", "ExportError", "ModelSpec", "SourceError", "VerificationError"]
