"""sm targets (ingot.builder.trt): everything decided before TensorRT runs, checked on the CPU for
real (options, profiles, timing-cache files, the ONNX graph TensorRT parses, the manifest record);
the builds themselves carry the gpu marker and skip without TensorRT and a GPU."""

from __future__ import annotations

import hashlib
import shutil

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun

from ingot.builder.errors import BuildError
from ingot.builder.trt import TensorRTOptions, check_options, resolve_auto, sm_graph
from ingot.builder.trt.compile import build_options, save_onnx, tensorrt_info
from ingot.builder.trt.options import compute_capability
from ingot.builder.trt.paged_graph import attention_nodes, unlowered
from ingot.builder.trt.plugin import plugin_variants
from ingot.builder.trt.plugin_nodes import PLUGIN_DOMAIN, plugin_graph, updated
from ingot.builder.trt.profiles import ProfileShape, dense_profiles, max_num_blocks, paged_profiles
from ingot.builder.trt.timing_cache import cache_path, load_cache, save_cache
from ingot.plans import DynamicDim, Host, PluginKernel, TargetName, TensorSpec
from ingot.plans import llm as names
from ingot.plans.llm import LLMInfo
from tests.conftest import assert_user_error, ingot

BLOCK = 4  # the tiny plans' KV block size
SM90 = TargetName.parse("sm_90")


def _has_tensorrt() -> bool:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False
    return True


# ---- the CLI, as a user runs it on a machine without TensorRT or a GPU

@pytest.mark.skipif(_has_tensorrt(), reason="checks the line a machine without TensorRT prints")
def test_sm_target_without_tensorrt_is_one_line(tiny_llama_dir, tmp_path):
    proc = ingot("build", tiny_llama_dir, "--output", tmp_path / "b", "--target", "sm_90")
    assert_user_error(proc, "target sm_90 needs TensorRT 11, which is not installed", "pip install 'ingot[tensorrt]'")
    assert not (tmp_path / "b").exists()


def _has_gpu() -> bool:
    from ingot.plans import detect_host

    return bool(detect_host().gpus)


@pytest.mark.skipif(_has_gpu(), reason="checks the line a machine without a GPU prints")
def test_target_auto_without_a_gpu_is_one_line(tiny_llama_dir, tmp_path):
    proc = ingot("build", tiny_llama_dir, "--output", tmp_path / "b", "--target", "auto")
    assert_user_error(proc, "--target auto: this machine has no NVIDIA GPU")


def test_tensorrt_options_on_a_cpu_build_are_one_line(tiny_llama_dir, tmp_path):
    proc = ingot("build", tiny_llama_dir, "--output", tmp_path / "b", "--strip-weights", "--timing-cache", tmp_path)
    assert_user_error(proc, "--strip-weights, --timing-cache: TensorRT options, for sm_XY targets only",
                      "(this build has cpu-")


# ---- options

@pytest.mark.parametrize("targets,options,quant,message", [
    (["cpu"], TensorRTOptions(hardware_compatibility="ampere-plus"), "none",
     "--hardware-compatibility-level: TensorRT options, for sm_XY targets only"),
    (["cpu"], TensorRTOptions(builder_optimization_level=0), "none", "--builder-optimization-level: TensorRT options"),
    (["sm_86"], TensorRTOptions(), "fp8", "--quant fp8 needs an sm_89 or newer target (FP8 GEMMs); sm_86 has none"),
    (["sm_75"], TensorRTOptions(hardware_compatibility="ampere-plus"), "none",
     "plans that load on sm_80 and newer are built on an sm_80 or newer GPU; sm_75 is older"),
    (["sm_90"], TensorRTOptions(hardware_compatibility="ampere-plus"), "fp8",
     "ampere-plus with --quant fp8: the plan must load on sm_80, which has no FP8"),
    (["sm_90"], TensorRTOptions(builder_optimization_level=6), "none", "TensorRT takes 0 (fastest build) to 5"),
])
def test_combinations_that_cannot_work_are_refused(targets, options, quant, message):
    with pytest.raises(BuildError) as e:
        check_options([TargetName.parse(t) for t in targets], options, quant)
    assert message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("targets,options,quant", [
    (["cpu"], TensorRTOptions(), "fp8"),
    (["sm_89", "cpu"], TensorRTOptions(), "fp8"),
    (["sm_80"], TensorRTOptions(hardware_compatibility="ampere-plus", strip_weights=True), "int4"),
    (["sm_90"], TensorRTOptions(builder_optimization_level=0), "none"),
])
def test_combinations_that_work_pass(targets, options, quant):
    check_options([TargetName.parse(t) for t in targets], options, quant)


