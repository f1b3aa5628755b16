"""FP8 (E4M3) quantization of weights and activations, in TensorRT's explicit Q/DQ form.

    X ─ QuantizeLinear(s_x, fp8 0) ─ DequantizeLinear(s_x) ─┐
    W fp8 ─ DequantizeLinear(scale[C], axis=out channel) ───┴─ MatMul | Gemm | Conv

Activations get one per-tensor scale from calibration (TensorRT takes no per-channel
activation scales); weights a per-output-channel scale. Q/DQ go only on the inputs of
layers with a constant weight: never on attention-score MatMuls, masks, gathers, norms or
softmax. One Q/DQ pair per activation tensor, shared by the layers that read it.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx

from ingot.quant.calibrate import TensorStats
from ingot.quant.errors import QuantError
from ingot.quant.graph import GraphEditor, prepared_copy, scope
from ingot.quant.layers import Layer, by_activation, find_layers
from ingot.quant.outliers import keep_massive
from ingot.quant.primitives import fp8_activation_scale, fp8_quantize_channels
from ingot.quant.report import Progress, QuantReport, SkippedLayer, silent, skip_warnings
from ingot.quant.sensitivity import Target, mixed
from ingot.quant.spec import QuantSpec

MIN_OPSET = 19  # FLOAT8 QuantizeLinear/DequantizeLinear
OPS = ("MatMul", "Gemm", "Conv")
CPU_SESSION_CONFIG = {
    # ORT CPU has no FP8 kernels: fold each weight DQ into a float initializer at load
    # (fp32 speed and memory) instead of dequantizing on every call (3-15x slower).
    "session.disable_quant_qdq": "1",
    # ORT 1.32's ReluQuantRewrite (ENABLE_EXTENDED and up) deletes a Relu that feeds an FP8
    # QuantizeLinear as if zero point 0 were the bottom of the range, as it is for uint8;
    # FP8 is signed, so negative values then pass through (measured: wrong outputs).
    # ClipQuantRewrite (the same family, for Clip/ReLU6 before a QuantizeLinear) fails session
    # creation outright on an FP8 zero point ("Unexpected data type ... y_zero_point of 17").
    "optimization.disable_specified_optimizers": "ReluQuantRewrite;ClipQuantRewrite",  # ";"-separated
}


def fp8_layers(model: onnx.ModelProto, spec: QuantSpec) -> tuple[list[Layer], list[SkippedLayer]]:
    """MatMul/Gemm/Conv nodes with a constant weight. Raises QuantError if there is none."""
    layers, skipped = find_layers(model, OPS, spec.effective_exclude)
    if not layers:
        raise QuantError(
            f"--quant {spec.scheme}: the model has no MatMul, Gemm or Conv with a constant weight to quantize"
        )
    return layers, skipped


def fp8_activations(model: onnx.ModelProto, spec: QuantSpec) -> list[str]:
    """The tensors FP8 needs calibrated ranges for."""
    return list(by_activation(fp8_layers(model, spec)[0]))


def quantize_fp8(
    model: onnx.ModelProto, spec: QuantSpec, stats: dict[str, TensorStats],
    feeds: list[dict[str, np.ndarray]] | None = None, progress: Progress = silent,
) -> tuple[onnx.ModelProto, QuantReport]:
    """FP8 Q/DQ around every eligible layer; `stats` from `calibrate` on `fp8_activations`.
    With `spec.keep_sensitive`, the calibration `feeds` rank the layers (sensitivity.py)."""
    assert spec.scheme == "fp8", spec.scheme
    layers, skipped = fp8_layers(model, spec)
    layers, massive = keep_massive(layers, stats, spec.massive_ratio)
    skipped += massive
    lone = lambda layer: _quantize_fp8(model, spec, stats, [layer], skipped)  # noqa: E731

    build = lambda rest, sensitive: _quantize_fp8(model, spec, stats, rest, skipped + sensitive)  # noqa: E731
    return mixed(model, layers, lone, build, feeds, spec.scheme, spec.keep_sensitive,
                 Target(spec.target_cosine, spec.target_top1), progress)


def _quantize_fp8(
    model: onnx.ModelProto, spec: QuantSpec, stats: dict[str, TensorStats], layers: list[Layer],
    skipped: list[SkippedLayer],
) -> tuple[onnx.ModelProto, QuantReport]:
    """FP8 Q/DQ around `layers` (found in `model`) in a copy of `model`; `skipped` goes to the report."""
    model, skipped = prepared_copy(model, MIN_OPSET), list(skipped)  # the caller's list is shared by its calls
    names = {layer.name for layer in layers}  # the same nodes in the copy (whose indices may differ)
    layers = [layer for layer in fp8_layers(model, spec)[0] if layer.name in names]
    edit = GraphEditor(model)
    amax: dict[str, float] = {}
    quantized: list[Layer] = []
    for x, group in reversed(by_activation(layers).items()):  # last to first: any order is exact, this is the plans' own
        a = stats[x].absmax if spec.calib_method == "max" else stats[x].percentile(spec.percentile)
        if not np.isfinite(a):
            reason = f"activation {x} has no finite range"
            skipped += [SkippedLayer(name=layer.name, reason=reason, warn=True) for layer in group]
            continue
        amax[x] = a
        _quantize_activation(edit, x, group, fp8_activation_scale(a))
        quantized += group
    if not quantized:
        raise QuantError(f"--quant fp8: no layer could be quantized ({skipped[0].reason})")
    before, after = _quantize_weights(edit, quantized)
    done = set(quantized)
    edit.finish()
    report = QuantReport(
        scheme="fp8", exclude=spec.effective_exclude, quantized=[layer.name for layer in layers if layer in done],
        skipped=skipped, warnings=skip_warnings(skipped), activation_amax=dict(reversed(amax.items())),
        session_config=dict(CPU_SESSION_CONFIG), weight_bytes_before=before, weight_bytes_after=after,
    )
    return model, report


def _quantize_activation(edit: GraphEditor, x: str, group: list[Layer], scale: float) -> None:
    """X → Q → DQ, feeding the layers of `group` (other readers of X keep the float X)."""
    dtype = edit.dtype(group[0].weight)  # the layer's float type: X's too
    s = edit.add_initializer(f"{x}_scale", np.array(scale, dtype=dtype))
    zero = edit.add_initializer(f"{x}_zero_point", np.array(0, dtype=ml_dtypes.float8_e4m3fn))
    where, name = group[0].index, scope(group[0].name)
    q = edit.insert(where, "QuantizeLinear", [x, s, zero], f"{x}_fp8", f"{name}/input_QuantizeLinear")
    dq = edit.insert(where, "DequantizeLinear", [q, s, zero], f"{x}_dq", f"{name}/input_DequantizeLinear")
    for layer in group:
        edit.set_input(layer.index, 0, dq)


def _quantize_weights(edit: GraphEditor, layers: list[Layer]) -> tuple[int, int]:
    """Each (weight, channel axis) once: fp8 initializer → DequantizeLinear(axis). Returns
    bytes (float before, fp8 + scales after)."""
    users: dict[tuple[str, int], list[Layer]] = {}
    for layer in sorted(layers, key=lambda layer: layer.index):  # the first reader comes first
        users.setdefault((layer.weight, layer.out_axis), []).append(layer)
    before = after = 0
    for (weight, axis), group in users.items():
        w = edit.array(weight)
        q, scale = fp8_quantize_channels(w, axis)
        edit.dequantize_weight(weight, q, scale, "fp8", [layer.index for layer in group], group[0].name, axis=axis)
        before += w.nbytes
        after += q.nbytes + scale.nbytes
    return before, after
