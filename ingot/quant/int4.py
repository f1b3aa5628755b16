"""INT4 weight-only quantization: `DequantizeLinear(int4 W, scale, axis=0, block_size)` → MatMul.

    W [K, N] float  ──▶  q [K, N] int4 ─┐
                         scale [K/bs, N] ┴─ DequantizeLinear(axis=0, block_size=bs) ─▶ MatMul

Symmetric, no zero point (TensorRT requires zero point 0). int4-awq first rescales each
group of layers sharing X (awq.py, 1/s moved onto X by scaling.py), then rounds the scaled
weights with GPTQ (gptq.py) under the Hessian of the scaled input X / s, or to nearest with
`gptq=False`; int4 is round-to-nearest (RTN). ONNX Runtime fuses the pair into
`com.microsoft.MatMulNBits` at ENABLE_EXTENDED and above, which is the CPU speed path.

A weight whose K is not a multiple of the block size (SmolLM2's hidden size 576 at block
128) is zero-padded to whole blocks, K', and its activation gets one `Pad` to K' (shared by
the layers reading it): exact, since the extra channels meet zero rows. A ragged last block
would need no Pad, but TensorRT wants the blocks to divide the weight exactly; padding keeps
one form for both backends, and ORT still fuses DQ + MatMul into MatMulNBits.

    X [.., K] ─ Pad(axes=[-1], [0, K'-K]) ─▶ MatMul ◀─ DequantizeLinear(q [K', N], scale [K'/bs, N])
"""

from __future__ import annotations

from fnmatch import fnmatch

import numpy as np
import onnx

from ingot.quant import awq
from ingot.quant.calibrate import TensorStats
from ingot.quant.errors import QuantError
from ingot.quant.gptq import act_order, gptq_quantize, inverse_cholesky
from ingot.quant.graph import GraphEditor, prepared_copy, scope
from ingot.quant.layers import Layer, by_activation, find_layers
from ingot.quant.outliers import keep_massive
from ingot.quant.primitives import int4_quantize, int8_channel_quantize, padded_k
from ingot.quant.report import AwqChoice, Progress, QuantReport, SkippedLayer, silent, skip_warnings
from ingot.quant.scaling import move_inverse, shared_weights
from ingot.quant.sensitivity import Target, mixed
from ingot.quant.spec import LM_HEAD, QuantSpec

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
    model: onnx.ModelProto, spec: QuantSpec, stats: dict[str, TensorStats] | None = None,
    feeds: list[dict[str, np.ndarray]] | None = None, progress: Progress = silent,
) -> tuple[onnx.ModelProto, QuantReport]:
    """INT4 blockwise weight quantization of every eligible MatMul (RTN, or AWQ with `stats`).
    With `spec.keep_sensitive`, the calibration `feeds` rank the layers by their lone
    round-to-nearest quantization (sensitivity.py)."""
    assert spec.scheme in ("int4", "int4-awq"), spec.scheme
    if spec.scheme == "int4-awq" and stats is None:
        raise QuantError("--quant int4-awq needs calibration data: pass --calib FILE")
    layers, skipped = int4_layers(model, spec)
    layers, kept = _recipe_float(layers, spec, stats)
    layers, head = _int8_head(layers, spec)
    int8 = (kept if spec.recipe_precision == "int8" else []) + head
    skipped = skipped if spec.recipe_precision == "int8" else skipped + kept
    rtn = spec.model_copy(update={"scheme": "int4"})
    lone = lambda layer: _quantize_int4(model, rtn, None, [layer], skipped)  # noqa: E731

    build = lambda rest, sensitive: _quantize_int4(model, spec, stats, rest, skipped + sensitive, int8, progress)  # noqa: E731
    return mixed(model, layers, lone, build, feeds, spec.scheme, spec.keep_sensitive,
                 Target(spec.target_cosine, spec.target_top1), progress)


def _recipe_float(
    layers: list[Layer], spec: QuantSpec, stats: dict[str, TensorStats] | None
) -> tuple[list[Layer], list[SkippedLayer]]:
    """The INT4 recipe's own mixed precision: its patterns (the k/v projections) and, with
    calibration `stats` (int4-awq), the layers whose input has massive activations stay out of
    INT4: INT8 weight-only (spec.recipe_precision), or float, stored as the plan's other float
    weights are (fp16 by default: half.py)."""
    patterns, kept, rest = spec.float_patterns, [], []
    for layer in layers:
        why = next((why for p, why in patterns.items() if fnmatch(layer.name, p)), None)
        if why is None:
            rest.append(layer)
        else:
            kept.append(SkippedLayer(name=layer.name, reason=why))
    if stats is None:  # round-to-nearest: no calibration statistics
        return rest, kept
    rest, massive = keep_massive(rest, stats, spec.massive_ratio)
    return rest, kept + massive


