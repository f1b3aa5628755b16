"""What to quantize and how: validated once, at the edge (pydantic, frozen).

Cheap to import (pydantic only), so the CLI can build a spec before any ONNX is loaded.
"""

from __future__ import annotations

from fnmatch import fnmatch
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Scheme = Literal["none", "fp8", "int4", "int4-awq"]
# The LM head's error lands directly on the logits, and it is a small share of the weights:
# kept float unless asked (quantize_lm_head).
LM_HEAD = "lm_head*"
# Attention key/value projections (Hugging Face names, Llama/Qwen2/Mistral): under grouped-query
# attention each is read by every query head of its group, so its error is too. int4-awq keeps
# them out of INT4 by default (kv_float), as llama.cpp's Q4_K_M gives attn_v more bits.
KV_PROJ = ("*k_proj/*", "*v_proj/*")


class QuantSpec(BaseModel):
    """A quantization request.

    `exclude` holds fnmatch patterns on ONNX node names, which the exporter sets to module
    paths: `model.layers.0.mlp.down_proj/MatMul`, `lm_head/MatMul`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    scheme: Scheme
    block_size: int = 128  # INT4: weights per scale, along the input dim K
    exclude: list[str] = []
    calib_method: Literal["max", "percentile"] = "max"  # FP8 activation amax
    percentile: float = Field(99.99, gt=0.0, le=100.0)
    # ONNX Runtime's MatMulNBits activation precision on CPU (0 = fp32, 4 = int8). 4 is ORT's
    # own default and the fast path; its extra error is well below INT4 weight rounding's
    # (measured: `git show 954c8cb:BENCHMARKS.md`, Quantization). Use 0 when accuracy matters more.
    accuracy_level: int = Field(4, ge=0, le=4)
    # AWQ scale search: s = mean|X|^alpha per input channel, alpha from this list (0: RTN)
    awq_alphas: list[float] = Field(default_factory=lambda: [round(0.1 * i, 1) for i in range(11)])
    # int4-awq: round the (AWQ-scaled) weights with GPTQ (gptq.py), which pushes each row's
    # rounding error onto the rows not yet rounded, under the Gram matrix of every calibration
    # row (scaled to unit norm); False: round to nearest. gptq_damp: fraction of mean(diag H)
    # added to H's diagonal; gptq_act_order: round channels by decreasing H_kk, with the scales
    # fixed from the whole blocks first. Each of these choices measured best on held-out text
    # (BENCHMARKS.md, Quantization quality).
    gptq: bool = True
    gptq_damp: float = Field(0.01, gt=0.0, le=10.0)
    gptq_act_order: bool = True
    # Calibration rows kept per activation for the AWQ search (its matmuls grow with it; more
    # rows gained nothing measurable)
    search_rows: int = Field(512, ge=1)
    # FP8 and INT4-AWQ mixed precision: layers whose input's max |x| is at least this many
    # times the median channel's mean |x| (massive activations, outliers.py) stay in float;
    # None: none. INT4 round-to-nearest collects no calibration statistics, so has no such rule.
    # What the rule buys: BENCHMARKS.md, Quantization quality.
    massive_ratio: float | None = Field(100.0, gt=1.0)
    # Mixed precision by measured sensitivity (sensitivity.py): each layer is quantized alone
    # (INT4: round to nearest) and the model run on the calibration feeds; the `keep_sensitive`
    # layers whose output drift is largest stay in float. 0: off (it costs one session and pass
    # over the feeds per layer).
    keep_sensitive: int = Field(0, ge=0)
    # Mixed precision toward a target (sensitivity.py): keep the fewest most sensitive layers
    # (at least keep_sensitive, at most all but one) in float such that every float output keeps this
    # cosine to the float model's on the check feeds (sensitivity.score). None: off. A model that meets
    # it quantized throughout pays one extra pass over the feeds; one that does not, the ranking
    # and a bisection (~log2(layers) whole quantizations).
    target_cosine: float | None = Field(None, gt=0.0, le=1.0)
    # ... and/or this top-1 agreement of the logits (classifiers) on those feeds
    target_top1: float | None = Field(None, gt=0.0, le=1.0)
    # The attention key/value projections (KV_PROJ) stay out of INT4 (float, or INT8 with
    # recipe_precision): a large share of the INT4 loss for a small share of the weights
    # (BENCHMARKS.md, Quantization). None: int4-awq's default, on; off for int4 (the build turns
    # it on for causal LMs: ingot.builder.quantize.kind_defaults).
    kv_float: bool | None = None
    # The precision of the layers the INT4 recipe keeps out of INT4 (the k/v projections; for
    # int4-awq also the massive-activation layers): float (stored as float_storage says), or
    # INT8 weight-only, one scale per output channel (DequantizeLinear(int8, scale[N], axis=1):
    # TensorRT's W8A16 form; ONNX Runtime fuses it into an 8-bit MatMulNBits): smaller and
    # faster, a little less accurate (BENCHMARKS.md).
    recipe_precision: Literal["float", "int8"] = "float"

    # Storage of the weights a quantized plan keeps in float (embedding tables, the LM head,
    # layers left in float): fp16 + Cast, which ONNX Runtime folds at load (half.py), or fp32.
    # None: fp16 for INT4, where the float tables are most of the bundle; fp32 for FP8, whose
    # float layers are the massive-activation ones (fp16 measured the same perplexity there,
    # BENCHMARKS.md, Quantization quality: a candidate default).
    float_weights: Literal["fp16", "fp32"] | None = None

    # Quantize the LM head too (`lm_head*` is then not excluded). A tied head (Transpose of the
    # embedding table) gets its own quantized copy; the embedding Gather stays float.
    quantize_lm_head: bool = False
    # INT4 block size of a quantized LM head (at most `block_size`). Its errors land on the
    # logits directly, and it is one layer: small blocks cost little and measured better.
    lm_head_block_size: int = 32
    # The precision of a quantized LM head (int4, int4-awq): INT4 at lm_head_block_size, or INT8
    # weight-only, one scale per output channel, as llama.cpp keeps its output tensor in Q8_0:
    # a quarter of the float head's bytes, at a fraction of INT4's error.
    lm_head_precision: Literal["int4", "int8"] = "int4"

    @field_validator("block_size", "lm_head_block_size")
    @classmethod
    def _power_of_two(cls, value: int) -> int:
        if value < 16 or value & (value - 1):
            raise ValueError(f"block size must be a power of two >= 16, got {value}")
        return value

    @field_validator("awq_alphas")
    @classmethod
    def _unit_interval(cls, value: list[float]) -> list[float]:
        if not value or any(not 0.0 <= a <= 1.0 for a in value):
            raise ValueError(f"alphas must be a non-empty list of values in [0, 1], got {value}")
        return value

    @field_validator("lm_head_precision")
    @classmethod
    def _int8_head_is_weight_only(cls, value: str, info) -> str:
        if value == "int8" and info.data.get("scheme") not in ("int4", "int4-awq"):
            raise ValueError(f"an INT8 LM head goes with --quant int4 or int4-awq, not {info.data.get('scheme')}")
        return value

    @property
    def effective_exclude(self) -> list[str]:
        """`exclude` plus the LM head for every quantizing scheme, unless `quantize_lm_head`."""
        if self.scheme == "none" or self.quantize_lm_head or LM_HEAD in self.exclude:
            return list(self.exclude)
        return [*self.exclude, LM_HEAD]

    @property
    def float_patterns(self) -> dict[str, str]:
        """{pattern: why} of the layers this scheme keeps float by its own recipe (not `exclude`)."""
        kv_float = self.kv_float if self.kv_float is not None else self.scheme == "int4-awq"
        if self.scheme in ("int4", "int4-awq") and kv_float:
            return {p: f"attention key/value projection: {self.scheme} keeps it out of INT4 (kv_float; "
                       "under grouped-query attention every query head of its group reads it)" for p in KV_PROJ}
        return {}

    @property
    def float_storage(self) -> Literal["fp16", "fp32"]:
        """`float_weights`, or the scheme's default."""
        return self.float_weights or ("fp32" if self.scheme == "fp8" else "fp16")

    def block_for(self, layer: str) -> int:
        """INT4 block size of the layer (node name) `layer`."""
        if fnmatch(layer, LM_HEAD):
            return min(self.lm_head_block_size, self.block_size)
        return self.block_size

    @property
    def needs_calibration(self) -> bool:
        """FP8 needs activation ranges and AWQ activation samples; INT4 RTN needs nothing, unless
        it ranks layers by sensitivity (keep_sensitive, target_cosine, target_top1)."""
        ranks = self.keep_sensitive > 0 or self.target_cosine is not None or self.target_top1 is not None
        return self.scheme in ("fp8", "int4-awq") or (self.scheme == "int4" and ranks)