def test_paged_plans_are_not_hardware_compatible():
    from ingot.builder.trt import check_paged_options

    with pytest.raises(BuildError, match="ampere-plus: a paged LLM plan embeds its attention kernels compiled for"):
        check_paged_options([TargetName.parse("sm_90")], TensorRTOptions(hardware_compatibility="ampere-plus"))
    check_paged_options([TargetName.parse("sm_90")], TensorRTOptions(strip_weights=True))
    check_paged_options([TargetName.parse("cpu-x86_64")], TensorRTOptions())


def test_target_auto_is_the_first_gpu():
    assert resolve_auto("auto", Host("cpu-x86_64", ("sm_90", "sm_80"))) == "sm_90"
    assert resolve_auto(" AUTO ", Host("cpu-x86_64", ("sm_89",))) == "sm_89"
    assert resolve_auto("sm_80", Host("cpu-x86_64")) == "sm_80"
    with pytest.raises(BuildError, match="--target auto: this machine has no NVIDIA GPU"):
        resolve_auto("auto", Host("cpu-x86_64"))


@pytest.mark.parametrize("arch,cc", [("sm_80", "8.0"), ("sm_86", "8.6"), ("sm_89", "8.9"), ("sm_90", "9.0"),
                                     ("sm_100", "10.0"), ("sm_120", "12.0"), ("sm_121", "12.1")])
def test_compute_capability_of_a_target(arch, cc):
    assert compute_capability(TargetName.parse(arch)) == cc
    assert TargetName.gpu(cc) == arch


def test_build_config_carries_the_options(tmp_path):
    from ingot.builder.config import build_config

    cfg = build_config(source="x", output=tmp_path, targets=["sm_90"], builder_optimization_level=5,
                       hardware_compatibility_level="ampere-plus", strip_weights=True, timing_cache=tmp_path)
    assert cfg.tensorrt_options() == TensorRTOptions(5, "ampere-plus", True, tmp_path)
    with pytest.raises(BuildError, match="--builder-optimization-level"):
        build_config(source="x", output=tmp_path, builder_optimization_level=6)
    with pytest.raises(BuildError, match="--hardware-compatibility-level"):
        build_config(source="x", output=tmp_path, hardware_compatibility_level="same-compute-capability")


# ---- optimization profiles

def test_dense_profile_spans_each_dim_opt_mid_range():
    batch, seq = DynamicDim(name="batch", min=1, max=8), DynamicDim(name="sequence", min=1, max=128)
    inputs = [TensorSpec(name="input_ids", dtype="int64", shape=[batch, seq]),
              TensorSpec(name="image", dtype="float32", shape=[batch, 3, 224, 224])]
    assert dense_profiles(inputs) == [ProfileShape("input_ids", (1, 1), (4, 64), (8, 128)),
                                      ProfileShape("image", (1, 3, 224, 224), (4, 3, 224, 224), (8, 3, 224, 224))]


def test_dense_profile_refuses_an_unbounded_dim():
    spec = TensorSpec(name="x", dtype="float32", shape=[DynamicDim(name="n", min=0, max=(1 << 31) - 1)])
    with pytest.raises(BuildError, match="input x: dim n has no upper bound.*pass --dim n=MIN:MAX"):
        dense_profiles([spec])


