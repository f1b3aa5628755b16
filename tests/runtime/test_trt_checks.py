"""The checks before TensorRT sees a plan: synthetic bundles (real files, real checksums) and
synthetic machine facts (DeviceFacts is data), so every line is checked without a GPU or TensorRT.
The real process: `ingot run` of a bundle with only an sm_90 target on this GPU-less machine."""

import shutil
from pathlib import Path

import pytest

from ingot.plans import SCHEMA_VERSION, BundleWriter, ChecksumError, Host, Manifest, NoTargetError, open_bundle
from ingot.runtime import load
from ingot.runtime.errors import RunError
from ingot.runtime.trt.checks import check_plan
from ingot.runtime.trt.device import DeviceFacts, probe
from ingot.runtime.trt.errors import IncompatiblePlanError
from tests.conftest import assert_user_error, ingot

SHA = "0" * 64
VERSION = "11.4.0.106"
H100 = DeviceFacts("NVIDIA H100 80GB HBM3", (9, 0), VERSION, "580.65.06", "13.0", cuda_python=True)
A100 = DeviceFacts("NVIDIA A100-SXM4-80GB", (8, 0), VERSION, "580.65.06", "13.0", cuda_python=True)
A10 = DeviceFacts("NVIDIA A10", (8, 6), VERSION, cuda_python=True)
T4 = DeviceFacts("Tesla T4", (7, 5), VERSION, cuda_python=True)
NO_GPU = DeviceFacts(None, None, None)


def sm_bundle(root: Path, name: str = "sm_90", *, compat: str = "none", cc: str = "9.0", version: str = VERSION,
              quant: str | None = None, llm: bool = False, stripped: str | None = None, refit_file: bool = False):
    """A bundle whose only target is an sm plan: a small file and a manifest describing it (data,
    not a TensorRT plan; the checks must refuse or pass it before TensorRT would see it)."""
    rel = f"targets/{name}/model.plan"
    with BundleWriter(root) as w:
        w.path(rel).write_bytes(b"an sm plan: checked before TensorRT sees it")
        files = [w.entry(rel)]
        if refit_file:
            w.path(f"targets/{name}/model.onnx").write_bytes(b"weights")
            files.append(w.entry(f"targets/{name}/model.onnx"))
        trt = {"version": version, "compute_capability": cc, "hardware_compatibility": compat}
        if stripped is not None:
            trt |= {"weights_stripped": True, "refit_source": stripped or None}
        data = {
            "schema_version": SCHEMA_VERSION, "ingot_version": "0.1.0",
            "model": {"id": "m", "kind": "causal-lm" if llm else "generic",
                      "source": {"type": "hf-folder", "name": "tiny-llama", "sha256": SHA}},
            "inputs": [{"name": "input_ids", "dtype": "int64", "shape": [{"name": "tokens", "min": 1, "max": 64}]}],
            "outputs": [{"name": "logits", "dtype": "float32", "shape": [{"name": "rows", "min": 1, "max": 64}, 32]}],
            "targets": {name: {"name": name, "device": "cuda", "arch": name, "backend": "tensorrt",
                               "backend_version": version, "entrypoint": rel,
                               "files": [f.model_dump() for f in files], "tensorrt": trt}},
        }
        if quant:
            data["quantization"] = {"scheme": quant, "layers_quantized": 1}
        if llm:
            data["llm"] = {"num_layers": 1, "num_heads": 2, "num_kv_heads": 1, "head_dim": 8, "vocab_size": 32,
                           "kv_dtype": "float16", "kv_block_size": 16, "max_num_tokens": 64, "max_num_seqs": 4,
                           "max_model_len": 64}
        w.commit(Manifest.model_validate(data))
    return open_bundle(root, verify=False)


def check(bundle, facts):
    check_plan(bundle, next(iter(bundle.manifest.targets.values())), facts)


def refused(bundle, facts) -> str:
    with pytest.raises(IncompatiblePlanError) as e:
        check(bundle, facts)
    line = str(e.value)
    assert "\n" not in line
    return line


def test_a_plan_that_fits_passes(tmp_path):
    check(sm_bundle(tmp_path / "b"), H100)
    check(sm_bundle(tmp_path / "v", version=VERSION + "+cuda13"), H100)  # a local suffix is not part of the release


def test_another_arch(tmp_path):
    b = sm_bundle(tmp_path / "b")
    assert refused(b, A100) == (
        f"the sm_90 plan of {b.root} needs a GPU of compute capability 9.0; this machine's GPU is NVIDIA "
        f"A100-SXM4-80GB (compute capability 8.0): build a plan for it on this machine (ingot build tiny-llama "
        f"--target sm_80 --output {b.root}), or run the bundle on a GPU the plan fits")


