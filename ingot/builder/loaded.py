"""`LoadedModel`: a source resolved into what the export and the manifest need."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ingot.builder.spec import DimSpec
from ingot.plans import SourceInfo

if TYPE_CHECKING:
    import torch


@dataclass
class LoadedModel:
    """A model with everything the export and the manifest need."""

    model_id: str
    kind: str
    source: SourceInfo
    example: dict[str, torch.Tensor]  # keyword inputs, in forward() order
    dims: dict[str, dict[int, DimSpec]]  # input name -> axis -> dynamic dim
    output_names: list[str]
    module: torch.nn.Module | None = None  # None for .onnx sources
    onnx_path: Path | None = None  # set for .onnx sources
    architecture: str | None = None
    tokenizer: Any = None  # a transformers tokenizer, saved into the bundle
    text_inputs: dict[str, str] = field(default_factory=dict)  # input name -> Encoding field
    scope_prefix: str = ""  # module-path prefix of a wrapper, dropped from node names
    tokenizer_files: Path | None = None  # copied verbatim into the bundle (a bundle source)
    llm: Any = None  # LLMInfo of a paged-plan bundle source (its graph is already lowered)
