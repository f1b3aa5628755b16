import json

import pytest

from ingot.plans import (
    SCHEMA_VERSION, DynamicDim, FileEntry, Host, Manifest, ManifestError, NoTargetError, TargetName,
    read_manifest, select_target,
)

SHA = "0" * 64


def manifest(*targets: str) -> Manifest:
    def target(name):
        t = TargetName.parse(name)
        entry = f"targets/{name}/model.onnx"
        return {
            "name": name, "device": t.device, "arch": t.arch,
            "backend": "onnxruntime" if t.device == "cpu" else "tensorrt", "backend_version": "1",
            "entrypoint": entry, "files": [{"path": entry, "sha256": SHA, "size": 1}],
        }

    return Manifest.model_validate({
        "schema_version": SCHEMA_VERSION, "ingot_version": "0.1.0",
        "model": {"id": "m", "kind": "generic", "source": {"type": "onnx", "name": "m.onnx", "sha256": SHA}},
        "inputs": [{"name": "x", "dtype": "float32", "shape": [{"name": "batch", "min": 1, "max": 8}, 4]}],
        "outputs": [{"name": "y", "dtype": "float32", "shape": [{"name": "batch", "min": 1, "max": 8}, 2]}],
        "targets": {n: target(n) for n in targets},
    })


def test_round_trip_is_lossless():
    m = manifest("cpu-x86_64", "sm_90")
    again = Manifest.model_validate_json(m.model_dump_json())
    assert again == m
    assert again.inputs[0].shape == [DynamicDim(name="batch", min=1, max=8), 4]
    assert again.inputs[0].describe() == "x: float32[batch(1..8), 4]"


@pytest.mark.parametrize("path", ["/etc/passwd", "../outside", "a/../../b", ""])
def test_file_paths_stay_inside_the_bundle(path):
    with pytest.raises(ValueError):
        FileEntry(path=path, sha256=SHA, size=1)


def test_entrypoint_must_be_listed():
    data = manifest("cpu-x86_64").model_dump()
    data["targets"]["cpu-x86_64"]["entrypoint"] = "targets/cpu-x86_64/other.onnx"
    with pytest.raises(ValueError, match="entrypoint"):
        Manifest.model_validate(data)


def test_newer_schema_says_upgrade(tmp_path):
    data = json.loads(manifest("cpu-x86_64").model_dump_json())
    data["schema_version"] = SCHEMA_VERSION + 1
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="upgrade ingot"):
        read_manifest(tmp_path)


@pytest.mark.parametrize("text,name", [("cpu", "cpu-x86_64"), ("CPU-AMD64", "cpu-x86_64"), ("sm_90", "sm_90"),
                                       ("8.9", "sm_89"), ("sm_120", "sm_120"), ("cpu-arm64", "cpu-aarch64")])
def test_target_names(text, name):
    assert TargetName.parse(text).name == name


@pytest.mark.parametrize("text", ["gpu", "sm90", "cpu-mips", "sm_"])
def test_bad_target_names(text):
    with pytest.raises(ValueError, match="unknown target"):
        TargetName.parse(text)


def test_cpu_machine_selects_cpu_target():
    assert select_target(manifest("sm_90", "cpu-x86_64"), Host("cpu-x86_64")).name == "cpu-x86_64"


def test_gpu_machine_selects_its_exact_arch():
    m = manifest("sm_80", "sm_90", "cpu-x86_64")
    assert select_target(m, Host("cpu-x86_64", ("sm_90",))).name == "sm_90"
    assert select_target(m, Host("cpu-x86_64", ("sm_80",))).name == "sm_80"


def test_gpu_without_its_arch_lists_targets_and_the_build_command():
    with pytest.raises(NoTargetError) as e:
        select_target(manifest("sm_80", "cpu-x86_64"), Host("cpu-x86_64", ("sm_90",)))
    msg = str(e.value)
    assert "sm_90" in msg and "bundle targets: cpu-x86_64, sm_80" in msg
    assert "ingot build m.onnx --target sm_90" in msg and "--target cpu-x86_64" in msg


def test_cpu_machine_without_cpu_target():
    with pytest.raises(NoTargetError, match="bundle targets: sm_90.*--target cpu-x86_64"):
        select_target(manifest("sm_90"), Host("cpu-x86_64"))


def test_requested_target_must_exist_and_be_runnable():
    m = manifest("sm_90", "cpu-x86_64")
    assert select_target(m, Host("cpu-x86_64", ("sm_90",)), "cpu").name == "cpu-x86_64"
    with pytest.raises(NoTargetError, match="cannot run on this machine"):
        select_target(m, Host("cpu-x86_64"), "sm_90")
    with pytest.raises(NoTargetError, match="no target sm_80"):
        select_target(m, Host("cpu-x86_64", ("sm_80",)), "sm_80")