def test_a_newer_gpu_is_another_arch_too(tmp_path):
    b = sm_bundle(tmp_path / "b", "sm_89", cc="8.9")
    assert ("needs a GPU of compute capability 8.9; this machine's GPU is NVIDIA H100 80GB HBM3 (compute capability "
            "9.0): build a plan for it on this machine (ingot build tiny-llama --target sm_90") in refused(b, H100)


def test_hardware_compatible_plan(tmp_path):
    b = sm_bundle(tmp_path / "b", "sm_86", cc="8.6", compat="ampere-plus")
    for facts in (A100, A10, H100):
        check(b, facts)
    assert refused(b, T4) == (
        f"the sm_86 plan of {b.root} needs a GPU of compute capability 8.0 or newer (a hardware-compatible plan); "
        f"this machine's GPU is Tesla T4 (compute capability 7.5): build a plan for it on this machine (ingot build "
        f"tiny-llama --target sm_75 --output {b.root}), or run the bundle on a GPU the plan fits")


def test_fp8_needs_ada_or_newer(tmp_path):
    b = sm_bundle(tmp_path / "b", compat="ampere-plus", quant="fp8")
    check(b, H100)
    assert f"the sm_90 plan of {b.root} needs a GPU of compute capability 8.9 or newer (FP8); this machine's GPU " \
           "is NVIDIA A10 (compute capability 8.6)" in refused(b, A10)


def test_no_gpu(tmp_path):
    b = sm_bundle(tmp_path / "b")
    assert refused(b, NO_GPU) == (
        f"the sm_90 plan of {b.root} needs an NVIDIA GPU of compute capability 9.0; this machine has no NVIDIA GPU "
        "visible to CUDA (check the driver, and CUDA_VISIBLE_DEVICES): run it on such a GPU, or run the CPU target "
        "with --target cpu if the bundle has one")


@pytest.mark.parametrize("have", ["11.4.0.107", "11.3.0.1", "10.14.1.48", "11.4.0"])
def test_another_tensorrt(tmp_path, have):
    b = sm_bundle(tmp_path / "b")
    assert refused(b, DeviceFacts("NVIDIA H100 80GB HBM3", (9, 0), have, cuda_python=True)) == (
        f"the sm_90 plan of {b.root} was built with TensorRT {VERSION} and loads only in that version; this machine "
        f"has TensorRT {have}: pip install 'tensorrt=={VERSION}', or rebuild the plan with this TensorRT (ingot build "
        f"tiny-llama --target sm_90 --output {b.root})")


def test_no_tensorrt(tmp_path):
    b = sm_bundle(tmp_path / "b")
    assert refused(b, DeviceFacts("NVIDIA H100 80GB HBM3", (9, 0), None, cuda_python=True)) == (
        f"the sm_90 plan of {b.root} needs TensorRT {VERSION}, which is not installed: pip install 'ingot[tensorrt]' "
        f"'tensorrt=={VERSION}'")


def test_no_cuda_python(tmp_path):
    b = sm_bundle(tmp_path / "b")
    assert refused(b, DeviceFacts("NVIDIA H100 80GB HBM3", (9, 0), VERSION)) == (
        f"the sm_90 plan of {b.root} needs cuda-python for device memory and streams, which is not installed: "
        "pip install 'ingot[tensorrt]'")


def test_weight_stripped_plan_must_name_its_refit_source(tmp_path):
    check(sm_bundle(tmp_path / "ok", stripped="targets/sm_90/model.onnx", refit_file=True), H100)
    b = sm_bundle(tmp_path / "none", stripped="")
    assert refused(b, H100) == (
        f"the sm_90 plan of {b.root} holds no weights and its manifest names none to refit them from: rebuild it "
        f"(ingot build tiny-llama --target sm_90 --output {b.root})")
    b = sm_bundle(tmp_path / "gone", stripped="targets/sm_90/model.onnx")
    assert "names targets/sm_90/model.onnx, which is not among its files" in refused(b, H100)


def corrupt(bundle) -> None:
    plan = bundle.root / "targets/sm_90/model.plan"
    plan.write_bytes(plan.read_bytes()[:-1] + b"?")


