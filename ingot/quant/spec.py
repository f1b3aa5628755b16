"""What to quantize and how: validated once, at the edge (pydantic, frozen).

Cheap to import (pydantic only), so the CLI can build a spec before any ONNX is loaded.
"""

from __future__ import annotations

from fnmatch import fnmatch
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Scheme = Literal["none", "fp8", "int4", "int4-awq"]
# The LM head is the most quantization-sensitive layer (its error lands directly on the
# logits) and a small share of the weights; keep it in float unless asked otherwise.
LM_HEAD = "lm_head*"
# Attention key/value projections (Hugging Face names, Llama/Qwen2/Mistral): under grouped-query
# attention each is read by every query head of its group, so its error is too. int4-awq keeps
# them float by default (`kv_float`), as llama.cpp's Q4_K_M gives attn_v more bits.
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
    # FP8 SmoothQuant: s = max|X|^alpha / max|W|^(1 - alpha) per input channel, alpha (or none)
    # searched per layer group on the calibration rows; max calibration only. Off by default:
    # on SmolLM2-135M (4 Hamlet windows) it gained only where massive activations are (+4.1%
    # -> +3.4% perplexity), and those layers stay float anyway (massive_ratio: +2.5%; with
    # smoothing as well +2.6%, for ~90 CPU-seconds of search)
    smooth: bool = False
    smooth_alphas: list[float] = Field(default_factory=lambda: [round(0.1 * i, 1) for i in range(1, 11)])
    # ONNX Runtime's MatMulNBits activation precision on CPU (0 = fp32, 4 = int8). Default 4:
    # it is ORT's own default and the fast path (feasibility §2a, 4096x4096: 0.15x fp32 time
    # at M=1 against 0.65x with level 0), and its extra error (~0.5% of the output's max at
    # K=4096) is well below INT4 weight rounding's. Use 0 when accuracy matters more.
    accuracy_level: int = Field(4, ge=0, le=4)
    # AWQ scale search: s = mean|X|^alpha, and with awq_duo also / mean|W|^(1 - alpha)
    awq_alphas: list[float] = Field(default_factory=lambda: [round(0.1 * i, 1) for i in range(11)])
    awq_duo: bool = False
    # AWQ weight clipping: per (block, output channel) ratio of max|w|, `clip_steps` values
    # from 1.0 down to `clip_min`, by the block's output error on the calibration rows. Off by
    # default: it fits the calibration rows, and its held-out gain depends on them. SmolLM2,
    # calibrated as `ingot build` does (32 windows over three plays), held-out Hamlet: +32.8%
    # perplexity without clipping, +48.3% with (calibrated on the first 32 windows instead,
    # clipping had helped: +21.7%)
    awq_clip: bool = False
    clip_min: float = Field(0.5, gt=0.0, le=1.0)
    clip_steps: int = Field(10, ge=1, le=100)
    # int4-awq: round the (AWQ-scaled) weights with GPTQ (gptq.py), which pushes each row's
    # rounding error onto the rows not yet rounded, under the Gram matrix of every calibration
    # row (scaled to unit norm); False: round to nearest. gptq_damp: fraction of mean(diag H)
    # added to H's diagonal; gptq_act_order: round channels by decreasing H_kk, with the scales
    # fixed from the whole blocks first. SmolLM2-135M, block 128, calibrated as `ingot build`
    # does, held-out Hamlet (20 windows of 512): AWQ + nearest +32.8% perplexity; + GPTQ
    # +24.7% (raw rows, natural order), +20.5% (act-order), +16.3% (act-order, unit rows; the
    # default); damp 0.1 instead: +16.9%; GPTQ without AWQ +35.1%
    gptq: bool = True
    gptq_damp: float = Field(0.01, gt=0.0, le=10.0)
    gptq_act_order: bool = True
    # Calibration rows kept per activation for the AWQ and smoothing searches (their matmuls
    # grow with it; on SmolLM2, 1024 rows gained nothing measurable over 512)
    search_rows: int = Field(512, ge=1)
    # FP8 and INT4-AWQ mixed precision: layers whose input's max |x| is at least this many
    # times the median channel's mean |x| (massive activations, outliers.py) stay in float;
    # None: none. (INT4 round-to-nearest takes no calibration and applies no such rule.)
    # SmolLM2-135M FP8, held-out Hamlet (20 windows): ratio 1000 keeps 6 down_proj in float, +3.5%
    # perplexity, bundle 0.44x fp32; ratio 100 keeps 42 layers (every down_proj, q/k/v of 4
    # layers, gate/up of the last 2), +1.8%, bundle 0.58x
    massive_ratio: float | None = Field(100.0, gt=1.0)
    # Mixed precision by measured sensitivity (sensitivity.py): each layer is quantized alone
    # (INT4: round to nearest) and the model run on the calibration feeds; the `keep_sensitive`
    # layers whose output drift is largest stay in float. 0: off (it costs one session and pass
    # over the feeds per layer). EfficientNet-Lite0 FP8 (4 photos + flips): all 50 layers FP8 keep
    # top-1 on 2 of 4 photos; 1-5 most sensitive layers in float, 3 of 4; 6, 8 or 10, all 4
    keep_sensitive: int = Field(0, ge=0)
    # Mixed precision toward a target (sensitivity.py): keep the fewest most sensitive layers
    # (at least keep_sensitive, at most all but one) in float such that every float output keeps this
    # cosine to the float model's on the check feeds (sensitivity.score). None: off. A model that meets
    # it quantized throughout pays one extra pass over the feeds; one that does not, the ranking
    # and a bisection (~log2(layers) whole quantizations). all-MiniLM-L6-v2 INT4-AWQ block 128:
    # every layer INT4 0.954 on real sentences; 0.99 on check lines keeps 16 of 32 float, 0.996
    target_cosine: float | None = Field(None, gt=0.0, le=1.0)
    # ... and/or this top-1 agreement of the logits (classifiers) on those feeds
    target_top1: float | None = Field(None, gt=0.0, le=1.0)
    # int4-awq: the attention key/value projections (KV_PROJ) stay out of INT4 (float, or INT8
    # with recipe_precision). SmolLM2-135M, block 128, held-out Hamlet (20 windows): every layer
    # INT4 +16.3% perplexity; massive-activation layers float +10.6%; and the k/v projections
    # +8.8%, the default (bundle 0.317x fp32 with fp16 float weights)
    kv_float: bool = True
    # int4-awq: the precision of the layers its recipe keeps out of INT4 (the k/v projections,
    # the massive-activation layers): float (stored as float_storage says), or INT8 weight-only,
    # one scale per output channel (DequantizeLinear(int8, scale[N], axis=1): TensorRT's W8A16
    # form; ONNX Runtime fuses it into an 8-bit MatMulNBits). SmolLM2-135M, held-out Hamlet
    # (20 windows / 16,000 characters): float +8.8% / +9.5% perplexity, bundle 0.317x fp32,
    # 128-token forward 1.16x fp32; int8 +9.5% / +10.8%, 0.249x, 1.23x
    recipe_precision: Literal["float", "int8"] = "float"

    # Storage of the weights a quantized plan keeps in float (embedding tables, the LM head,
    # layers left in float): fp16 + Cast, which ONNX Runtime folds at load (half.py), or fp32.
    # None: fp16 for INT4 (SmolLM2-135M: the tied embedding alone is 113 MB of the 178 MB
    # all-INT4 bundle in fp32), fp32 for FP8, whose float layers are the massive-activation
    # ones (SmolLM2-135M held-out Hamlet: +1.81% perplexity with them fp32, +1.89% fp16)
    float_weights: Literal["fp16", "fp32"] | None = None

    # Quantize the LM head too (`lm_head*` is then not excluded). A tied head (Transpose of the
    # embedding table) gets its own quantized copy; the embedding Gather stays float.
    quantize_lm_head: bool = False
    # INT4 block size of a quantized LM head (at most `block_size`). Its errors land on the
    # logits directly, and it is one layer: small blocks cost little. SmolLM2-135M, INT4 RTN
    # block 128, held-out Hamlet perplexity 67.97 with the head in float; head at block 128
    # 83.17, 64 78.49, 32 74.63
    lm_head_block_size: int = 32

    @field_validator("block_size", "lm_head_block_size")
    @classmethod
    def _power_of_two(cls, value: int) -> int:
        if value < 16 or value & (value - 1):
            raise ValueError(f"block size must be a power of two >= 16, got {value}")
        return value

    @field_validator("awq_alphas", "smooth_alphas")
    @classmethod
    def _unit_interval(cls, value: list[float]) -> list[float]:
        if not value or any(not 0.0 <= a <= 1.0 for a in value):
            raise ValueError(f"alphas must be a non-empty list of values in [0, 1], got {value}")
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
        if self.scheme == "int4-awq" and self.kv_float:
            return {p: "attention key/value projection: int4-awq keeps it out of INT4 (kv_float; "
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
