"""Every way a source can be wrong gets one clear line and exit 1; nothing is written."""

import pytest

from ingot.builder import SourceError
from ingot.builder.sources import load_source
from tests.conftest import assert_user_error, ingot


def test_missing_source(tmp_path):
    proc = ingot("build", tmp_path / "nope", "-o", tmp_path / "out")
    assert_user_error(proc, "source not found", "nope")
    assert not (tmp_path / "out").exists()


def test_hub_id_says_pass_a_local_folder(tmp_path):
    proc = ingot("build", "HuggingFaceTB/SmolLM2-135M", "-o", tmp_path / "out")
    assert_user_error(proc, "hub id", "local folder")


def test_unsupported_file_type(tmp_path):
    (tmp_path / "model.txt").write_text("hello")
    assert_user_error(ingot("build", tmp_path / "model.txt", "-o", tmp_path / "out"), "unsupported source file type '.txt'")


@pytest.mark.parametrize("name,message", [("bad.gguf", "cannot read GGUF file"), ("bad.onnx", "cannot read ONNX file")])
def test_unreadable_files(tmp_path, name, message):
    (tmp_path / name).write_bytes(b"\x00garbage" * 100)
    assert_user_error(ingot("build", tmp_path / name, "-o", tmp_path / "out"), message, name)
    assert not (tmp_path / "out").exists()


def test_folder_without_config(tmp_path):
    (tmp_path / "m").mkdir()
    with pytest.raises(SourceError, match="no config.json"):
        load_source(str(tmp_path / "m"))


def test_folder_with_pickle_weights_only(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    (tmp_path / "m" / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(SourceError, match="no \\*.safetensors"):
        load_source(str(tmp_path / "m"))


@pytest.mark.parametrize("func,message", [
    ("missing", "has no function 'missing'"),
    ("not_a_model", "must return ingot.builder.ModelSpec"),
    ("broken", "the factory raised RuntimeError: weights file is missing"),
])
def test_bad_factories(tiny_cnn_py, func, message):
    with pytest.raises(SourceError, match=message):
        load_source(f"{tiny_cnn_py}:{func}")


def test_unimportable_module(tmp_path):
    assert_user_error(ingot("build", "no_such_module_xyz:model", "-o", tmp_path / "o"), "cannot import 'no_such_module_xyz'")


def test_factory_tuple_form(tiny_cnn_py):
    loaded = load_source(f"{tiny_cnn_py}:as_tuple")
    assert list(loaded.example) == ["image"] and loaded.output_names == ["output"] and loaded.dims == {}


def test_export_failure_names_the_op(tiny_cnn_py, tmp_path):
    proc = ingot("build", f"{tiny_cnn_py}:unexportable", "-o", tmp_path / "out")
    assert_user_error(proc, "operator aten.linalg_eig has no ONNX conversion", "Eig")
    assert not (tmp_path / "out").exists()


def test_gpu_target_without_tensorrt(tiny_cnn_py, tmp_path):
    pytest.importorskip("torch")
    try:
        import tensorrt  # noqa: F401

        pytest.skip("TensorRT is installed here")
    except ImportError:
        pass
    proc = ingot("build", f"{tiny_cnn_py}:model", "--target", "sm_90", "-o", tmp_path / "out")
    assert_user_error(proc, "target sm_90 needs TensorRT 11, which is not installed", "ingot[tensorrt]")
    assert not (tmp_path / "out").exists()


def test_unknown_target(tiny_cnn_py, tmp_path):
    assert_user_error(ingot("build", f"{tiny_cnn_py}:model", "--target", "tpu", "-o", tmp_path / "o"), "unknown target 'tpu'")


def test_bad_dim_override(tiny_cnn_py, tmp_path):
    proc = ingot("build", f"{tiny_cnn_py}:model", "--dim", "sequence=1:8", "-o", tmp_path / "o")
    assert_user_error(proc, "--dim sequence: no such dynamic dim", "batch")
    assert ingot("build", f"{tiny_cnn_py}:model", "--dim", "batch", "-o", tmp_path / "o").returncode == 2
