"""`ingot run`: inputs checked against the manifest, outputs printed, saved or JSON."""

import json
import shutil

import numpy as np
import pytest

from ingot.runtime import InputError, load
from tests.conftest import assert_user_error, built, ingot


def npy(tmp_path, name, arr):
    np.save(tmp_path / f"{name}.npy", arr)
    return f"image={tmp_path / f'{name}.npy'}"


def test_run_npy_to_npz_and_json(cnn_bundle, tmp_path):
    x = np.random.default_rng(1).standard_normal((3, 3, 16, 16)).astype(np.float32)
    want = load(cnn_bundle).run({"image": x})["logits"]
    proc = ingot("run", cnn_bundle, "--input", npy(tmp_path, "x", x), "--output", tmp_path / "out.npz")
    assert proc.returncode == 0, proc.stderr
    assert np.array_equal(np.load(tmp_path / "out.npz")["logits"], want)
    proc = ingot("run", cnn_bundle, "--input", npy(tmp_path, "x", x), "--json")
    data = json.loads(proc.stdout)
    assert data["target"] == "cpu-x86_64" and data["outputs"]["logits"]["shape"] == [3, 5]
    assert np.allclose(np.array(data["outputs"]["logits"]["data"], np.float32), want)
    text = ingot("run", cnn_bundle, "--input", npy(tmp_path, "x", x)).stdout
    assert "logits  float32[3, 5]" in text and "top-5" in text


@pytest.mark.parametrize("arr,message", [
    (np.zeros((2, 3, 16, 16), np.float64), "dtype float64"),
    (np.zeros((2, 3, 15, 16), np.float32), "size 15 on axis 2, needs 16"),
    (np.zeros((9, 3, 16, 16), np.float32), "size 9 on axis 0 (batch), outside 1..8"),
    (np.zeros((3, 16, 16), np.float32), "rank 3"),
])
def test_bad_inputs_list_the_expected_ones(cnn_bundle, tmp_path, arr, message):
    proc = ingot("run", cnn_bundle, "--input", npy(tmp_path, "bad", arr))
    assert_user_error(proc, message, "expected inputs: image: float32[batch(1..8), 3, 16, 16]")


def test_wrong_input_name(cnn_bundle, tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((1, 3, 16, 16), np.float32))
    proc = ingot("run", cnn_bundle, "--input", f"pixels={tmp_path / 'x.npy'}")
    assert_user_error(proc, "unknown input 'pixels'", "missing input 'image'", "expected inputs: image")


def test_text_on_a_model_without_tokenizer(cnn_bundle):
    assert_user_error(ingot("run", cnn_bundle, "--text", "hi"), "has no tokenizer")


def test_pickled_npy_is_refused(cnn_bundle, tmp_path):
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    assert_user_error(ingot("run", cnn_bundle, "--input", f"image={tmp_path / 'obj.npy'}"), "cannot read")


def test_flipped_byte_refuses_to_run(cnn_bundle, tmp_path):
    copy = shutil.copytree(cnn_bundle, tmp_path / "copy")
    f = copy / "targets/cpu-x86_64/model.onnx"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    assert_user_error(ingot("run", copy, "--input", npy(tmp_path, "x", np.zeros((1, 3, 16, 16), np.float32))),
                      "checksum mismatch: targets/cpu-x86_64/model.onnx")
    assert_user_error(ingot("inspect", copy, "--check"), "targets/cpu-x86_64/model.onnx")


def test_truncated_manifest(cnn_bundle, tmp_path):
    copy = shutil.copytree(cnn_bundle, tmp_path / "copy")
    text = (copy / "manifest.json").read_text()
    (copy / "manifest.json").write_text(text[: len(text) // 3])
    assert_user_error(ingot("inspect", copy), "manifest.json is not valid JSON")
    assert_user_error(ingot("run", copy, "--text", "x"), "manifest.json is not valid JSON")


def test_not_a_bundle(tmp_path):
    assert_user_error(ingot("run", tmp_path, "--text", "x"), "is not an ingot bundle")
    assert_user_error(ingot("run", tmp_path / "nope", "--text", "x"), "bundle not found")


def test_no_target_for_this_machine(tiny_cnn_py, tmp_path):
    arm = built(f"{tiny_cnn_py}:model", tmp_path / "arm", "--target", "cpu-aarch64")
    proc = ingot("run", arm, "--input", npy(tmp_path, "x", np.zeros((1, 3, 16, 16), np.float32)))
    assert_user_error(proc, "no target for this machine", "bundle targets: cpu-aarch64",
                      "--target cpu-x86_64 --output")


def test_debug_shows_the_traceback(tmp_path):
    proc = ingot("run", tmp_path / "nope", "--text", "x", "--debug")
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "ManifestError" in proc.stderr


def test_python_api_checks_inputs(cnn_bundle):
    with pytest.raises(InputError, match="missing input 'image'"):
        load(cnn_bundle).run({})
