import subprocess
import sys

import pytest
from pydantic import ValidationError

from ingot.quant import QuantReport, QuantSpec, SkippedLayer
from tests.conftest import REPO


@pytest.mark.parametrize("size", [0, 8, 15, 48, 100, 129, -16])
def test_block_size_must_be_a_power_of_two(size):
    with pytest.raises(ValidationError, match="block size must be a power of two >= 16"):
        QuantSpec(scheme="int4", block_size=size)


@pytest.mark.parametrize("size", [16, 32, 64, 128, 256])
def test_block_size_accepts_powers_of_two(size):
    assert QuantSpec(scheme="int4", block_size=size).block_size == size


def test_spec_is_frozen_and_strict():
    spec = QuantSpec(scheme="fp8")
    with pytest.raises(ValidationError):
        spec.block_size = 64
    with pytest.raises(ValidationError):
        QuantSpec(scheme="fp8", blocksize=64)
    with pytest.raises(ValidationError):
        QuantSpec(scheme="int8")
    with pytest.raises(ValidationError):
        QuantSpec(scheme="int4", accuracy_level=5)
    with pytest.raises(ValidationError):
        QuantSpec(scheme="int4-awq", awq_alphas=[0.5, 1.5])
    for removed in ("smooth", "awq_duo", "awq_clip"):  # experiments that did not help (BENCHMARKS.md)
        with pytest.raises(ValidationError):
            QuantSpec(scheme="int4-awq", **{removed: True})
    with pytest.raises(ValidationError):
        QuantSpec(scheme="fp8", massive_ratio=1.0)
    with pytest.raises(ValidationError):
        QuantSpec(scheme="fp8", percentile=0)


def test_defaults():
    spec = QuantSpec(scheme="int4")
    assert (spec.block_size, spec.calib_method, spec.accuracy_level) == (128, "max", 4)
    assert spec.awq_alphas == [i / 10 for i in range(11)]
    assert (spec.search_rows, spec.massive_ratio) == (512, 100.0)
    assert spec.kv_float is None and spec.recipe_precision == "float"  # k/v float: int4-awq's default, not RTN's


@pytest.mark.parametrize("scheme", ["fp8", "int4", "int4-awq"])
def test_lm_head_is_excluded_by_default(scheme):
    assert QuantSpec(scheme=scheme).effective_exclude == ["lm_head*"]
    assert QuantSpec(scheme=scheme, exclude=["*.mlp.*"]).effective_exclude == ["*.mlp.*", "lm_head*"]
    assert QuantSpec(scheme=scheme, exclude=["lm_head*"]).effective_exclude == ["lm_head*"]
    assert QuantSpec(scheme=scheme, exclude=["x"]).exclude == ["x"]  # the user's list is not changed


def test_none_excludes_nothing_extra():
    assert QuantSpec(scheme="none").effective_exclude == []


@pytest.mark.parametrize("scheme,needs", [("none", False), ("int4", False), ("int4-awq", True), ("fp8", True)])
def test_needs_calibration(scheme, needs):
    assert QuantSpec(scheme=scheme).needs_calibration is needs


def test_report_round_trips_as_json():
    report = QuantReport(
        scheme="int4", block_size=32, quantized=["a/MatMul"],
        skipped=[SkippedLayer(name="lm_head/MatMul", reason="excluded by 'lm_head*'")],
        session_config={"session.qdq_matmulnbits_accuracy_level": "4"},
    )
    assert QuantReport.model_validate_json(report.model_dump_json()) == report
    assert (report.layers_quantized, report.layers_skipped) == (1, 1)


def test_import_is_cheap():
    code = (
        "import sys, ingot.quant; "
        "heavy = [m for m in ('onnx', 'onnxruntime', 'numpy', 'ml_dtypes', 'torch') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_quant_imports_nothing_else_from_ingot():
    for path in (REPO / "ingot" / "quant").glob("*.py"):
        for line in path.read_text().splitlines():
            words = line.split()
            if words[:1] in (["from"], ["import"]) and words[1].startswith("ingot"):
                assert words[1] == "ingot.quant" or words[1].startswith("ingot.quant."), (path.name, line)
