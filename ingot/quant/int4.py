"""INT4 weight-only quantization: `DequantizeLinear(int4 W, scale, axis=0, block_size)` → MatMul.

    W [K, N] float  ──▶  q [K, N] int4 ─┐
                         scale [K/bs, N] ┴─ DequantizeLinear(axis=0, block_size=bs) ─▶ MatMul

Symmetric, no zero point (TensorRT requires zero point 0). ONNX Runtime fuses the pair
into `com.microsoft.MatMulNBits` at ENABLE_EXTENDED and above, which is the CPU speed path.

A weight whose K is not a multiple of the block size (SmolLM2's hidden size 576 at block
128) is zero-padded to whole blocks, K', and its activation gets one `Pad` to K' (shared by
the layers reading it): exact, since the extra channels meet zero rows. A ragged last block
would need no Pad, but TensorRT wants the blocks to divide the weight exactly; padding keeps
one form for both backends, and ORT still fuses DQ + MatMul into MatMulNBits.

    X [.., K] ─ Pad(axes=[-1], [0, K'-K]) ─▶ MatMul ◀─ DequantizeLinear(q [K', N], scale [K'/bs, N])
"""

from __future__ import annotations

import numpy as np
import onnx

from ingot.quant import awq
from ingot.quant.calibrate import TensorStats
from ingot.quant.errors import QuantError
from ingot.quant.graph import GraphEditor, prepared_copy, scope
from ingot.quant.layers import Layer, by_activation, find_layers
from ingot.quant.primitives import int4_quantize, padded_k
from ingot.quant.report import AwqChoice, QuantReport, SkippedLayer, skip_warnings
from ingot.quant.spec import QuantSpec

MIN_OPSET = 21  # DequantizeLinear's block_size and INT4 type


def int4_layers(model: onnx.ModelProto, spec: QuantSpec) -> tuple[list[Layer], list[SkippedLayer]]:
    """MatMuls with a constant [K, N] weight (any K: see padding above). Raises QuantError if none."""
    fits, skipped = find_layers(model, ("MatMul",), spec.effective_exclude)
    if not fits:
        why = "; ".join(f"{s.name}: {s.reason}" for s in skipped[:3])
        raise QuantError(
            f"--quant {spec.scheme}: the model has no MatMul with a constant weight to quantize"
            + (f" ({why})" if why else "")
        )
    return fits, skipped


def awq_activations(model: onnx.ModelProto, spec: QuantSpec) -> list[str]:
    """The tensors AWQ needs calibration statistics for."""
    return list(by_activation(int4_layers(model, spec)[0]))


def quantize_int4(
    model: onnx.ModelProto, spec: QuantSpec, stats: dict[str, TensorStats] | None = None
) -> tuple[onnx.ModelProto, QuantReport]:
    """INT4 blockwise weight quantization of every eligible MatMul (RTN, or AWQ with `stats`)."""
    assert spec.scheme in ("int4", "int4-awq"), spec.scheme
    if spec.scheme == "int4-awq" and stats is None:
        raise QuantError("--quant int4-awq needs calibration data: pass --calib FILE")
    model = prepared_copy(model, MIN_OPSET)
    layers, skipped = int4_layers(model, spec)
    edit = GraphEditor(model)
    scales, choices = _apply_awq(edit, layers, spec, stats) if spec.scheme == "int4-awq" else ({}, [])
    before, after = _quantize_weights(edit, layers, scales, spec.block_size)
    padded = _pad_activations(edit, layers, spec.block_size)
    edit.finish()
    report = QuantReport(
        scheme=spec.scheme, block_size=spec.block_size, exclude=spec.effective_exclude,
        quantized=[layer.name for layer in layers], skipped=skipped, warnings=skip_warnings(skipped), awq=choices,
        padded=padded,
        session_config={"session.qdq_matmulnbits_accuracy_level": str(spec.accuracy_level)},
        weight_bytes_before=before, weight_bytes_after=after,
    )
    return model, report


def _quantize_weights(
    edit: GraphEditor, layers: list[Layer], scales: dict[str, np.ndarray], block_size: int
) -> tuple[int, int]:
    """Each weight once (AWQ: W * s): int4 + scale → DequantizeLinear, read by all its layers.
    Returns bytes (float before, packed int4 + scales after)."""
    before = after = 0
    for weight, users in _by_weight(layers).items():
        w = edit.array(weight)
        s = scales.get(users[0].activation)
        q, scale = int4_quantize(w if s is None else (w * s[:, None]).astype(w.dtype), block_size)
        dq = edit.insert(
            users[0].index, "DequantizeLinear",
            [edit.add_initializer(f"{weight}_int4", q), edit.add_initializer(f"{weight}_scale", scale)],
            f"{weight}_dq", f"{scope(users[0].name)}/weight_DequantizeLinear", axis=0, block_size=block_size,
        )
        for layer in users:
            edit.set_input(layer.index, 1, dq)
        edit.retire(weight)
        before += w.nbytes
        after += (q.size + 1) // 2 + scale.nbytes  # two int4 per byte
    return before, after


