"""What a `module:function` factory returns: the model plus how to trace it.

Example (`ingot build mypkg.models:resnet --output out/`):

    from ingot.builder import ModelSpec, DimSpec

    def resnet() -> ModelSpec:
        model = build_my_resnet().eval()
        return ModelSpec(
            module=model,
            inputs={"image": torch.randn(2, 3, 224, 224)},
            dynamic_dims={"image": {0: DimSpec("batch", 1, 32)}},
            output_names=["logits"],
            kind="classifier",
        )

A plain tuple `(module, inputs)` or `(module, inputs, dynamic_dims)` works too; a dim may
be given by name alone (`{0: "batch"}`), which allows 1..4096.
This module imports nothing heavy, so factories can import it freely.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

DEFAULT_DIM_MAX = 4096


@dataclass(frozen=True)
class DimSpec:
    name: str
    min: int = 1
    max: int = DEFAULT_DIM_MAX


@dataclass
class ModelSpec:
    module: torch.nn.Module
    inputs: dict[str, torch.Tensor]  # example inputs, by forward() argument name
    dynamic_dims: dict[str, dict[int, DimSpec | str]] = field(default_factory=dict)
    output_names: list[str] | None = None
    kind: str = "generic"  # encoder | classifier | causal-lm | generic

    @classmethod
    def coerce(cls, value: Any) -> ModelSpec:
        """Accept a ModelSpec or a `(module, inputs[, dynamic_dims])` tuple."""
        if isinstance(value, ModelSpec):
            return value
        if isinstance(value, tuple) and len(value) in (2, 3):
            return cls(*value)
        raise TypeError(
            "a model factory must return ingot.builder.ModelSpec or (module, inputs[, dynamic_dims]), "
            f"got {type(value).__name__}"
        )

    def dims(self) -> dict[str, dict[int, DimSpec]]:
        return {
            name: {axis: DimSpec(d) if isinstance(d, str) else d for axis, d in axes.items()}
            for name, axes in self.dynamic_dims.items()
        }
