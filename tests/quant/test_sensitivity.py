import numpy as np
import pytest

from ingot.quant import QuantError, QuantSpec, quantize
from ingot.quant.calibrate import calibrate
from ingot.quant.fp8 import _quantize_fp8, fp8_activations, fp8_layers, quantize_fp8
from ingot.quant.sensitivity import Target, _decided, _outputs, _session, keep_sensitive, layer_drift, score


def test_keep_sensitive_takes_the_largest_drifts_with_reasons():
    skipped = keep_sensitive({"a": 0.01, "b": 0.3, "c": 0.2, "d": 0.0}, 2)
    assert [s.name for s in skipped] == ["b", "c"]
    assert all(s.warn and s.reason.startswith("sensitive:") for s in skipped)
    assert "0.3" in skipped[0].reason and "rank 1 of 4" in skipped[0].reason


def test_fp8_keeps_the_most_sensitive_layers_in_float(tiny_llama_onnx, calib_feeds):
    spec = QuantSpec(scheme="fp8", keep_sensitive=3)
    qmodel, report = quantize(tiny_llama_onnx, spec, calib_feeds)
    sensitive = [s.name for s in report.skipped if s.reason.startswith("sensitive:")]
    assert len(sensitive) == 3 and len(report.quantized) == 14 - 3
    assert not set(sensitive) & set(report.quantized)
    assert any(f"{name} stays in float: sensitive" in w for w in report.warnings for name in sensitive)
    # they are the three whose lone quantization moves the logits most
    stats = calibrate(tiny_llama_onnx, calib_feeds, fp8_activations(tiny_llama_onnx, spec))
    layers, skipped = fp8_layers(tiny_llama_onnx, spec)
    drift = layer_drift(tiny_llama_onnx, layers, lambda layer: _quantize_fp8(tiny_llama_onnx, spec, stats, [layer], skipped), calib_feeds)
    assert len(drift) == 14 and all(d > 0 for d in drift.values())
    assert set(sensitive) == set(sorted(drift, key=drift.get)[-3:])
    # the layers left out are float in the graph: their weights are not FP8
    inputs = {n.name: list(n.input) for n in qmodel.graph.node}
    assert all(not inputs[name][1].endswith("_dq") for name in sensitive)


def test_keep_sensitive_off_by_default_and_needs_feeds(tiny_llama_onnx, calib_feeds):
    _, report = quantize(tiny_llama_onnx, QuantSpec(scheme="fp8"), calib_feeds)
    assert len(report.quantized) == 14 and not any(s.reason.startswith("sensitive") for s in report.skipped)
    spec = QuantSpec(scheme="fp8", keep_sensitive=1)
    stats = calibrate(tiny_llama_onnx, calib_feeds, fp8_activations(tiny_llama_onnx, spec))
    with pytest.raises(QuantError, match="ranking layers by sensitivity needs calibration data"):
        quantize_fp8(tiny_llama_onnx, spec, stats)
    assert np.isfinite(stats[next(iter(stats))].absmax)


@pytest.mark.parametrize("scheme", ["int4", "int4-awq"])
def test_int4_keeps_the_layers_most_sensitive_to_rounding_in_float(tiny_llama_onnx, calib_feeds, scheme):
    from ingot.quant.int4 import int4_layers, quantize_int4

    spec = QuantSpec(scheme=scheme, block_size=16, keep_sensitive=2, kv_float=False, massive_ratio=None)
    qmodel, report = quantize(tiny_llama_onnx, spec, calib_feeds)
    sensitive = [s.name for s in report.skipped if s.reason.startswith("sensitive:")]
    layers, _ = int4_layers(tiny_llama_onnx, spec)
    assert len(sensitive) == 2 and len(report.quantized) == len(layers) - 2 and not set(sensitive) & set(report.quantized)
    assert report.exclude == spec.effective_exclude and report.calib_samples == len(calib_feeds)
    # they are the two whose lone round-to-nearest quantization moves the logits most
    names = [layer.name for layer in layers]
    alone = QuantSpec(scheme="int4", block_size=16)
    drift = layer_drift(tiny_llama_onnx, layers, lambda layer: quantize_int4(tiny_llama_onnx, alone.model_copy(
        update={"exclude": [n for n in names if n != layer.name]})), calib_feeds)
    assert set(sensitive) == set(sorted(drift, key=drift.get)[-2:])
    inputs = {n.name: list(n.input) for n in qmodel.graph.node}
    assert all(not inputs[name][1].endswith("_dq") for name in sensitive)  # float weights


def test_int4_keep_sensitive_needs_calibration(tiny_llama_onnx):
    with pytest.raises(QuantError, match="needs calibration data"):
        quantize(tiny_llama_onnx, QuantSpec(scheme="int4", keep_sensitive=1), None)