def _pad_activations(edit: GraphEditor, layers: list[Layer], block_size: int) -> list[str]:
    """One `Pad` to K' per activation read by layers whose K is not whole blocks; returns those layers."""
    groups: dict[str, list[Layer]] = {}
    for layer in layers:
        if layer.shape[0] % block_size:
            groups.setdefault(edit.node(layer.index).input[0], []).append(layer)  # after AWQ rewiring
    for x, group in groups.items():
        k = group[0].shape[0]
        pads = edit.add_initializer(f"{x}_pads", np.array([0, padded_k(k, block_size) - k], np.int64))
        axes = edit.add_initializer(f"{x}_pad_axes", np.array([-1], np.int64))
        padded = edit.insert(
            min(layer.index for layer in group), "Pad", [x, pads, "", axes], f"{x}_padded",
            f"{scope(group[0].name)}/int4_Pad", mode="constant",
        )
        for layer in group:
            edit.set_input(layer.index, 0, padded)
    return [layer.name for group in groups.values() for layer in group]


def _by_weight(layers: list[Layer]) -> dict[str, list[Layer]]:
    """Layers per weight initializer: a weight shared by several MatMuls is quantized once."""
    users: dict[str, list[Layer]] = {}
    for layer in layers:
        users.setdefault(layer.weight, []).append(layer)
    return users


def _apply_awq(
    edit: GraphEditor, layers: list[Layer], spec: QuantSpec, stats: dict[str, TensorStats] | None
) -> tuple[dict[str, np.ndarray], list[AwqChoice]]:
    """Search a scale per activation group and move 1/s onto X; returns {X: s} for the weights."""
    assert stats is not None
    scales, choices = {}, []
    groups = by_activation(layers)
    shared = _shared_weights(groups)
    for x, group in groups.items():
        weights = [edit.array(layer.weight) for layer in group]
        st = stats[x]
        alphas = [0.0] if shared & {layer.weight for layer in group} else spec.awq_alphas
        result = awq.search(st.rows, st.channel_mean_abs, weights, spec.block_size, alphas)
        scaling = "none"
        if result.alpha > 0:  # X W = (X / s)(s W): 1/s moves onto X, s into the weights below
            inv = (1.0 / result.scale).astype(weights[0].dtype)
            scaling = "folded" if _fold(edit, x, group, inv) else "explicit"
            if scaling == "explicit":
                _explicit(edit, x, group, inv)
            scales[x] = result.scale
        choices.append(AwqChoice(
            activation=x, layers=[layer.name for layer in group], alpha=result.alpha, scaling=scaling,
            error_rtn=result.error_rtn, error_awq=result.error,
        ))
    return scales, choices


def _shared_weights(groups: dict[str, list[Layer]]) -> set[str]:
    """Weights read by layers of more than one group: one scale per weight, so AWQ is off there."""
    seen: dict[str, str] = {}
    shared = set()
    for x, group in groups.items():
        for layer in group:
            if seen.setdefault(layer.weight, x) != x:
                shared.add(layer.weight)
    return shared


def _fold(edit: GraphEditor, x: str, group: list[Layer], inv: np.ndarray) -> bool:
    """Fold 1/s into X's producer when it is `Mul(y, c)` with a constant c that broadcasts
    along X's last dim (the RMSNorm gamma) and X feeds only this group. True if folded."""
    index = edit.producer(x)
    if index is None or edit.is_output(x) or set(edit.consumers(x)) != {layer.index for layer in group}:
        return False
    node = edit.node(index)
    if node.op_type != "Mul":
        return False
    slots = [i for i, name in enumerate(node.input) if name in edit.inits]
    if len(slots) != 1:
        return False
    c = edit.array(node.input[slots[0]])
    k = inv.shape[0]
    if c.dtype.kind != "f" or c.size not in (1, k) or (c.size == k and c.shape[-1] != k):
        return False
    shape = (*c.shape[:-1], k) if c.ndim else (k,)
    folded = (np.broadcast_to(c, shape).astype(np.float32) * inv).astype(c.dtype)
    old = node.input[slots[0]]
    edit.set_input(index, slots[0], edit.add_initializer(f"{old}_awq", folded))
    edit.retire(old)
    return True


def _explicit(edit: GraphEditor, x: str, group: list[Layer], inv: np.ndarray) -> None:
    """Insert `Mul(X, 1/s)` before the group's first layer and feed the group from it."""
    first = group[0]
    scaled = edit.insert(
        first.index, "Mul", [x, edit.add_initializer(f"{x}_awq_inv_scale", inv)], f"{x}_awq",
        f"{scope(first.name)}/awq_Mul",
    )
    for layer in group:
        edit.set_input(layer.index, 0, scaled)