def _int8_head(layers: list[Layer], spec: QuantSpec) -> tuple[list[Layer], list[SkippedLayer]]:
    """With an INT8 LM head (spec.lm_head_precision), the head leaves the INT4 layers for INT8."""
    if not spec.quantize_lm_head or spec.lm_head_precision != "int8":
        return layers, []
    head = [layer for layer in layers if fnmatch(layer.name, LM_HEAD)]
    return [layer for layer in layers if layer not in head], [
        SkippedLayer(name=layer.name, reason="LM head: INT8 per output channel (--lm-head-precision int8)") for layer in head]


def _quantize_int4(
    model: onnx.ModelProto, spec: QuantSpec, stats: dict[str, TensorStats] | None, layers: list[Layer],
    skipped: list[SkippedLayer], int8: list[SkippedLayer] = (), progress: Progress = silent,
) -> tuple[onnx.ModelProto, QuantReport]:
    """INT4 weights for `layers` (found in `model`) and INT8 weights for the `int8` ones in a
    copy of `model`; `skipped` goes to the report."""
    model = prepared_copy(model, MIN_OPSET)
    names = {layer.name for layer in layers}  # the same nodes in the copy (whose indices may differ)
    found = int4_layers(model, spec)[0]
    layers = [layer for layer in found if layer.name in names]
    wide = {k.name for k in int8}
    int8_layers = [layer for layer in found if layer.name in wide]
    edit = GraphEditor(model)
    awq = spec.scheme == "int4-awq"
    prepared, choices, scales = _apply_awq(edit, layers, spec, stats, progress) if awq else ({}, [], {})
    gptq = awq and spec.gptq
    rounded = _gptq_weights(edit, layers, prepared, scales, stats, spec, progress) if gptq else {}
    before, after = _quantize_weights(edit, layers, prepared, rounded, spec)
    before8, after8 = _int8_weights(edit, int8_layers)
    padded = _pad_activations(edit, layers, spec)
    edit.finish()
    report = QuantReport(
        scheme=spec.scheme, block_size=spec.block_size, exclude=spec.effective_exclude,
        quantized=[layer.name for layer in layers], skipped=skipped, int8=list(int8), warnings=skip_warnings(skipped),
        awq=choices,
        padded=padded, rounding="gptq" if gptq else "nearest", gptq_damp=spec.gptq_damp if gptq else None,
        gptq_act_order=spec.gptq_act_order if gptq else None,
        session_config={"session.qdq_matmulnbits_accuracy_level": str(spec.accuracy_level)},
        weight_bytes_before=before + before8, weight_bytes_after=after + after8,
    )
    return model, report


def _quantize_weights(
    edit: GraphEditor, layers: list[Layer], prepared: dict[str, np.ndarray],
    rounded: dict[str, tuple[np.ndarray, np.ndarray]], spec: QuantSpec,
) -> tuple[int, int]:
    """Each weight once: int4 + scale → DequantizeLinear, read by all its layers. The int4 +
    scale come from `rounded` (GPTQ) or RTN of the `prepared` W (AWQ: scaled) or of W.
    Returns bytes (float before, packed int4 + scales after)."""
    before = after = 0
    for weight, users in _by_weight(layers).items():
        w = edit.array(weight)
        block_size = spec.block_for(users[0].name)
        q, scale = rounded[weight] if weight in rounded else int4_quantize(prepared.get(weight, w), block_size)
        edit.dequantize_weight(weight, q, scale, "int4", [u.index for u in users], users[0].name, axis=0,
                               block_size=block_size)
        before += w.nbytes
        after += (q.size + 1) // 2 + scale.nbytes  # two int4 per byte
    return before, after


def _int8_weights(edit: GraphEditor, layers: list[Layer]) -> tuple[int, int]:
    """INT8 weight-only, one scale per output channel: int8 W → DequantizeLinear(axis=1) →
    MatMul, for each weight of `layers` (as it is now: AWQ may have scaled its rows). Returns
    bytes (float before, int8 + scales after)."""
    before = after = 0
    for weight, users in _by_weight(layers).items():
        w = edit.array(weight)
        q, scale = int8_channel_quantize(w)
        edit.dequantize_weight(weight, q, scale, "int8", [u.index for u in users], users[0].name, axis=1)
        before += w.nbytes
        after += q.nbytes + scale.nbytes
    return before, after


def _pad_activations(edit: GraphEditor, layers: list[Layer], spec: QuantSpec) -> list[str]:
    """One `Pad` to K' per activation read by layers whose K is not whole blocks; returns those layers."""
    groups: dict[str, list[Layer]] = {}
    for layer in layers:
        if layer.shape[0] % spec.block_for(layer.name):
            groups.setdefault(edit.node(layer.index).input[0], []).append(layer)  # after AWQ rewiring
    for x, group in groups.items():
        k, block_size = group[0].shape[0], spec.block_for(group[0].name)
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


