"""Every way a source can be wrong raises one clear SourceError; nothing is written. One case goes
through the CLI, as a user sees it: one `error:` line and exit 1."""

import pytest

from ingot.builder import BuildError, ExportError, SourceError
from ingot.builder.sources import load_source
from tests.conftest import assert_user_error, build, ingot


def test_missing_source_is_one_error_line(tmp_path):
    proc = ingot("build", tmp_path / "nope", "-o", tmp_path / "out")
    assert_user_error(proc, "source not found", "nope")
    assert not (tmp_path / "out").exists()


def test_hub_id_says_pass_a_local_folder():
    with pytest.raises(SourceError, match="hub id.*local folder"):
        load_source("HuggingFaceTB/SmolLM2-135M")


def test_unsupported_file_type(tmp_path):
    (tmp_path / "model.txt").write_text("hello")
    with pytest.raises(SourceError, match="unsupported source file type '.txt'"):
        load_source(str(tmp_path / "model.txt"))


@pytest.mark.parametrize("name,message", [("bad.gguf", "cannot read GGUF file"), ("bad.onnx", "cannot read ONNX file")])
def test_unreadable_files(tmp_path, name, message):
    (tmp_path / name).write_bytes(b"\x00garbage" * 100)
    with pytest.raises(SourceError, match=f"{message}.*{name}"):
        load_source(str(tmp_path / name))


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


def test_unimportable_module():
    with pytest.raises(SourceError, match="cannot import 'no_such_module_xyz'"):
        load_source("no_such_module_xyz:model")


def test_factory_tuple_form(tiny_cnn_py):
    loaded = load_source(f"{tiny_cnn_py}:as_tuple")
    assert list(loaded.example) == ["image"] and loaded.output_names == ["output"] and loaded.dims == {}


def test_export_failure_names_the_op(tiny_cnn_py, tmp_path):
    with pytest.raises(ExportError, match="operator aten.linalg_eig has no ONNX conversion.*Eig|Eig.*aten.linalg_eig"):
        build(f"{tiny_cnn_py}:unexportable", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_gpu_target_without_tensorrt(tiny_cnn_py, tmp_path):
    try:
        import tensorrt  # noqa: F401

        pytest.skip("TensorRT is installed here")
    except ImportError:
        pass
    with pytest.raises(BuildError, match=r"target sm_90 needs TensorRT 11, which is not installed.*ingot\[tensorrt\]"):
        build(f"{tiny_cnn_py}:model", tmp_path / "out", targets=["sm_90"])
    assert not (tmp_path / "out").exists()


def test_unknown_target(tiny_cnn_py, tmp_path):
    with pytest.raises(BuildError, match="unknown target 'tpu'"):
        build(f"{tiny_cnn_py}:model", tmp_path / "o", targets=["tpu"])


def test_bad_dim_override(tiny_cnn_py, tmp_path):
    with pytest.raises(BuildError, match="--dim sequence: no such dynamic dim.*batch"):
        build(f"{tiny_cnn_py}:model", tmp_path / "o", dims={"sequence": (1, 8)})
    assert ingot("build", f"{tiny_cnn_py}:model", "--dim", "batch", "-o", tmp_path / "o").returncode == 2  # usage


@pytest.mark.real
def test_a_gguf_is_parsed_once_while_it_loads(smollm2_gguf):
    """transformers makes a GGUFReader for the config, the tokenizer and the weights; within
    gguf_read_once they share one, and afterwards gguf is as it was."""
    import gguf

    from ingot.builder.hf import gguf_read_once

    original = gguf.GGUFReader
    with gguf_read_once():
        first = gguf.GGUFReader(smollm2_gguf)
        assert gguf.GGUFReader(str(smollm2_gguf)) is first and isinstance(first, original)
        assert len(first.tensors) == 272  # SmolLM2-135M: 30 layers x 9 tensors, the embedding, the final norm
    assert gguf.GGUFReader is original
