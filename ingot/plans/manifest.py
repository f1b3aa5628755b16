"""manifest.json: what a bundle holds, validated with pydantic at the edge.

A bundle is data only. Every file is listed with its sha256 and size; the runtime checks
them before it uses any. Targets are keyed by name (`cpu-x86_64`, `sm_90`, ...): one
manifest can carry a plan per GPU arch plus the CPU fallback, merged from separate builds.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ingot.plans.llm import LLMInfo

SCHEMA_VERSION = 1
FORMAT = "ingot-bundle"

ModelKind = Literal["encoder", "classifier", "causal-lm", "generic"]
DType = Literal[
    "float32", "float16", "bfloat16", "float64",
    "int64", "int32", "int16", "int8", "uint8", "bool",
]
OptionValue = str | int | float | bool | None


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DynamicDim(_Frozen):
    """A dimension that varies at run time within [min, max] (a TensorRT profile range)."""

    name: str = Field(min_length=1)
    min: int = Field(ge=0)
    max: int = Field(ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> DynamicDim:
        if self.min > self.max:
            raise ValueError(f"dim {self.name}: min {self.min} > max {self.max}")
        return self


Dim = int | DynamicDim


class TensorSpec(_Frozen):
    name: str = Field(min_length=1)
    dtype: DType
    shape: list[Dim]

    def describe(self) -> str:
        """`input_ids: int64[batch(1..64), sequence(1..512)]`."""
        dims = ", ".join(str(d) if isinstance(d, int) else f"{d.name}({d.min}..{d.max})" for d in self.shape)
        return f"{self.name}: {self.dtype}[{dims}]"


class FileEntry(_Frozen):
    path: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)

    @field_validator("path")
    @classmethod
    def _inside_bundle(cls, path: str) -> str:
        p = PurePosixPath(path)
        if p.is_absolute() or ".." in p.parts or not p.parts or "\\" in path:
            raise ValueError(f"file path must be relative and inside the bundle: {path!r}")
        return path


class SourceInfo(_Frozen):
    type: Literal["hf-folder", "gguf", "factory", "onnx"]
    name: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class ModelInfo(_Frozen):
    id: str
    kind: ModelKind
    architecture: str | None = None
    source: SourceInfo


class TokenizerInfo(_Frozen):
    """A tokenizer the runtime loads with the `tokenizers` library (tokenizer.json)."""

    files: list[FileEntry]
    pad_token_id: int | None = None
    model_max_length: int | None = None
    # model input name -> field of a tokenizers Encoding ("ids", "attention_mask", "type_ids")
    input_map: dict[str, Literal["ids", "attention_mask", "type_ids"]]


class OutputCheck(_Frozen):
    name: str
    max_abs_err: float
    max_rel_err: float


class Verification(_Frozen):
    """How a target compared with its reference: the torch model (fp32 plans), or the
    unquantized plan on held-out data (quantized plans: `metrics` and the `gates` applied)."""

    reference: str
    ran_on: str  # the target of the machine that ran the plan (a cross-built target is checked there)
    passed: bool
    samples: int
    atol: float | None = None
    rtol: float | None = None
    outputs: list[OutputCheck] = []
    metrics: dict[str, float] = {}  # perplexity, perplexity_ref, ppl_increase_pct, top1_agreement, cosine_min
    gates: dict[str, float] = {}  # max_ppl_increase_pct, min_cosine, min_top1
    data: str | None = None  # what the figures were measured on

    def summary(self) -> str:
        """`max abs err 2.7e-05` or `perplexity 42.58 -> 44.10 (+3.57%), top-1 0.9012, cosine 0.9981`."""
        return summarize(self.metrics) if self.metrics else (
            f"max abs err {max(c.max_abs_err for c in self.outputs):.2g}" if self.outputs else "passed"
        )


def summarize(metrics: dict[str, float]) -> str:
    parts = []
    if "perplexity" in metrics:
        parts.append(
            f"perplexity {metrics['perplexity_ref']:.3f} -> {metrics['perplexity']:.3f} "
            f"({metrics['ppl_increase_pct']:+.2f}%)"
        )
    if "top1_agreement" in metrics:
        parts.append(f"top-1 agreement {metrics['top1_agreement']:.4f}")
    if "cosine_min" in metrics:
        parts.append(f"cosine {metrics['cosine_min']:.4f}")
    return ", ".join(parts)


class CalibrationInfo(_Frozen):
    source: str  # file name
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    format: Literal["text", "jsonl", "npz"]
    samples: int
    seq_len: int | None = None
    method: str  # activation range: max | percentile(99.99)


class Quantization(_Frozen):
    """The quantization spec a bundle was built with, and what it did."""

    scheme: Literal["fp8", "int4", "int4-awq"]
    block_size: int | None = None  # INT4 blocks along the input dim
    exclude: list[str] = []
    calibration: CalibrationInfo | None = None
    cpu_accuracy_level: int | None = None  # ONNX Runtime MatMulNBits activation accuracy (INT4 on CPU)
    rounding: Literal["nearest", "gptq"] | None = None  # INT4 weight rounding: to nearest, or GPTQ
    float_weights: Literal["fp16", "fp32"] = "fp32"  # storage of the weights kept in float (embeddings, head, float layers)
    # mixed precision toward a target: the cosine asked for and reached on the calibration data
    target_cosine: float | None = None
    target_top1: float | None = None
    calib_cosine: float | None = None
    calib_top1: float | None = None
    layers_quantized: int
    layers_skipped: dict[str, str] = {}  # node name -> reason
    layers_int8: dict[str, str] = {}  # int4-awq: node name -> why it is INT8 weight-only, not INT4
    # node names of the layers quantized to the scheme's own precision (INT4 blocks, FP8): with
    # layers_int8 and layers_skipped, what every layer became
    layers_quantized_names: list[str] = []
    warnings: list[str] = []
    notes: list[str] = []


class PluginKernel(_Frozen):
    """A GPU kernel compiled ahead of time into a TensorRT plan (a Quickly Deployable Plugin's
    `aot_impl`): which plugin and variant, for which arch, and the sha256 of its PTX/cubin."""

    plugin: str  # "ingot::PagedAttention"
    kernel: str  # the kernel's entry name in the PTX/cubin
    variant: str  # what selects it: "head_dim=64,block_size=16,kv=float16,..."
    compute_capability: str  # "9.0"
    format: Literal["ptx", "cubin"]
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class TensorRTInfo(_Frozen):
    """What a TensorRT plan needs of the machine that loads it; checked before TensorRT sees
    the plan, so a mismatch is one clear line rather than TensorRT's Error Code 6 or 1."""

    version: str  # TensorRT that built the plan ("11.4.0.106"); plans load only in the same version
    compute_capability: str  # of the GPU it was built on ("9.0")
    hardware_compatibility: Literal["none", "ampere-plus"] = "none"  # ampere-plus: loads on sm_80 and newer
    builder_optimization_level: int = Field(default=3, ge=0, le=5)
    timing_cache_sha256: str | None = None  # the timing cache the build started from, if any
    weights_stripped: bool = False  # the plan holds no weights: refit from `refit_source` at load
    refit_source: str | None = None  # bundle path of the ONNX the weights are refitted from
    plugins: list[PluginKernel] = []