def _llm(**kw) -> LLMInfo:
    base = dict(num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16, vocab_size=320, kv_block_size=BLOCK,
                max_num_tokens=64, max_num_seqs=8, max_model_len=256)
    return LLMInfo(**{**base, **kw})


def test_paged_profile_from_the_llm_limits():
    llm = _llm()
    top = max_num_blocks(llm)
    assert top == ((1 << 31) - 1) // (2 * BLOCK * 16) == (1 << 24) - 1  # 128 elements a block: just under the export's
    profiles = {p.name: p for p in paged_profiles(llm)}
    tokens = ((1,), (8,), (64,))  # decode of max_num_seqs is the opt
    for name in (names.INPUT_IDS, names.POSITIONS, names.LOGITS_INDICES, names.SLOT_MAPPING):
        assert (profiles[name].min, profiles[name].opt, profiles[name].max) == tokens
    assert profiles[names.BLOCK_TABLES] == ProfileShape(names.BLOCK_TABLES, (1, 1), (8, 32), (8, 64))
    assert profiles[names.CONTEXT_LENS] == ProfileShape(names.CONTEXT_LENS, (1,), (8,), (8,))
    assert profiles[names.QUERY_START_LOC] == ProfileShape(names.QUERY_START_LOC, (2,), (9,), (9,))
    assert profiles["value_cache.1"] == ProfileShape("value_cache.1", (2, 1, BLOCK, 16), (2, 256, BLOCK, 16),
                                                     (2, top, BLOCK, 16))


def test_kv_pool_bound_keeps_a_layer_under_2_to_the_31_elements():
    llama8b = _llm(num_layers=32, num_heads=32, num_kv_heads=8, head_dim=128, kv_block_size=16)
    top = max_num_blocks(llama8b)
    assert top == 131071 and top * 8 * 16 * 128 < 1 << 31 <= (top + 1) * 8 * 16 * 128


def test_paged_profile_names_the_contract_inputs(contract):
    llm = _llm()
    assert [p.name for p in paged_profiles(llm)] == [v.name for v in contract.graph.input]
    for p, v in zip(paged_profiles(llm), contract.graph.input):
        static = [d.dim_value for d in v.type.tensor_type.shape.dim]
        assert len(p.min) == len(static)
        assert all(s in (0, lo) and lo == hi for s, lo, hi in zip(static, p.min, p.max) if s), (p, static)


# ---- timing cache files

def test_timing_cache_is_one_file_per_arch_and_version(tmp_path):
    folder = tmp_path / "caches"
    first = load_cache(folder, "sm_90", "11.4.0.106")
    assert first.path == folder / "sm_90-trt11.4.0.106.timing-cache" == cache_path(folder, "sm_90", "11.4.0.106")
    assert first.data == b"" and first.sha256 is None and not folder.exists()
    save_cache(first.path, b"timings of sm_90")
    save_cache(cache_path(folder, "sm_80", "11.4.0.106"), b"timings of sm_80")
    again = load_cache(folder, "sm_90", "11.4.0.106")
    assert again.data == b"timings of sm_90" and again.sha256 == hashlib.sha256(b"timings of sm_90").hexdigest()
    assert load_cache(folder, "sm_90", "11.5.0.1").data == b""  # another TensorRT starts afresh
    save_cache(first.path, b"more timings")
    assert load_cache(folder, "sm_90", "11.4.0.106").data == b"more timings"
    assert sorted(p.name for p in folder.iterdir()) == ["sm_80-trt11.4.0.106.timing-cache",
                                                        "sm_90-trt11.4.0.106.timing-cache"]  # no temporary left


def test_timing_cache_path_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "cache").write_bytes(b"x")
    with pytest.raises(BuildError, match="--timing-cache .*cache: a folder is expected"):
        load_cache(tmp_path / "cache", "sm_90", "11.4.0.106")


