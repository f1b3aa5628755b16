"""Mixed precision by measured sensitivity: the layers whose quantization alone moves the
model's output most stay in float.

Each candidate layer is quantized on its own (every other layer float) and the model is run
on the calibration feeds; its drift is ||y_q - y|| / ||y|| over every float output and feed.
Either a fixed number of the layers of largest drift stay float (`keep_sensitive`), or the
fewest of them such that the quantized model reaches a target on the check feeds (`Target`:
cosine to the float model's outputs, top-1 agreement). The ranking costs one ONNX Runtime session and one pass
over the feeds per candidate layer, and a target search a few whole quantizations more, so a
model that meets its target quantized throughout is not ranked at all.

EfficientNet-Lite0, FP8, calibrated on 4 photos and their flips (tests/real): the stem conv
(drift 0.27 alone) and block 0's depthwise conv (0.24) lead, far ahead of the rest (<= 0.11);
all 50 layers in FP8 drift 0.40 and keep top-1 on 2 of the 4 photos, the 6 most sensitive
layers in float drift 0.17 and keep all 4.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx

from ingot.quant.errors import QuantError
from ingot.quant.layers import Layer
from ingot.quant.report import Progress, QuantReport, SkippedLayer, silent

# quantize(layer) -> (model, report): the pass with only `layer` quantized
Quantizer = Callable[[Layer], tuple[onnx.ModelProto, QuantReport]]
# build(layers, float_layers) -> (model, report): the whole pass over `layers`, `float_layers`
# (the rest of the candidates) kept in float with their reasons
Builder = Callable[[list[Layer], list[SkippedLayer]], tuple[onnx.ModelProto, QuantReport]]
Feeds = list[dict[str, np.ndarray]]
# A target search that keeps more than this share of the layers in float says so (a warning)
MAX_FLOAT_SHARE = 0.5
# The share of samples a cosine target may miss (the quantile `score` takes)
COSINE_QUANTILE = 0.1
# A top-1 target counts a flip only where the float model's top logit leads the runner-up by
# this much (probability ratio e^0.1 = 1.1): nearer ties flip under any rounding. Among 12
# photos unlike ImageNet's (EfficientNet-Lite0), one led by 0.007 and flipped with 49 of 50
# layers float; the sample photo `rocket` leads by 0.15 and keeps top-1 with 19 float
TOP1_MARGIN = 0.1


@dataclass(frozen=True)
class Target:
    """What a mixed-precision search must reach on the check feeds: the COSINE_QUANTILE
    quantile of per-sample cosines, lowest over float outputs, and the top-1 agreement of
    the output named `logits` (else the first output)."""

    cosine: float | None = None
    top1: float | None = None

    def met(self, score: dict[str, float]) -> bool:
        return (self.cosine is None or score["cosine"] >= self.cosine) and (self.top1 is None or score["top1"] >= self.top1)

    def __str__(self) -> str:
        return " and ".join(f"{name} {value:g}" for name, value in (("cosine", self.cosine), ("top-1", self.top1))
                            if value is not None)


Attempt = tuple[onnx.ModelProto, QuantReport, dict[str, float]]


def mixed(
    model: onnx.ModelProto, layers: list[Layer], lone: Quantizer, build: Builder, feeds: Feeds | None,
    scheme: str, count: int = 0, target: Target = Target(), progress: Progress = silent,
) -> tuple[onnx.ModelProto, QuantReport]:
    """`build` with the `count` most sensitive `layers` in float, or with the fewest that reach
    `target` (at least `count`); without either, `build([])`."""
    aims = target.cosine is not None or target.top1 is not None
    if not (count or aims) or len(layers) < 2:
        return build(layers, [])
    if not feeds:
        raise QuantError(f"--quant {scheme}: ranking layers by sensitivity needs calibration data (--calib)")
    count = min(count, len(layers) - 1)  # one layer at least stays quantized
    reference = _outputs(_session(model), feeds)
    if not aims:
        return _float(layers, build, keep_sensitive(layer_drift(model, layers, lone, feeds, reference, progress), count))
    return _toward(model, layers, lone, build, feeds, reference, count, target, progress)


def _float(layers: list[Layer], build: Builder, sensitive: list[SkippedLayer]) -> tuple[onnx.ModelProto, QuantReport]:
    """`build` with the `sensitive` layers kept float, the rest quantized."""
    names = {s.name for s in sensitive}
    return build([layer for layer in layers if layer.name not in names], sensitive)


def _toward(
    model: onnx.ModelProto, layers: list[Layer], lone: Quantizer, build: Builder, feeds: Feeds,
    reference: list[np.ndarray], count: int, target: Target, progress: Progress = silent,
) -> tuple[onnx.ModelProto, QuantReport]:
    """The fewest most-sensitive layers float (count..all but one, by bisection) whose build reaches `target`."""

    def attempt(k: int, drift: dict[str, float]) -> Attempt:
        qmodel, report = _float(layers, build, keep_sensitive(drift, k, target))
        return qmodel, report, score(qmodel, report, feeds, reference)

    if count == 0 and target.met((first := attempt(0, {}))[2]):
        return _reached(first, target, 0, len(layers))
    drift = layer_drift(model, layers, lone, feeds, reference, progress)
    cap = len(layers) - 1
    best = attempt(cap, drift)
    if not target.met(best[2]):  # best effort: all but one layer float, with a warning
        warning = (f"target {target} not reached on the calibration data even with {cap} of "
                   f"{len(layers)} layers in float: {_figures(best[2])}")
        return best[0], _with_target(best[1], target, best[2], [warning])
    low, high = count - 1 if count else 0, cap  # `low` float layers miss the target (or are below count)
    while high - low > 1:
        mid = (low + high) // 2
        tried = attempt(mid, drift)
        if target.met(tried[2]):
            high, best = mid, tried
        else:
            low = mid
    return _reached(best, target, high, len(layers))


def _reached(attempt: Attempt, target: Target, kept: int, layers: int) -> tuple[onnx.ModelProto, QuantReport]:
    qmodel, report, figures = attempt
    warnings = []
    if kept > MAX_FLOAT_SHARE * layers:
        warnings.append(f"target {target} kept {kept} of {layers} layers in float; "
                        "--target-cosine 0 quantizes them all, a smaller target fewer")
    return qmodel, _with_target(report, target, figures, warnings)


def _with_target(report: QuantReport, target: Target, figures: dict[str, float], warnings: list[str]) -> QuantReport:
    return report.model_copy(update={
        "target_cosine": target.cosine, "target_top1": target.top1, "calib_cosine": figures["cosine"],
        "calib_top1": figures.get("top1"), "warnings": [*report.warnings, *warnings],
    })


def _figures(figures: dict[str, float]) -> str:
    return ", ".join(f"{name} {value:.4f}" for name, value in figures.items())


def layer_drift(
    model: onnx.ModelProto, layers: list[Layer], quantize: Quantizer, feeds: Feeds,
    reference: list[np.ndarray] | None = None, progress: Progress = silent,
) -> dict[str, float]:
    """{layer name: relative output drift with only that layer quantized}."""
    reference = reference if reference is not None else _outputs(_session(model), feeds)
    norm = float(np.sqrt(sum(float(np.sum(y.astype(np.float64) ** 2)) for y in reference))) or 1.0
    drift = {}
    for done, layer in enumerate(layers):
        progress("sensitivity of layer", done, len(layers))
        qmodel, report = quantize(layer)
        got = _outputs(_session(qmodel, report.session_config), feeds)
        err = sum(float(np.sum((g.astype(np.float64) - r) ** 2)) for g, r in zip(got, reference))
        drift[layer.name] = float(np.sqrt(err)) / norm
    return drift


def score(qmodel: onnx.ModelProto, report: QuantReport, feeds: Feeds, reference: list[np.ndarray]) -> dict[str, float]:
    """How closely `qmodel` follows `reference` on `feeds`. "cosine": per sample (row of the
    batch axis, flattened) the cosine of each float output, of those the COSINE_QUANTILE
    quantile over samples, lowest over outputs (a quantile, not the mean: a target is meant to
    hold for nearly every input, and a mean over long inputs hides the short ones). "top1":
    1 - the share of rows whose argmax over the last axis of `logits` (else the first output)
    flips where the float model's top-1 leads by TOP1_MARGIN."""
    session = _session(qmodel, report.session_config)
    names = [o.name for o in session.get_outputs()]
    got = _outputs(session, feeds)
    head = names.index("logits") if "logits" in names else 0
    cosines: dict[int, list[np.ndarray]] = {}
    agree: list[np.ndarray] = []
    for i, (g, r) in enumerate(zip(got, reference)):
        if not (np.issubdtype(r.dtype, np.floating) and r.ndim):
            continue
        if i % len(names) == head:
            agree.append(_decided(r) & (g.argmax(-1) != r.argmax(-1)))
        g, r = g.astype(np.float64).reshape(len(r), -1), r.astype(np.float64).reshape(len(r), -1)
        norms = np.linalg.norm(g, axis=-1) * np.linalg.norm(r, axis=-1)
        cosines.setdefault(i % len(names), []).append((g * r).sum(-1) / np.maximum(norms, 1e-30))
    figures = {"cosine": min(float(np.quantile(np.concatenate(c), COSINE_QUANTILE)) for c in cosines.values())}
    if agree:
        figures["top1"] = 1.0 - float(np.concatenate([a.ravel() for a in agree]).mean())
    return figures


