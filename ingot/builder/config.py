"""BuildConfig: everything `ingot build` was asked for, validated once."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ingot.builder.export import DEFAULT_OPSET


class BuildConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: str
    output: Path
    targets: list[str] = ["cpu"]
    name: str | None = None
    verify: bool = True
    atol: float = Field(1e-4, ge=0)
    rtol: float = Field(1e-3, ge=0)
    opset: int = Field(DEFAULT_OPSET, ge=17)
    dims: dict[str, tuple[int, int]] = {}  # --dim NAME=MIN:MAX
    overwrite: bool = False

    @field_validator("dims")
    @classmethod
    def _ranges(cls, dims: dict[str, tuple[int, int]]) -> dict[str, tuple[int, int]]:
        for name, (lo, hi) in dims.items():
            if not 0 <= lo <= hi or hi < 1:
                raise ValueError(f"--dim {name}={lo}:{hi}: need 0 <= MIN <= MAX and MAX >= 1")
        return dims
