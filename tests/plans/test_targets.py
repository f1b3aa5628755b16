"""Target selection over synthetic manifests: exact sm target first, then a hardware-compatible
plan the GPU loads, the CPU target only when asked (no GPU, no TensorRT needed)."""

import pytest

from ingot.plans import SCHEMA_VERSION, Host, Manifest, NoTargetError, TargetName, select_target
from ingot.plans.targets import GpuNeeds, compute_capability, gpu_needs

SHA = "0" * 64


def target(name: str, compat: str | None = None, built_on: str | None = None) -> dict:
    """A target entry; `compat` ("none" | "ampere-plus") adds a tensorrt record."""
    t = TargetName.parse(name)
    entry = f"targets/{name}/model.{'onnx' if t.device == 'cpu' else 'plan'}"
    data = {
        "name": name, "device": t.device, "arch": t.arch,
        "backend": "onnxruntime" if t.device == "cpu" else "tensorrt", "backend_version": "1",
        "entrypoint": entry, "files": [{"path": entry, "sha256": SHA, "size": 1}],
    }
    if compat is not None:
        cc = built_on or "{}.{}".format(*compute_capability(name))
        data["tensorrt"] = {"version": "11.4.0.106", "compute_capability": cc, "hardware_compatibility": compat}
    return data


def manifest(*targets: dict, quant: str | None = None) -> Manifest:
    data = {
        "schema_version": SCHEMA_VERSION, "ingot_version": "0.1.0",
        "model": {"id": "m", "kind": "generic", "source": {"type": "onnx", "name": "m.onnx", "sha256": SHA}},
        "inputs": [{"name": "x", "dtype": "float32", "shape": [4]}],
        "outputs": [{"name": "y", "dtype": "float32", "shape": [2]}],
        "targets": {t["name"]: t for t in targets},
    }
    if quant:
        data["quantization"] = {"scheme": quant, "layers_quantized": 1}
    return Manifest.model_validate(data)


@pytest.mark.parametrize("name,cc", [("sm_80", (8, 0)), ("sm_89", (8, 9)), ("sm_90", (9, 0)), ("sm_100", (10, 0)),
                                     ("sm_120", (12, 0)), ("sm_121", (12, 1))])
def test_compute_capability_of_a_target_name(name, cc):
    assert compute_capability(name) == cc
    assert TargetName.gpu("{}.{}".format(*cc)) == name  # and back


def test_needs_of_a_plan():
    m = manifest(target("sm_90"), target("sm_86", "ampere-plus"), target("sm_89", "none"))
    assert gpu_needs(m, m.targets["sm_90"]) == GpuNeeds((9, 0))  # no tensorrt record: its name
    assert gpu_needs(m, m.targets["sm_86"]) == GpuNeeds((8, 6), ampere_plus=True)
    assert gpu_needs(m, m.targets["sm_89"]).describe() == "compute capability 8.9"
    assert gpu_needs(m, m.targets["sm_86"]).describe() == "compute capability 8.0 or newer"
    fp8 = manifest(target("sm_90", "ampere-plus"), quant="fp8")
    assert gpu_needs(fp8, fp8.targets["sm_90"]).describe() == "compute capability 8.9 or newer (FP8)"


@pytest.mark.parametrize("needs,cc,ok", [
    (GpuNeeds((9, 0)), (9, 0), True), (GpuNeeds((9, 0)), (8, 9), False), (GpuNeeds((9, 0)), (10, 0), False),
    (GpuNeeds((8, 6), True), (8, 0), True), (GpuNeeds((8, 6), True), (12, 0), True),
    (GpuNeeds((8, 6), True), (7, 5), False),
    (GpuNeeds((9, 0), True, fp8=True), (8, 6), False), (GpuNeeds((9, 0), True, fp8=True), (8, 9), True),
])
def test_which_gpus_a_plan_loads_on(needs, cc, ok):
    assert needs.accepts(cc) is ok


def test_exact_target_comes_before_a_hardware_compatible_one():
    m = manifest(target("sm_86", "ampere-plus"), target("sm_90", "none"), target("cpu-x86_64"))
    assert select_target(m, Host("cpu-x86_64", ("sm_90",))).name == "sm_90"