def _decided(logits: np.ndarray) -> np.ndarray:
    """Rows whose top logit leads the runner-up by at least TOP1_MARGIN: a tie has no top-1 to keep."""
    top2 = np.sort(logits, axis=-1)[..., -2:]
    return (top2[..., 1] - top2[..., 0]) >= TOP1_MARGIN


def keep_sensitive(drift: dict[str, float], count: int, target: Target | None = None) -> list[SkippedLayer]:
    """The `count` layers of largest drift, as float layers with the reason."""
    ranked = sorted(drift, key=lambda name: -drift[name])[:count]
    why = f"target {target}" if target is not None else f"keep_sensitive {count}"
    return [
        SkippedLayer(
            name=name, warn=target is None,
            reason=f"sensitive: quantized alone it moves the output by {drift[name]:.3g} (relative), "
                   f"rank {rank} of {len(drift)} ({why})",
        )
        for rank, name in enumerate(ranked, 1)
    ]


def _session(model: onnx.ModelProto, config: dict[str, str] | None = None):
    """A CPU session as the runtime makes one (all optimizations, the report's session config)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    for key, value in (config or {}).items():
        options.add_session_config_entry(key, value)
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _outputs(session, feeds: Feeds) -> list[np.ndarray]:
    names = [o.name for o in session.get_outputs()]
    inputs = {i.name for i in session.get_inputs()}
    return [y for feed in feeds for y in session.run(names, {k: v for k, v in feed.items() if k in inputs})]