def test_failed_save_keeps_the_old_cache(tmp_path):
    path = cache_path(tmp_path, "sm_90", "11")
    save_cache(path, b"old")

    with pytest.raises(TypeError):  # the write fails halfway: str is not bytes
        save_cache(path, "new")
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == [path.name]


# ---- the manifest record

def test_tensorrt_record_of_a_target(tmp_path):
    path = cache_path(tmp_path, "sm_90", "11.4.0.106")
    save_cache(path, b"cache")
    cache = load_cache(tmp_path, "sm_90", "11.4.0.106")
    kernel = PluginKernel(plugin="ingot::PagedAttention", kernel="fused_kernel", variant="heads=4/2",
                          compute_capability="9.0", format="cubin", sha256="0" * 64)
    options = TensorRTOptions(builder_optimization_level=4, hardware_compatibility="ampere-plus", strip_weights=True)
    info = tensorrt_info("11.4.0.106", SM90, options, cache, ["targets/sm_90/refit.onnx"], [kernel])
    assert info.model_dump() == {
        "version": "11.4.0.106", "compute_capability": "9.0", "hardware_compatibility": "ampere-plus",
        "builder_optimization_level": 4, "timing_cache_sha256": hashlib.sha256(b"cache").hexdigest(),
        "weights_stripped": True, "refit_source": "targets/sm_90/refit.onnx", "plugins": [kernel.model_dump()]}
    plain = tensorrt_info("11.4.0.106", TargetName.parse("sm_89"), TensorRTOptions(), None, [], [])
    assert (plain.compute_capability, plain.hardware_compatibility) == ("8.9", "none")
    assert plain.builder_optimization_level == 3
    assert plain.timing_cache_sha256 is None and not plain.weights_stripped and plain.refit_source is None


# ---- the ONNX graph TensorRT parses for a paged LLM (the real tiny export)

@pytest.fixture(scope="module")
def hf(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype="float32").eval()


@pytest.fixture(scope="module")
def contract(hf) -> onnx.ModelProto:
    from ingot.builder.paged import export_paged

    return export_paged(hf, opset=21, block_size=BLOCK)


@pytest.fixture(scope="module")
def lowered(contract) -> onnx.ModelProto:
    """The plan graph as the build has it: lowered for the cpu targets, then cleaned."""
    from ingot.builder.graph import cleanup
    from ingot.builder.lower_cpu import lower_paged_attention

    return cleanup(lower_paged_attention(contract))


@pytest.fixture(scope="module")
def plugin(lowered, contract) -> onnx.ModelProto:
    return sm_graph(lowered, [], contract, _llm()).model


def test_unlowering_restores_the_contract(lowered, contract):
    before = lowered.SerializeToString()
    graph = unlowered(lowered, contract)
    assert lowered.SerializeToString() == before, "the plan graph is left as it was"
    assert [v.name for v in graph.graph.input] == [v.name for v in contract.graph.input]
    assert [v.name for v in graph.graph.output] == [names.LOGITS]
    assert [n.SerializeToString() for n in attention_nodes(graph)] == \
        [n.SerializeToString() for n in attention_nodes(contract)]
    assert not [n for n in graph.graph.node if n.domain == "com.microsoft" or n.name.startswith("PagedAttention/")]
    assert not [t for t in graph.graph.initializer if t.name.endswith("/rows_shape")]
    assert {(o.domain, o.version) for o in graph.opset_import} == {("", 21), ("ingot", 1)}


