"""Quantize an ONNX model offline: FP8 Q/DQ or INT4 blockwise weights (RTN, or AWQ + GPTQ).

    from ingot.quant import QuantSpec, quantize
    qmodel, report = quantize(model, QuantSpec(scheme="int4-awq"), calib_feeds)

The result is a plain ONNX model with standard QuantizeLinear/DequantizeLinear nodes that
ONNX Runtime runs on CPU and TensorRT builds from; `report.session_config` holds the ORT
session entries recommended for the CPU target. This package imports nothing else from
ingot; importing it loads pydantic only (onnx and onnxruntime load on first use).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ingot.quant.errors import QuantError
from ingot.quant.report import AwqChoice, Progress, QuantReport, SkippedLayer, silent
from ingot.quant.spec import QuantSpec

if TYPE_CHECKING:
    import numpy as np
    import onnx

__all__ = ["AwqChoice", "QuantError", "QuantReport", "QuantSpec", "SkippedLayer", "quantize"]


def quantize(
    model: onnx.ModelProto, spec: QuantSpec, calib_feeds: list[dict[str, np.ndarray]] | None = None,
    check_feeds: list[dict[str, np.ndarray]] | None = None, progress: Progress = silent,
) -> tuple[onnx.ModelProto, QuantReport]:
    """Quantize `model` as `spec` says; `model` itself is not modified.

    `calib_feeds` are input dicts for the float model (fp8 and int4-awq need them; int4
    reads them only to rank layers for `keep_sensitive` or a target). `check_feeds` are other
    rows of the same data: a sensitivity ranking and target search score int4-awq on them
    alone (AWQ and GPTQ fit the calibration rows; `calib_feeds` if there are none), FP8 and
    RTN, which fit nothing row by row, on both. Raises QuantError, with a one-line message,
    when it cannot. `progress` hears of the long loops (calibration samples, layers, groups).
    """
    if spec.scheme == "none":
        return model, QuantReport(scheme="none")
    if spec.needs_calibration and not calib_feeds:
        raise QuantError(f"--quant {spec.scheme} needs calibration data: pass --calib FILE")
    from ingot.quant.layers import untie_transposed

    model = untie_transposed(model, spec.effective_exclude)
    if spec.scheme == "int4":
        from ingot.quant.int4 import quantize_int4

        qmodel, report = quantize_int4(model, spec, feeds=[*(calib_feeds or []), *(check_feeds or [])],
                                       progress=progress)
        if not spec.needs_calibration:  # RTN reads calibration data only to rank layers (keep_sensitive)
            return _stored(qmodel, report, spec)
    elif spec.scheme == "int4-awq":
        from ingot.quant.calibrate import calibrate
        from ingot.quant.int4 import awq_activations, quantize_int4

        tensors = awq_activations(model, spec)
        grams = tensors if spec.gptq else []  # GPTQ's Hessians, X^T X over every row
        stats = calibrate(model, calib_feeds, tensors, max_rows=spec.search_rows, max_values=0, grams=grams,
                          progress=progress)
        qmodel, report = quantize_int4(model, spec, stats, check_feeds or calib_feeds, progress)
    else:
        from ingot.quant.calibrate import MAX_VALUES, calibrate
        from ingot.quant.fp8 import fp8_activations, quantize_fp8

        values = MAX_VALUES if spec.calib_method == "percentile" else 0  # a sample of |x| for percentiles
        stats = calibrate(model, calib_feeds, fp8_activations(model, spec), max_rows=0, max_values=values,
                          progress=progress)
        qmodel, report = quantize_fp8(model, spec, stats, [*calib_feeds, *(check_feeds or [])], progress)
    return _stored(qmodel, report.model_copy(update={"calib_samples": len(calib_feeds)}), spec)


def _stored(qmodel: onnx.ModelProto, report: QuantReport, spec: QuantSpec) -> tuple[onnx.ModelProto, QuantReport]:
    """The float weights in `spec.float_storage`, recorded in the report."""
    if spec.float_storage == "fp32":
        return qmodel, report
    from ingot.quant.half import halve_float_weights

    names, saved = halve_float_weights(qmodel)
    return qmodel, report.model_copy(update={"float_weights": "fp16", "half_weights": names, "half_bytes_saved": saved})
