"""What a quantization pass did, for the manifest and for the user (pydantic)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from pydantic import BaseModel, ConfigDict


# What a long pass tells its caller: (what, done, total), e.g. ("calibration sample", 3, 32)
Progress = Callable[[str, int, int], None]


def silent(what: str, done: int, total: int) -> None:
    """The default Progress: nothing shown."""


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SkippedLayer(_Frozen):
    name: str  # node name
    reason: str  # e.g. "excluded by 'lm_head*'", "K=96 is not a multiple of block size 64"
    warn: bool = False  # skipped although the user asked for it (not excluded by a pattern)


class AwqChoice(_Frozen):
    """The scale AWQ picked for the layers that share one activation input."""

    activation: str  # the shared input tensor X
    layers: list[str]  # node names, e.g. the q/k/v projections
    alpha: float  # s = mean|X|^alpha per input channel; 0 = plain RTN
    scaling: Literal["folded", "explicit", "none"]  # 1/s folded into X's producer, a new Mul, or s = 1
    # sums over layers of ||X W - X Q(W)||^2 on the calibration rows scaled to unit norm
    # (awq.unit_rows), W as quantized (after any fold of a later group's 1/s into its output
    # columns); 0 for a group left alone
    error_rtn: float = 0.0
    error_awq: float = 0.0  # the same with the chosen scale; <= error_rtn


class QuantReport(_Frozen):
    scheme: str
    block_size: int | None = None  # INT4 only
    exclude: list[str] = []  # the patterns that were applied
    quantized: list[str] = []  # node names
    skipped: list[SkippedLayer] = []
    int8: list[SkippedLayer] = []  # int4-awq: layers kept out of INT4 as INT8 weight-only, with the reason
    warnings: list[str] = []
    awq: list[AwqChoice] = []
    padded: list[str] = []  # INT4: layers whose K was zero-padded to whole blocks (with a Pad on X)
    rounding: Literal["nearest", "gptq"] | None = None  # INT4: round-to-nearest, or GPTQ (int4-awq)
    gptq_damp: float | None = None  # GPTQ: fraction of mean(diag H) added to H's diagonal
    gptq_act_order: bool | None = None  # GPTQ: channels rounded by decreasing H_kk
    activation_amax: dict[str, float] = {}  # FP8: calibrated range per quantized activation tensor
    calib_samples: int = 0  # feed dicts used for calibration
    # mixed precision toward a target (sensitivity.py): the targets, and what was reached on
    # the check feeds (sensitivity.score), before any fp16 storage of the float weights
    target_cosine: float | None = None
    target_top1: float | None = None
    calib_cosine: float | None = None
    calib_top1: float | None = None
    # ONNX Runtime session config entries recommended for the CPU target.
    session_config: dict[str, str] = {}
    weight_bytes_before: int = 0  # the replaced float weights
    weight_bytes_after: int = 0  # their quantized data plus scales
    # the weights kept in float (embedding tables, LM head, float layers): stored as fp16 + Cast
    # (half.py) or left fp32; their names and the bytes fp16 saved
    float_weights: Literal["fp16", "fp32"] = "fp32"
    half_weights: list[str] = []
    half_bytes_saved: int = 0

    @property
    def layers_quantized(self) -> int:
        return len(self.quantized)

    @property
    def layers_skipped(self) -> int:
        return len(self.skipped)


def skip_warnings(skipped: list[SkippedLayer]) -> list[str]:
    return [f"{s.name} stays in float: {s.reason}" for s in skipped if s.warn]
