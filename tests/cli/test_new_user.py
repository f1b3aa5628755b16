"""What a new user hits (issue 22): cheap mistakes refused at once, every option honoured or
refused, messages that say what to type. Each test runs the CLI as a user types it."""

from __future__ import annotations

import time

import pytest

from tests.conftest import assert_user_error, ingot, tree_digest

FAST_S = 15  # a refusal before any model load/export takes an interpreter start, not a build


def timed(*args: str):
    start = time.monotonic()
    proc = ingot(*args)
    return proc, time.monotonic() - start


@pytest.mark.parametrize("scheme", ["fp8", "int4-awq"])
def test_quant_without_calib_is_refused_before_loading(scheme, tiny_llama_dir, tmp_path):
    proc, took = timed("build", tiny_llama_dir, "-o", tmp_path / "q", "--quant", scheme)
    assert_user_error(proc, f"--quant {scheme} needs calibration data: pass --calib FILE")
    assert took < FAST_S, took
    assert not (tmp_path / "q").exists()


def test_other_models_bundle_at_output_is_refused_before_export(cnn_bundle, tiny_llama_dir, tmp_path):
    out = tmp_path / "cnn"
    assert ingot("build", cnn_bundle / "targets/cpu-x86_64/model.onnx", "-o", out).returncode == 0
    before = tree_digest(out)
    proc, took = timed("build", tiny_llama_dir, "-o", out, "--quant", "int4")
    assert_user_error(proc, "holds a bundle of a different model", "--overwrite")
    assert "export to ONNX" not in proc.stderr, proc.stderr
    assert took < FAST_S, took
    assert tree_digest(out) == before