def _gptq_weights(
    edit: GraphEditor, layers: list[Layer], prepared: dict[str, np.ndarray], scales: dict[str, np.ndarray],
    stats: dict[str, TensorStats], spec: QuantSpec, progress: Progress = silent,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{weight: (int4 q, scale)} by GPTQ for every weight, on its prepared (AWQ-scaled) W.

    A layer whose X AWQ scaled reads X / s, whose Gram matrix is diag(1/s) H diag(1/s); a
    weight read from several activations (tied) minimizes the sum of their output errors,
    under the sum of their Hessians. Weights reading the same activations share U and are
    rounded in one pass."""
    shared: dict[tuple[str, ...], list[str]] = {}  # weights by the activations they read
    block: dict[tuple[str, ...], int] = {}
    for weight, users in _by_weight(layers).items():
        xs = tuple(dict.fromkeys(layer.activation for layer in users))
        shared.setdefault(xs, []).append(weight)
        block[xs] = spec.block_for(users[0].name)  # the LM head reads its own X
    out = {}
    for done, (xs, names) in enumerate(shared.items()):
        progress("GPTQ group", done, len(shared))
        bs = block[xs]
        h = sum(_scaled_gram(stats[x], scales.get(x)) for x in xs)
        order = act_order(h, bs) if spec.gptq_act_order else None
        u = inverse_cholesky(h, bs, spec.gptq_damp, order)
        ws = [prepared.get(name, edit.array(name)) for name in names]
        q, scale = gptq_quantize(np.concatenate(ws, axis=1), u, bs, order)  # the columns side by side: one pass
        cuts = np.cumsum([w.shape[1] for w in ws])[:-1]
        parts = zip(np.split(q, cuts, axis=1), np.split(scale, cuts, axis=1))
        out.update({name: (np.ascontiguousarray(qi), np.ascontiguousarray(si)) for name, (qi, si) in zip(names, parts)})
    return out


def _scaled_gram(st: TensorStats, s: np.ndarray | None) -> np.ndarray:
    """(K, K) float64 Gram matrix of X / s (of X when s is None)."""
    assert st.gram is not None, "calibrate() was not asked for this tensor's Gram matrix"
    if s is None:
        return st.gram
    inv = 1.0 / s.astype(np.float64)
    return st.gram * inv[:, None] * inv[None, :]


def _apply_awq(
    edit: GraphEditor, layers: list[Layer], spec: QuantSpec, stats: dict[str, TensorStats] | None,
    progress: Progress = silent,
) -> tuple[dict[str, np.ndarray], list[AwqChoice], dict[str, np.ndarray]]:
    """Per activation group: search a scale, move 1/s onto X, scale the weights' rows by s.
    Returns {weight: the float [K, N] array to round}, what was chosen, and {X: s} where s != 1.

    Groups go last to first: a fold rescales a weight upstream of its X (down_proj's 1/s
    into up_proj's columns), so every group is searched on its final weights."""
    assert stats is not None
    groups = by_activation(layers)
    shared = shared_weights(groups)
    prepared, choices, scales = {}, [], {}
    for done, (x, group) in enumerate(reversed(groups.items())):
        progress("AWQ group", done, len(groups))
        if shared & {layer.weight for layer in group}:  # one scale per weight: plain RTN there
            choices.append(AwqChoice(activation=x, layers=[layer.name for layer in group], alpha=0.0, scaling="none"))
            continue
        scaled, choice, s = _awq_group(edit, x, group, stats[x], spec)
        prepared.update(scaled)
        choices.append(choice)
        if choice.scaling != "none":
            scales[x] = s
    return prepared, choices[::-1], scales


def _awq_group(
    edit: GraphEditor, x: str, group: list[Layer], st: TensorStats, spec: QuantSpec
) -> tuple[dict[str, np.ndarray], AwqChoice, np.ndarray]:
    """One group's scaled weights {weight: W * s}, choice and scale s (moved onto X when not 1:
    X W = (X / s)(s W))."""
    weights = [edit.array(layer.weight) for layer in group]  # after any fold into their columns
    result = awq.search(awq.unit_rows(st.rows), st.channel_mean_abs, weights, spec.block_for(group[0].name), spec.awq_alphas)
    scaling = "none"
    if not np.all(result.scale == 1):
        scaling = move_inverse(edit, x, group, (1.0 / result.scale).astype(weights[0].dtype), "awq")
    # move_inverse folds 1/s into X's producer and other readers' weights, never into these
    scaled = {layer.weight: (w * result.scale[:, None]).astype(w.dtype) for layer, w in zip(group, weights)}
    choice = AwqChoice(
        activation=x, layers=[layer.name for layer in group], alpha=result.alpha, scaling=scaling,
        error_rtn=result.error_rtn, error_awq=result.error,
    )
    return scaled, choice, result.scale