class Target(_Frozen):
    name: str
    device: Literal["cpu", "cuda"]
    arch: str  # "x86_64", "aarch64", "sm_90", ...
    backend: Literal["onnxruntime", "tensorrt"]
    backend_version: str
    entrypoint: str  # path of the plan the backend loads
    build_options: dict[str, OptionValue] = {}
    session_config: dict[str, str] = {}  # backend session settings the runtime must apply
    files: list[FileEntry]
    verification: Verification | None = None
    tensorrt: TensorRTInfo | None = None  # backend "tensorrt" only

    @model_validator(mode="after")
    def _entrypoint_listed(self) -> Target:
        if self.entrypoint not in {f.path for f in self.files}:
            raise ValueError(f"target {self.name}: entrypoint {self.entrypoint} is not among its files")
        return self


class Manifest(_Frozen):
    format: Literal["ingot-bundle"] = FORMAT
    schema_version: int
    ingot_version: str
    model: ModelInfo
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    precision: str = "fp32"
    quantization: Quantization | None = None
    tokenizer: TokenizerInfo | None = None
    llm: LLMInfo | None = None  # a paged causal-LM plan (generation)
    targets: dict[str, Target]
    notes: list[str] = []  # what the build could not do, said once at build and kept (e.g. no LLM plan, and why)

    @model_validator(mode="after")
    def _keys_match(self) -> Manifest:
        for key, target in self.targets.items():
            if key != target.name:
                raise ValueError(f"target key {key!r} != its name {target.name!r}")
        return self

    def files(self) -> list[FileEntry]:
        """Every file the bundle holds besides manifest.json."""
        shared = self.tokenizer.files if self.tokenizer else []
        return [*shared, *(f for t in self.targets.values() for f in t.files)]

    def signature(self) -> dict:
        """What must be equal for two builds to be targets of one bundle."""
        return self.model_dump(include={"model", "inputs", "outputs", "precision", "quantization", "tokenizer", "llm"})

    def with_target(self, target: Target) -> Manifest:
        """A copy with `target` added (or replacing the one of the same name)."""
        return self.model_copy(update={"targets": {**self.targets, target.name: target}})