def test_plugin_nodes_are_what_the_onnx_parser_maps_to_the_qdp(plugin, contract):
    onnx.checker.check_model(plugin)
    nodes = [n for n in plugin.graph.node if n.op_type == "PagedAttention"]
    assert len(nodes) == 2 and all(n.domain == PLUGIN_DOMAIN for n in nodes)
    attrs = {a.name: helper.get_attribute_value(a) for a in nodes[0].attribute}
    source = {a.name: helper.get_attribute_value(a) for a in attention_nodes(contract)[0].attribute}
    assert attrs == {**source, "plugin_namespace": b"ingot", "plugin_version": b"1", "aot": 1}
    assert attrs["num_heads"] == 4 and attrs["num_kv_heads"] == 2 and attrs["scale"] == pytest.approx(0.25)
    cast = {n.output[0]: n for n in plugin.graph.node if n.op_type == "Cast"}
    for x in nodes[0].input[:3]:  # query, key, value in fp16
        assert helper.get_attribute_value(cast[x].attribute[0]) == TensorProto.FLOAT16
    assert list(nodes[0].input[3:]) == ["key_cache.0", "value_cache.0", *names_metadata()]
    assert list(nodes[0].output[1:]) == ["key_cache.0.updated", "value_cache.0.updated"]
    back = next(n for n in plugin.graph.node if n.input and n.input[0] == nodes[0].output[0])
    assert back.op_type == "Cast" and back.output[0] == attention_nodes(contract)[0].output[0]
    types = {v.name: v.type.tensor_type.elem_type for v in [*plugin.graph.input, *plugin.graph.output]}
    assert types["key_cache.1"] == types[updated("value_cache.0")] == TensorProto.FLOAT16
    assert types[names.LOGITS] == TensorProto.FLOAT and types[names.SLOT_MAPPING] == TensorProto.INT64
    assert [v.name for v in plugin.graph.output] == [names.LOGITS, *(updated(c) for c in (
        "key_cache.0", "key_cache.1", "value_cache.0", "value_cache.1"))]
    assert {(o.domain, o.version) for o in plugin.opset_import} == {("", 21), (PLUGIN_DOMAIN, 1)}


def names_metadata() -> list[str]:
    return [names.SLOT_MAPPING, names.BLOCK_TABLES, names.CONTEXT_LENS, names.QUERY_START_LOC]


def test_plugin_variants_are_the_kernels_specializations(plugin):
    assert plugin_variants(plugin) == [{
        "num_heads": 4, "num_kv_heads": 2, "head_dim": 16, "block_size": BLOCK, "scale": 0.25, "dtype": "float16",
        "kv_dtype": "float16", "index_dtype": "int64", "sliding_window": 0, "softcap": 0.0}]


def test_sm_graph_build_options(plugin, lowered, contract):
    graph = sm_graph(lowered, [], contract, _llm())
    assert build_options(graph, TensorRTOptions()) == {
        "strongly_typed": True, "builder_optimization_level": 3, "hardware_compatibility": "none",
        "strip_weights": False, "attention": "trt-plugin:ingot::PagedAttention", "kv_dtype": "float16",
        "max_num_blocks": (1 << 24) - 1}
    dense = sm_graph(lowered, [TensorSpec(name="x", dtype="float32", shape=[3])])
    assert dense.model is lowered and dense.profiles == [ProfileShape("x", (3,), (3,), (3,))] and not dense.plugins