def test_order_checksums_then_gpu_then_tensorrt_then_cuda_python(tmp_path):
    b = sm_bundle(tmp_path / "b")
    nothing_fits = DeviceFacts("Tesla T4", (7, 5), "10.0.0.6")  # wrong arch, wrong TensorRT, no cuda-python
    assert "compute capability 9.0" in refused(b, nothing_fits)
    assert "was built with TensorRT" in refused(b, DeviceFacts("NVIDIA H100 80GB HBM3", (9, 0), "10.0.0.6"))
    corrupt(b)
    with pytest.raises(ChecksumError, match="checksum mismatch: targets/sm_90/model.plan"):
        check(b, nothing_fits)


def test_facts_describe_the_gpu():
    assert H100.describe() == "NVIDIA H100 80GB HBM3 (compute capability 9.0)"
    assert NO_GPU.describe() == "no NVIDIA GPU visible to CUDA"


def gpu_less() -> bool:
    return shutil.which("nvidia-smi") is None and probe().compute_capability is None


def test_probe_on_this_machine():
    facts = probe()
    if not gpu_less():
        pytest.skip("this machine has a GPU")
    assert (facts.gpu_name, facts.compute_capability) == (None, None)


def test_load_checks_the_plan_against_this_machine(tmp_path):
    """ingot.runtime.load with an sm_90 host (a Host value) on this machine: selection picks the
    plan, then the checks refuse it (this machine's probe finds no GPU); a corrupt plan is refused
    for its checksum first."""
    if not gpu_less():
        pytest.skip("this machine has a GPU")
    b = sm_bundle(tmp_path / "b")
    with pytest.raises(IncompatiblePlanError, match="needs an NVIDIA GPU of compute capability 9.0; this machine has "
                                                    "no NVIDIA GPU visible to CUDA"):
        load(b.root, host=Host("cpu-x86_64", ("sm_90",)))
    corrupt(b)
    with pytest.raises(ChecksumError):
        load(b.root, host=Host("cpu-x86_64", ("sm_90",)))


def test_load_on_a_cpu_only_host(tmp_path):
    b = sm_bundle(tmp_path / "b")
    with pytest.raises(NoTargetError, match=r"no target for this machine \(a x86_64 CPU and no GPU\); bundle targets: "
                                            "sm_90; build it with: ingot build tiny-llama --target cpu-x86_64"):
        load(b.root, host=Host("cpu-x86_64"))
    assert isinstance(IncompatiblePlanError("x"), RunError)  # the CLI prints it as one line


@pytest.mark.parametrize("args,fragments", [
    (["--text", "hello"], ["no target for this machine", "bundle targets: sm_90", "--target cpu-x86_64"]),
    (["--target", "sm_90", "--text", "hello"], ["target sm_90 cannot run on this machine (it can run: cpu-x86_64)"]),
])
def test_ingot_run_of_an_sm_only_bundle(tmp_path, args, fragments):
    if not gpu_less():
        pytest.skip("this machine has a GPU")
    b = sm_bundle(tmp_path / "b")
    assert_user_error(ingot("run", b.root, *args, timeout=120), *fragments)


def test_ingot_run_prompt_of_an_sm_only_llm_bundle(tmp_path):
    if not gpu_less():
        pytest.skip("this machine has a GPU")
    b = sm_bundle(tmp_path / "b", llm=True)
    assert_user_error(ingot("run", b.root, "--prompt", "hello", timeout=120),
                      "no target for this machine (a x86_64 CPU and no GPU)", "bundle targets: sm_90")


def test_importing_the_runtime_imports_no_gpu_package():
    """`import ingot`, the CPU runtime and the TensorRT runtime's pure modules import neither
    tensorrt nor cuda-python (nor triton, nor torch)."""
    import subprocess
    import sys

    code = ("import sys, ingot, ingot.runtime, ingot.runtime.llm, ingot.runtime.trt.backend, ingot.runtime.trt.graphs, "
            "ingot.runtime.trt.bindings, ingot.runtime.trt.pool; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorrt', 'cuda', 'triton', 'torch')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_inspect_says_what_an_sm_plan_needs(tmp_path):
    b = sm_bundle(tmp_path / "b", "sm_86", compat="ampere-plus", cc="8.6", stripped="targets/sm_86/model.onnx",
                  refit_file=True)
    proc = ingot("inspect", b.root, "--check")
    assert proc.returncode == 0, proc.stderr
    line = next(line for line in proc.stdout.splitlines() if line.startswith("sm_86: TensorRT"))
    assert line == ("sm_86: TensorRT 11.4.0.106, built on compute 8.6 (loads on sm_80 and newer); optimization level 3; "
                    "weights stripped (refit from targets/sm_86/model.onnx)")
