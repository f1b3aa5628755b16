"""BuildConfig: everything `ingot build` was asked for, validated once."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ingot.builder.errors import BuildError
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
    # quantization (ingot/quant): the spec is validated by QuantSpec
    # int4 on a causal LM: AWQ + GPTQ with INT8 recipe layers and head (quantize.kind_defaults);
    # int4-rtn: round to nearest, no calibration (int4 for any other model)
    quant: Literal["none", "fp8", "int4", "int4-rtn", "int4-awq"] = "none"
    block_size: int | None = None  # INT4 (None: 32 for int4-rtn on causal LMs, else 128: quantize.kind_defaults)
    exclude: list[str] = []
    calib: Path | None = None
    calib_samples: int = Field(32, ge=1)
    calib_seq_len: int = Field(256, ge=2)
    calib_method: Literal["max", "percentile"] = "max"
    accuracy_level: int = Field(4, ge=0, le=4)
    quant_lm_head: bool = False
    # None: int4 with quant_lm_head; else int8 for int4 on causal LMs (quantize.kind_defaults), float otherwise
    lm_head_precision: Literal["float", "int4", "int8"] | None = None
    # FP8 and int4-awq: 0 turns the massive-activation rule off (None: 100; 1000 for int4 on causal LMs)
    massive_ratio: float | None = Field(None, ge=0)
    kv_float: bool | None = None  # int4, int4-awq: k/v projections stay out of INT4 (None: quantize.kind_defaults)
    # int4, int4-awq: the layers their recipe keeps out of INT4 (None: int8 for int4 on causal LMs, else float)
    recipe_precision: Literal["float", "int8"] | None = None
    keep_sensitive: int = Field(0, ge=0)  # this many most sensitive layers stay float (0: off)
    # the fewest most sensitive layers stay float to keep this cosine on the calibration data;
    # None: the kind's default (quantize.kind_defaults) unless keep_sensitive is given, 0: off
    target_cosine: float | None = Field(None, ge=0, le=1)
    target_top1: float | None = Field(None, ge=0, le=1)  # the same for the logits' top-1 agreement
    gptq: bool | None = None  # int4-awq: GPTQ rounding, or round to nearest (None: the kind's default, quantize.kind_defaults)
    float_weights: Literal["fp16", "fp32"] | None = None  # storage of the float weights (None: the scheme's default)
    # accuracy gate (quantized builds): any given replaces the kind's defaults (quantize.DEFAULT_GATES)
    max_ppl_increase: float | None = Field(None, ge=0)
    min_cosine: float | None = Field(None, ge=-1, le=1)
    min_top1: float | None = Field(None, ge=0, le=1)
    # causal LMs: paged plan (generation) limits, recorded in the manifest's `llm`
    layout: Literal["auto", "paged", "dense"] = "auto"
    max_num_tokens: int = Field(2048, ge=1, le=1 << 16)
    max_num_seqs: int = Field(32, ge=1, le=1 << 12)
    max_model_len: int | None = Field(None, ge=2)
    kv_block_size: int = Field(16, ge=1, le=1024)
    # sm_XY targets (TensorRT): ingot.builder.trt.options
    builder_optimization_level: int = Field(3, ge=0, le=5)
    hardware_compatibility_level: Literal["none", "ampere-plus"] = "none"
    strip_weights: bool = False
    timing_cache: Path | None = None  # a folder: one cache file per arch and TensorRT version

    def tensorrt_options(self):
        """The TensorRT part, as ingot.builder.trt takes it."""
        from ingot.builder.trt.options import TensorRTOptions

        return TensorRTOptions(builder_optimization_level=self.builder_optimization_level,
                               hardware_compatibility=self.hardware_compatibility_level,
                               strip_weights=self.strip_weights, timing_cache=self.timing_cache)

    @field_validator("dims")
    @classmethod
    def _ranges(cls, dims: dict[str, tuple[int, int]]) -> dict[str, tuple[int, int]]:
        for name, (lo, hi) in dims.items():
            if not 0 <= lo <= hi or hi < 1:
                raise ValueError(f"--dim {name}={lo}:{hi}: need 0 <= MIN <= MAX and MAX >= 1")
        return dims


def build_config(**options) -> BuildConfig:
    """BuildConfig from command-line options; a bad value is one BuildError line."""
    try:
        return BuildConfig(**options)
    except ValidationError as e:
        err = e.errors()[0]
        option = "--" + "-".join(str(p) for p in err["loc"][:1]).replace("_", "-")
        raise BuildError(f"{option}: {err['msg'].removeprefix('Value error, ')}") from None