def test_gpu_without_its_target_takes_a_hardware_compatible_plan():
    m = manifest(target("sm_86", "ampere-plus"), target("sm_90", "none"), target("cpu-x86_64"))
    assert select_target(m, Host("cpu-x86_64", ("sm_89",))).name == "sm_86"
    assert select_target(m, Host("cpu-x86_64", ("sm_80",))).name == "sm_86"  # built on a newer GPU: still loads
    assert select_target(m, Host("cpu-x86_64", ("sm_120",))).name == "sm_86"


def test_among_hardware_compatible_plans_the_newest_not_newer_than_the_gpu():
    m = manifest(target("sm_80", "ampere-plus"), target("sm_86", "ampere-plus"), target("sm_100", "ampere-plus"))
    assert select_target(m, Host("cpu-x86_64", ("sm_89",))).name == "sm_86"
    assert select_target(m, Host("cpu-x86_64", ("sm_120",))).name == "sm_100"
    assert select_target(m, Host("cpu-x86_64", ("sm_80",))).name == "sm_80"
    newer_only = manifest(target("sm_90", "ampere-plus"), target("sm_100", "ampere-plus"))
    assert select_target(newer_only, Host("cpu-x86_64", ("sm_86",))).name == "sm_90"  # then the oldest newer


def test_a_gpu_older_than_ampere_loads_no_hardware_compatible_plan():
    m = manifest(target("sm_86", "ampere-plus"), target("cpu-x86_64"))
    with pytest.raises(NoTargetError) as e:
        select_target(m, Host("cpu-x86_64", ("sm_75",)))
    assert str(e.value) == (
        "no target for this machine (a sm_75 GPU); bundle targets: cpu-x86_64, sm_86; build it with: ingot build "
        "m.onnx --target sm_75 --output <bundle>; sm_86 is hardware-compatible: it needs compute capability 8.0 or "
        "newer; or run on the CPU with --target cpu-x86_64")


def test_fp8_hardware_compatible_plan_needs_ada_or_newer():
    m = manifest(target("sm_90", "ampere-plus"), quant="fp8")
    assert select_target(m, Host("cpu-x86_64", ("sm_89",))).name == "sm_90"
    with pytest.raises(NoTargetError, match="sm_90 is hardware-compatible: it needs compute capability 8.9 or newer"):
        select_target(m, Host("cpu-x86_64", ("sm_80",)))


def test_a_gpu_machine_runs_the_cpu_target_only_when_asked():
    m = manifest(target("sm_90"), target("cpu-x86_64"))
    with pytest.raises(NoTargetError, match="or run on the CPU with --target cpu-x86_64$"):
        select_target(m, Host("cpu-x86_64", ("sm_80",)))
    assert select_target(m, Host("cpu-x86_64", ("sm_80",)), "cpu-x86_64").name == "cpu-x86_64"


def test_requested_hardware_compatible_target():
    m = manifest(target("sm_86", "ampere-plus"), target("sm_90"), target("cpu-x86_64"))
    assert select_target(m, Host("cpu-x86_64", ("sm_90",)), "sm_86").name == "sm_86"
    assert select_target(m, Host("cpu-x86_64", ("sm_90",)), "9.0").name == "sm_90"
    with pytest.raises(NoTargetError) as e:
        select_target(m, Host("cpu-x86_64", ("sm_75",)), "sm_86")
    assert str(e.value) == ("target sm_86 cannot run on this machine (it can run: cpu-x86_64, sm_75; sm_86 is "
                            "hardware-compatible: it needs compute capability 8.0 or newer)")
    with pytest.raises(NoTargetError, match=r"^target sm_90 cannot run on this machine \(it can run: cpu-x86_64\)$"):
        select_target(m, Host("cpu-x86_64"), "sm_90")


def test_no_gpu_never_selects_an_sm_target():
    m = manifest(target("sm_86", "ampere-plus"), target("cpu-x86_64"))
    assert select_target(m, Host("cpu-x86_64")).name == "cpu-x86_64"
    with pytest.raises(NoTargetError, match=r"\(a x86_64 CPU and no GPU\); bundle targets: sm_86;"):
        select_target(manifest(target("sm_86", "ampere-plus")), Host("cpu-x86_64"))