class PagedAttention(OpRun):
    """The plugin's contract for ONNX's reference evaluator: the reference attention of
    ingot.builder.paged (fp32 over fp16 inputs) and the pools with the new rows written."""

    op_domain = PLUGIN_DOMAIN

    def _run(self, q, k, v, key_cache, value_cache, slot_mapping, block_tables, context_lens, query_start_loc,
             num_heads=None, num_kv_heads=None, scale=None, sliding_window=0, softcap=0.0, plugin_namespace=None,
             plugin_version=None, aot=None):
        assert key_cache.dtype == q.dtype == np.float16 and aot == 1 and plugin_namespace == "ingot"
        new_k, new_v = key_cache.copy(), value_cache.copy()
        block = key_cache.shape[2]
        new_k[:, slot_mapping // block, slot_mapping % block] = k.transpose(1, 0, 2)
        new_v[:, slot_mapping // block, slot_mapping % block] = v.transpose(1, 0, 2)
        f32 = [torch.from_numpy(x.astype(np.float32)) for x in (q, k, v, key_cache, value_cache)]
        i64 = [torch.from_numpy(x) for x in (slot_mapping, block_tables, context_lens, query_start_loc)]
        out = torch.ops.ingot.paged_attention(*f32, *i64, int(num_heads), int(num_kv_heads), float(scale),
                                              int(sliding_window), float(softcap))
        return out.numpy().astype(np.float16), new_k, new_v


def _step(hf):
    """The contract's example step (two sequences, one reading 5 past tokens from the pool) with an
    fp16 pool, as feeds; and the torch reference's logits on the same pool."""
    from ingot.builder.paged import PagedCausalLM, example_inputs

    wrapper = PagedCausalLM(hf).eval()
    ex = example_inputs(wrapper, BLOCK)
    for key in ("key_caches", "value_caches"):
        ex[key] = [c.half().float() for c in ex[key]]
    with torch.no_grad():
        ref = wrapper(**ex).double().numpy()
    feeds = {k: ex[k].numpy() for k in ("input_ids", "positions", "logits_indices", *names_metadata())}
    for layer, (k, v) in enumerate(zip(ex["key_caches"], ex["value_caches"])):
        feeds[names.key_cache(layer)] = k.numpy().astype(np.float16)
        feeds[names.value_cache(layer)] = v.numpy().astype(np.float16)
    return feeds, ref


def test_plugin_graph_computes_the_model(plugin, hf):
    """The exact graph TensorRT parses, run by ONNX's reference evaluator with the plugin's
    contract: its logits are the torch model's (fp16 attention inputs: 1e-3 of the largest)."""
    feeds, ref = _step(hf)
    logits, new_key0 = ReferenceEvaluator(plugin, new_ops=[PagedAttention]).run([names.LOGITS, "key_cache.0.updated"],
                                                                               feeds)
    assert logits.dtype == np.float32 and logits.shape == ref.shape
    assert np.abs(logits - ref).max() <= 1e-3 * np.abs(ref).max()  # measured 1.1e-4 of 0.55
    slots = feeds[names.SLOT_MAPPING]
    written = new_key0[:, slots // BLOCK, slots % BLOCK]  # [kv, T, dim]: the step's new keys
    assert not np.array_equal(written, feeds["key_cache.0"][:, slots // BLOCK, slots % BLOCK])


def test_quantized_plan_keeps_its_qdq_and_its_logits(lowered, contract, hf):
    """An INT4 plan graph: the sm graph has every DequantizeLinear of the cpu one, and computes the
    cpu plan's logits (ONNX Runtime on the lowering) to fp16 attention's error."""
    from ingot.builder.cpu import ort_runner
    from ingot.quant import QuantSpec, quantize
    from ingot.runtime.llm.batch import PackedBatch
    from ingot.runtime.llm.cpu_lowering import plan_feeds, run_calls, window_feeds

    # accuracy level 0: ONNX Runtime's INT4 MatMul keeps fp32 activations, as the reference evaluator does
    qmodel, report = quantize(lowered, QuantSpec(scheme="int4", block_size=16, gptq=False, accuracy_level=0))
    graph = sm_graph(qmodel, [], contract, _llm()).model
    dq = lambda m: sorted(n.input[0] for n in m.graph.node if n.op_type == "DequantizeLinear")  # noqa: E731
    assert dq(graph) == dq(qmodel) and len(dq(graph)) >= 8
    onnx.checker.check_model(graph)
    feeds, _ = _step(hf)
    logits = ReferenceEvaluator(graph, new_ops=[PagedAttention]).run([names.LOGITS], feeds)[0]
    run = ort_runner(qmodel.SerializeToString(), report.session_config)
    batch = PackedBatch(**{k: feeds[k] for k in ("input_ids", "positions", "logits_indices", *names_metadata())})
    caches = {k: v.astype(np.float32) for k, v in feeds.items() if names.is_cache(k)}
    info = _llm()
    cpu = run_calls(batch, lambda sub: run(plan_feeds(sub) | window_feeds(sub, info, caches))[names.LOGITS])
    assert np.abs(logits - cpu).max() <= 1e-3 * np.abs(cpu).max()  # measured 1.2e-4 of 0.55


def test_refit_onnx_is_saved_whole_or_with_its_data_file(plugin, tmp_path):
    before = plugin.SerializeToString()
    assert save_onnx(plugin, tmp_path / "a" / "refit.onnx") == [tmp_path / "a" / "refit.onnx"]
    files = save_onnx(plugin, tmp_path / "b" / "refit.onnx", external_above=1000)
    assert files == [tmp_path / "b" / "refit.onnx", tmp_path / "b" / "refit.onnx.data"]
    assert plugin.SerializeToString() == before, "the caller's graph keeps its weights"
    assert files[0].stat().st_size < 100_000 < files[1].stat().st_size
    for folder in ("a", "b"):
        loaded = onnx.load(tmp_path / folder / "refit.onnx")
        assert {t.name: onnx.numpy_helper.to_array(t).tobytes() for t in loaded.graph.initializer} == \
            {t.name: onnx.numpy_helper.to_array(t).tobytes() for t in plugin.graph.initializer}


def test_plugin_graph_leaves_its_input_alone(lowered, contract):
    graph = unlowered(lowered, contract)
    before = graph.SerializeToString()
    plugin_graph(graph)
    assert graph.SerializeToString() == before


# ---- real builds: TensorRT and a GPU

def _gpu_target() -> str:
    pytest.importorskip("tensorrt")
    from ingot.plans import detect_host

    gpus = detect_host().gpus
    if not gpus:
        pytest.skip("no NVIDIA GPU")
    return gpus[0]


@pytest.mark.gpu
def test_dense_plan_builds_with_a_timing_cache(tiny_cnn_py, tmp_path):
    from tests.conftest import build

    arch = _gpu_target()
    manifest = build(f"{tiny_cnn_py}:model", tmp_path / "b", targets=["auto"], timing_cache=tmp_path / "tc")
    target = manifest.targets[arch]
    assert target.backend == "tensorrt" and (tmp_path / "b" / target.entrypoint).stat().st_size > 0
    assert target.tensorrt.compute_capability == compute_capability(TargetName.parse(arch))
    assert target.tensorrt.timing_cache_sha256 is None  # the first build starts from no cache
    cache = next((tmp_path / "tc").iterdir())
    again = build(f"{tiny_cnn_py}:model", tmp_path / "b2", targets=[arch], timing_cache=tmp_path / "tc")
    assert again.targets[arch].tensorrt.timing_cache_sha256 is not None and cache.stat().st_size > 0


@pytest.mark.gpu
def test_paged_plan_builds_with_the_plugin_and_stripped_weights(tmp_path):
    from tests import models
    from tests.conftest import build

    arch = _gpu_target()
    pytest.importorskip("ingot.kernels.trt_plugin")
    llama = models.make_tiny_llama(tmp_path / "llama", hidden_size=256, num_heads=4)  # head_dim 64, as the kernels take
    manifest = build(llama, tmp_path / "b", targets=[arch], kv_block_size=16, strip_weights=True)
    target = manifest.targets[arch]
    info = target.tensorrt
    assert info.weights_stripped and info.refit_source == f"targets/{arch}/refit.onnx"
    assert info.plugins and all(k.plugin == "ingot::PagedAttention" for k in info.plugins)
    assert target.build_options["kv_dtype"] == "float16"
    shutil.rmtree(tmp_path / "b")