def _sensitive(report) -> list[str]:
    return [s.name for s in report.skipped if s.reason.startswith("sensitive:")]


def test_score_is_one_for_the_float_model_and_lower_for_a_quantized_one(tiny_llama_onnx, calib_feeds):
    from ingot.quant import QuantReport

    reference = _outputs(_session(tiny_llama_onnx), calib_feeds)
    assert score(tiny_llama_onnx, QuantReport(scheme="none"), calib_feeds, reference) == pytest.approx(
        {"cosine": 1.0, "top1": 1.0})
    qmodel, report = quantize(tiny_llama_onnx, QuantSpec(scheme="int4", block_size=16), None)
    got = score(qmodel, report, calib_feeds, reference)
    assert 0.5 < got["cosine"] < 0.9999 and 0 < got["top1"] <= 1


def test_a_top1_target_ignores_ties():
    logits = np.array([[3.0, 1.0, 0.0], [1.0, 1.05, 0.0], [0.0, 0.0, 2.0]])
    assert list(_decided(logits)) == [True, False, True]
    target = Target(cosine=0.99, top1=0.9)
    assert target.met({"cosine": 0.995, "top1": 0.95}) and not target.met({"cosine": 0.98, "top1": 1.0})
    assert not target.met({"cosine": 0.999, "top1": 0.8}) and Target().met({"cosine": 0.0})
    assert str(target) == "cosine 0.99 and top-1 0.9"


def test_a_target_met_by_the_whole_quantization_ranks_nothing(tiny_llama_onnx, calib_feeds):
    qmodel, report = quantize(tiny_llama_onnx, QuantSpec(scheme="int4", block_size=16, target_cosine=0.5), calib_feeds)
    assert _sensitive(report) == [] and report.target_cosine == 0.5 and report.calib_cosine >= 0.5


def test_a_target_keeps_the_fewest_sensitive_layers_float_that_reach_it(tiny_llama_onnx, calib_feeds):
    base = dict(scheme="int4", block_size=16)
    reference = _outputs(_session(tiny_llama_onnx), calib_feeds)
    whole = score(*quantize(tiny_llama_onnx, QuantSpec(**base), None), calib_feeds, reference)["cosine"]
    aim = 1.0 - (1.0 - whole) / 4  # a quarter of the whole quantization's shortfall
    qmodel, report = quantize(tiny_llama_onnx, QuantSpec(**base, target_cosine=aim), calib_feeds)
    kept = _sensitive(report)
    assert 0 < len(kept) < len(report.quantized) + len(kept)
    # scored before the float weights were stored fp16 (which moves it by ~1e-6)
    assert report.calib_cosine >= aim
    assert report.calib_cosine == pytest.approx(score(qmodel, report, calib_feeds, reference)["cosine"], abs=1e-4)
    assert all(f"(target cosine {aim:g})" in s.reason and not s.warn for s in report.skipped if s.name in kept)
    # one layer fewer (the same ranking: keep_sensitive) misses it
    fewer = quantize(tiny_llama_onnx, QuantSpec(**base, keep_sensitive=len(kept) - 1), calib_feeds)
    assert set(_sensitive(fewer[1])) < set(kept)
    assert score(*fewer, calib_feeds, reference)["cosine"] < aim


def test_a_target_out_of_reach_keeps_all_but_one_layer_float_and_warns(tiny_llama_onnx, calib_feeds):
    qmodel, report = quantize(tiny_llama_onnx, QuantSpec(scheme="fp8", target_cosine=1.0), calib_feeds)
    assert len(report.quantized) == 1 and len(_sensitive(report)) == 13
    assert any("target cosine 1 not reached on the calibration data even with 13 of 14" in w for w in report.warnings)


def test_a_target_is_scored_on_the_check_feeds(tiny_llama_onnx, calib_feeds):
    """int4-awq fits its scales on the calibration feeds; the target is scored on the check feeds."""
    spec = QuantSpec(scheme="int4-awq", block_size=16, target_cosine=0.5)
    check = [{k: v[:, ::-1].copy() for k, v in feed.items()} for feed in calib_feeds]
    _, report = quantize(tiny_llama_onnx, spec, calib_feeds, check)
    _, on_calib = quantize(tiny_llama_onnx, spec, calib_feeds)
    assert report.calib_cosine != on_calib.calib_cosine


def test_keep_sensitive_beyond_the_layers_keeps_one_quantized(tiny_llama_onnx, calib_feeds):
    for spec in (QuantSpec(scheme="fp8", keep_sensitive=100), QuantSpec(scheme="fp8", keep_sensitive=100, target_cosine=0.5)):
        _, report = quantize(tiny_llama_onnx, spec, calib_feeds)
        assert len(report.quantized) == 1 and len(_sensitive(report)) == 13
