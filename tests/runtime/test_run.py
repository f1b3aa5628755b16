"""`ingot run`: inputs checked against the manifest, outputs printed, saved or JSON."""

import json
import shutil

import numpy as np
import pytest

from ingot.plans import BundleError, open_bundle
from ingot.plans.errors import ChecksumError, ManifestError
from ingot.runtime import InputError, load
from ingot.runtime.inputs import load_npy
from tests.conftest import assert_user_error, build, ingot


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


@pytest.fixture(scope="module")
def cnn(cnn_bundle):
    return load(cnn_bundle)


@pytest.mark.parametrize("arr,message", [
    (np.zeros((2, 3, 16, 16), np.float64), "dtype float64"),
    (np.zeros((2, 3, 15, 16), np.float32), "size 15 on axis 2, needs 16"),
    (np.zeros((9, 3, 16, 16), np.float32), "size 9 on axis 0 (batch), outside 1..8"),
    (np.zeros((3, 16, 16), np.float32), "rank 3"),
])
def test_bad_inputs_list_the_expected_ones(cnn, arr, message):
    with pytest.raises(InputError) as info:
        cnn.run({"image": arr})
    assert message in str(info.value) and "expected inputs: image: float32[batch(1..8), 3, 16, 16]" in str(info.value)


def test_wrong_or_missing_input_name(cnn):
    with pytest.raises(InputError, match="unknown input 'pixels', missing input 'image'; expected inputs: image"):
        cnn.run({"pixels": np.zeros((1, 3, 16, 16), np.float32)})
    with pytest.raises(InputError, match="missing input 'image'"):
        cnn.run({})


def test_text_on_a_model_without_tokenizer(cnn):
    with pytest.raises(InputError, match="has no tokenizer"):
        cnn.encode(["hi"])


def test_pickled_npy_is_refused(tmp_path):
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match="holds Python objects, not numbers"):
        load_npy(f"image={tmp_path / 'obj.npy'}")


def test_flipped_byte_refuses_to_run(cnn_bundle, tmp_path):
    copy = shutil.copytree(cnn_bundle, tmp_path / "copy")
    f = copy / "targets/cpu-x86_64/model.onnx"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match="checksum mismatch: targets/cpu-x86_64/model.onnx"):
        load(copy)
    with pytest.raises(ChecksumError, match="targets/cpu-x86_64/model.onnx"):
        open_bundle(copy, verify=True)


def test_truncated_manifest(cnn_bundle, tmp_path):
    copy = shutil.copytree(cnn_bundle, tmp_path / "copy")
    text = (copy / "manifest.json").read_text()
    (copy / "manifest.json").write_text(text[: len(text) // 3])
    with pytest.raises(ManifestError, match="manifest.json is not valid JSON"):
        load(copy)


def test_not_a_bundle_is_one_error_line(tmp_path):
    assert_user_error(ingot("run", tmp_path, "--text", "x"), "is not an ingot bundle")
    with pytest.raises(ManifestError, match="bundle not found"):
        load(tmp_path / "nope")


def test_no_target_for_this_machine(cnn_bundle, tmp_path):
    arm = tmp_path / "arm"
    build(cnn_bundle / "targets/cpu-x86_64/model.onnx", arm, targets=["cpu-aarch64"])
    with pytest.raises(BundleError, match="no target for this machine.*bundle targets: cpu-aarch64.*--target cpu-x86_64 --output"):
        load(arm)


def test_debug_shows_the_traceback(tmp_path):
    proc = ingot("run", tmp_path / "nope", "--text", "x", "--debug")
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "ManifestError" in proc.stderr
