"""The TensorRT runner. On the CPU: what it binds for a step (the packed inputs and their shapes),
the decode batch sizes captured as CUDA graphs and the padding of a decode to one, the KV pool's
sizing and layout. With a GPU and TensorRT (`gpu` marker, skipped otherwise): cuda-python memory,
copies and graph replay; a plain plan behind ingot.runtime.load; a paged plan generating the
tokens its cpu target generates, with and without CUDA graphs."""

import numpy as np
import pytest

from ingot.plans import llm as names
from ingot.plans.llm import LLMInfo
from ingot.runtime.errors import InputError, RunError
from ingot.runtime.llm.batch import pack_step
from ingot.runtime.llm.scheduler_output import ScheduledSequence, SchedulerOutput
from ingot.runtime.trt.bindings import STEP_INPUTS, arena_layout, input_shapes, prefill_chunks, step_arrays
from ingot.runtime.trt.graphs import capture_sizes, graph_size, is_decode, pad_decode, padding_batch
from ingot.runtime.trt.pool import block_bytes, pool_blocks, pool_layout

BLOCK = 4


def info(**kw) -> LLMInfo:
    base = dict(num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, vocab_size=32, kv_dtype="float16",
                kv_block_size=BLOCK, max_num_tokens=64, max_num_seqs=8, max_model_len=32)
    return LLMInfo(**base | kw)


def seq(i: int, tokens: list[int], past: int, blocks: list[int], samples: bool = True) -> ScheduledSequence:
    return ScheduledSequence(f"r{i}", tuple(tokens), past, tuple(blocks), samples, i)


def decode(n: int) -> SchedulerOutput:
    """n sequences decoding one token each: sequence i has 5 + i % 3 tokens cached, in blocks 10i, 10i + 1."""
    return SchedulerOutput(tuple(seq(i, [100 + i], 5 + i % 3, [10 * i, 10 * i + 1]) for i in range(n)))


# ---- CUDA graphs: sizes and padding


@pytest.mark.parametrize("limit,sizes", [(1, (1,)), (3, (1, 2, 3)), (4, (1, 2, 4)), (8, (1, 2, 4, 8)),
                                         (20, (1, 2, 4, 8, 16, 20)), (24, (1, 2, 4, 8, 16, 24))])
def test_capture_sizes(limit, sizes):
    assert capture_sizes(limit) == sizes


def test_capture_sizes_of_a_large_batch():
    sizes = capture_sizes(256)
    assert sizes[:5] == (1, 2, 4, 8, 16) and sizes[-1] == 256 and len(sizes) == 35
    assert all(b - a == 8 for a, b in zip(sizes[3:], sizes[4:]))


@pytest.mark.parametrize("n,size", [(1, 1), (2, 2), (3, 4), (5, 8), (8, 8), (9, 16), (17, 20), (20, 20)])
def test_a_decode_runs_as_the_next_captured_size(n, size):
    assert graph_size(pack_step(decode(n), BLOCK), capture_sizes(20)) == size


def test_steps_without_a_graph():
    sizes = capture_sizes(8)
    assert graph_size(pack_step(decode(9), BLOCK), sizes) is None  # larger than any captured size
    assert graph_size(pack_step(decode(3), BLOCK), ()) is None  # graphs off
    prefill = SchedulerOutput((seq(0, [1, 2, 3], 0, [0]), seq(1, [7], 4, [1, 2])))
    assert graph_size(pack_step(prefill, BLOCK), sizes) is None  # a mixed step
    chunk = SchedulerOutput((seq(0, [5], 2, [0], samples=False), seq(1, [7], 4, [1, 2])))
    assert not is_decode(pack_step(chunk, BLOCK))  # one token that samples nothing: not a decode


def test_pad_decode():
    batch = pack_step(decode(3), BLOCK)
    padded = pad_decode(batch, 4, padding_block=50, block_size=BLOCK)
    assert padded.input_ids.tolist() == [100, 101, 102, 0]
    assert padded.positions.tolist() == [5, 6, 7, 0]
    assert padded.slot_mapping.tolist() == [1 * BLOCK + 1, 11 * BLOCK + 2, 21 * BLOCK + 3, 50 * BLOCK]
    assert padded.logits_indices.tolist() == [0, 1, 2, 3]
    assert padded.query_start_loc.tolist() == [0, 1, 2, 3, 4]
    assert padded.context_lens.tolist() == [6, 7, 8, 1]
    assert padded.block_tables.tolist() == [[0, 1], [10, 11], [20, 21], [50, 0]]
    assert padded.seq_ids.tolist() == [0, 1, 2, -1]
    assert pad_decode(batch, 3, 50, BLOCK).block_tables.tolist() == batch.block_tables.tolist()  # no padding


def test_the_capture_batch_touches_only_the_padding_block():
    batch = padding_batch(4, width=8, padding_block=50, block_size=BLOCK)
    assert batch.num_seqs == 4 and batch.block_tables.shape == (4, 8)
    assert set(batch.slot_mapping.tolist()) == {50 * BLOCK} and set(batch.block_tables[:, 0].tolist()) == {50}
    assert batch.context_lens.tolist() == [1, 1, 1, 1] and batch.logits_indices.tolist() == [0, 1, 2, 3]


# ---- bindings


def test_binding_arrays_and_shapes_of_a_step():
    """A prefill chunk (3 tokens after 4 cached, no sampling) beside two decodes."""
    out = SchedulerOutput((seq(0, [11, 12, 13], 4, [3, 4], samples=False), seq(1, [21], 6, [5, 6]),
                           seq(2, [31], 1, [7])))
    dtypes = {name: np.dtype(np.int32) for name in STEP_INPUTS} | {names.INPUT_IDS: np.dtype(np.int64)}
    arrays = step_arrays(pack_step(out, BLOCK), width=8, dtypes=dtypes)
    assert list(arrays) == list(STEP_INPUTS)
    assert arrays[names.INPUT_IDS].tolist() == [11, 12, 13, 21, 31] and arrays[names.INPUT_IDS].dtype == np.int64
    assert arrays[names.POSITIONS].tolist() == [4, 5, 6, 6, 1] and arrays[names.POSITIONS].dtype == np.int32
    assert arrays[names.SLOT_MAPPING].tolist() == [4 * BLOCK, 4 * BLOCK + 1, 4 * BLOCK + 2, 6 * BLOCK + 2,
                                                   7 * BLOCK + 1]
    assert arrays[names.LOGITS_INDICES].tolist() == [3, 4]  # the two sampling sequences' last tokens
    assert arrays[names.QUERY_START_LOC].tolist() == [0, 3, 4, 5]
    assert arrays[names.CONTEXT_LENS].tolist() == [7, 7, 2]
    assert arrays[names.BLOCK_TABLES].tolist() == [[3, 4, 0, 0, 0, 0, 0, 0], [5, 6, 0, 0, 0, 0, 0, 0],
                                                   [7, 0, 0, 0, 0, 0, 0, 0]]
    assert all(a.flags.c_contiguous for a in arrays.values())
    shapes = input_shapes(arrays, (2, 13, BLOCK, 8), info())
    assert shapes == {names.INPUT_IDS: (5,), names.POSITIONS: (5,), names.LOGITS_INDICES: (2,),
                      names.SLOT_MAPPING: (5,), names.BLOCK_TABLES: (3, 8), names.CONTEXT_LENS: (3,),
                      names.QUERY_START_LOC: (4,), "key_cache.0": (2, 13, BLOCK, 8), "value_cache.0": (2, 13, BLOCK, 8),
                      "key_cache.1": (2, 13, BLOCK, 8), "value_cache.1": (2, 13, BLOCK, 8)}


def test_a_padded_decode_binds_the_captured_shapes():
    batch = pad_decode(pack_step(decode(3), BLOCK), 4, 50, BLOCK)
    shapes = input_shapes(step_arrays(batch, width=8), (2, 51, BLOCK, 8), info(num_layers=1))
    assert shapes[names.INPUT_IDS] == shapes[names.LOGITS_INDICES] == shapes[names.CONTEXT_LENS] == (4,)
    assert shapes[names.BLOCK_TABLES] == (4, 8) and shapes[names.QUERY_START_LOC] == (5,)


def test_block_tables_wider_than_the_plan_are_a_bug():
    with pytest.raises(AssertionError):
        step_arrays(pack_step(decode(1), BLOCK), width=1)


def test_dense_rows_are_prefilled_in_chunks():
    """A dense row (perplexity) of 10 tokens in calls of at most 4: each chunk after the first reads
    the past the earlier ones wrote, in the pool's first blocks, and returns every token's logits."""
    chunks = prefill_chunks(np.arange(100, 110), chunk=4, block_size=BLOCK)
    assert [c.input_ids.tolist() for c in chunks] == [[100, 101, 102, 103], [104, 105, 106, 107], [108, 109]]
    assert [c.positions.tolist() for c in chunks] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert [c.context_lens.tolist() for c in chunks] == [[4], [8], [10]]
    assert [c.block_tables.tolist() for c in chunks] == [[[0]], [[0, 1]], [[0, 1, 2]]]
    assert [c.slot_mapping.tolist() for c in chunks] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert [c.logits_indices.tolist() for c in chunks] == [[0, 1, 2, 3], [0, 1, 2, 3], [0, 1]]


def test_arena_layout():
    shapes = {"a": (3,), "b": (2, 100), "c": (1,)}
    dtypes = {"a": np.int32, "b": np.float16, "c": np.int64}
    offsets, total = arena_layout(shapes, dtypes)
    assert offsets == {"a": 0, "b": 256, "c": 256 + 512} and total == 256 + 512 + 256


# ---- the KV pool

def test_block_bytes():
    assert block_bytes(info(), 2) == 2 * 2 * 2 * BLOCK * 8 * 2  # k|v, layers, kv heads, block, dim, fp16


def test_pool_sized_in_bytes_fraction_and_text():
    i, per = info(), block_bytes(info(), 2)
    free = 10_000 * per
    assert pool_blocks(i, 2, 101 * per, free) == 100  # one block more is the padding block
    assert pool_blocks(i, 2, 101 * per + per - 1, free) == 100
    assert pool_blocks(i, 2, 0.5, free) == 4999
    assert pool_blocks(i, 2, f"{101 * per}", free) == 100
    assert pool_blocks(i, 2, f"{101 * per / 2**10}KiB", free) == 100
    assert pool_blocks(i, 2, "0.5", free) == 4999


def test_default_pool_is_what_max_num_seqs_sequences_need_within_most_of_the_free_memory():
    i, per = info(), block_bytes(info(), 2)
    assert pool_blocks(i, 2, None, 10_000 * per) == 8 * (32 // BLOCK)  # max_num_seqs full sequences
    assert pool_blocks(i, 2, None, 50 * per) == 44  # 0.9 of 50 blocks, less the padding block


def test_pool_too_small_or_too_large():
    i, per = info(), block_bytes(info(), 2)
    with pytest.raises(RunError) as e:
        pool_blocks(i, 2, 8 * per, 10_000 * per)
    assert str(e.value) == (f"KV cache of 7 blocks ({7 * per / 1024:.1f} KiB) holds fewer tokens than max_model_len "
                            f"32; give --kv-cache-memory at least {9 * per} bytes")
    with pytest.raises(RunError, match=r"--kv-cache-memory 1.0 MiB is more than the 64.0 KiB free on NVIDIA H100 80GB "
                                       r"HBM3 \(compute capability 9.0\) with the plan loaded; give less"):
        pool_blocks(i, 2, "1MiB", 2**16, "NVIDIA H100 80GB HBM3 (compute capability 9.0)")
    with pytest.raises(InputError, match="--kv-cache-memory 'lots'"):
        pool_blocks(i, 2, "lots", 2**30)


def test_pool_layout():
    layout = pool_layout(info(), 10, 2)
    assert layout.cache_shape == (2, 11, BLOCK, 8) and layout.padding_block == 10
    size = 2 * 11 * BLOCK * 8 * 2  # 1408 bytes, aligned up to 1536
    assert layout.offsets == {"key_cache.0": 0, "value_cache.0": 1536, "key_cache.1": 3072, "value_cache.1": 4608}
    assert layout.nbytes == 4 * 1536 >= 4 * size


# ---- on a GPU with TensorRT (skipped here)


def _gpu_sm() -> str:
    """This machine's sm target, or skip: these tests need an NVIDIA GPU, cuda-python and TensorRT."""
    pytest.importorskip("cuda.bindings.runtime", reason="needs cuda-python (pip install 'ingot[tensorrt]')")
    from ingot.plans import TargetName
    from ingot.runtime.trt.device import probe

    facts = probe()
    if facts.compute_capability is None:
        pytest.skip("needs an NVIDIA GPU")
    return TargetName.gpu("{}.{}".format(*facts.compute_capability))


@pytest.mark.gpu
def test_cuda_copies_and_graph_replay():
    _gpu_sm()
    from ingot.runtime.trt import cuda

    stream = cuda.Stream()
    a, b = cuda.DeviceMemory(1024), cuda.DeviceMemory(1024)
    host = cuda.PinnedMemory(2048)
    src, dst = host.view(0, np.float32, (256,)), host.view(1024, np.float32, (256,))
    src[...] = np.arange(256, dtype=np.float32)
    cuda.copy_to_device(a.ptr, src, stream)
    cuda.copy_to_host(dst, a.ptr, stream)
    stream.synchronize()
    assert np.array_equal(dst, src)
    from cuda.bindings import runtime as rt

    def device_copy():  # a → b, captured
        rt.cudaMemcpyAsync(b.ptr, a.ptr, 1024, rt.cudaMemcpyKind.cudaMemcpyDeviceToDevice, stream.handle)

    graph = cuda.Graph.capture(stream, device_copy)
    src[...] = 7.0
    cuda.copy_to_device(a.ptr, src, stream)
    graph.launch()  # replays with what a holds now
    cuda.copy_to_host(dst, b.ptr, stream)
    stream.synchronize()
    assert (dst == 7.0).all()
    for r in (graph, a, b, host, stream):
        r.close()


@pytest.mark.gpu
@pytest.mark.parametrize("compat", ["none", "ampere-plus"])
def test_plain_plan_runs_behind_load(tmp_path, compat):
    """A MatMul + Relu network built here with TensorRT (hardware-compatible or not), in a bundle,
    run by ingot.runtime.load."""
    sm = _gpu_sm()
    trt = pytest.importorskip("tensorrt")
    from ingot.plans.targets import compute_capability

    if compat == "ampere-plus" and compute_capability(sm) < (8, 0):
        pytest.skip("ampere-plus plans need compute capability 8.0 or newer")
    from ingot.plans import SCHEMA_VERSION, BundleWriter, Manifest
    from ingot.runtime import load

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    net = builder.create_network(0)
    x = net.add_input("x", trt.float32, (-1, 4))
    w = np.arange(8, dtype=np.float32).reshape(4, 2) - 3
    const = net.add_constant((4, 2), trt.Weights(w))
    y = net.add_activation(net.add_matrix_multiply(x, trt.MatrixOperation.NONE, const.get_output(0),
                                                   trt.MatrixOperation.NONE).get_output(0), trt.ActivationType.RELU)
    y.get_output(0).name = "y"
    net.mark_output(y.get_output(0))
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    profile.set_shape("x", (1, 4), (2, 4), (8, 4))
    config.add_optimization_profile(profile)
    if compat == "ampere-plus":
        config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.AMPERE_PLUS
    plan = bytes(builder.build_serialized_network(net, config))
    major, minor = sm.removeprefix("sm_")[:-1], sm[-1]
    rel = f"targets/{sm}/model.plan"
    with BundleWriter(tmp_path / "b") as writer:
        writer.path(rel).write_bytes(plan)
        writer.commit(Manifest.model_validate({
            "schema_version": SCHEMA_VERSION, "ingot_version": "0.1.0",
            "model": {"id": "mm", "kind": "generic", "source": {"type": "onnx", "name": "mm.onnx", "sha256": "0" * 64}},
            "inputs": [{"name": "x", "dtype": "float32", "shape": [{"name": "batch", "min": 1, "max": 8}, 4]}],
            "outputs": [{"name": "y", "dtype": "float32", "shape": [{"name": "batch", "min": 1, "max": 8}, 2]}],
            "targets": {sm: {"name": sm, "device": "cuda", "arch": sm, "backend": "tensorrt",
                             "backend_version": trt.__version__, "entrypoint": rel,
                             "files": [writer.entry(rel).model_dump()],
                             "tensorrt": {"version": trt.__version__, "compute_capability": f"{major}.{minor}",
                                          "hardware_compatibility": compat}}},
        }))
    model = load(tmp_path / "b")
    assert model.target.name == sm
    feeds = {"x": np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)}
    np.testing.assert_allclose(model.run(feeds)["y"], np.maximum(feeds["x"] @ w, 0), rtol=1e-3, atol=1e-3)
    model.backend.close()


@pytest.fixture(scope="module")
def llama_sm_bundle(tmp_path_factory):
    """A tiny Llama (head_dim 64, the kernels' smallest) built for the cpu target and this GPU's:
    (bundle, sm target, model folder)."""
    sm = _gpu_sm()
    pytest.importorskip("tensorrt")
    from tests import models
    from tests.conftest import built

    src = models.make_tiny_llama(tmp_path_factory.mktemp("llama64"), hidden_size=256, num_heads=4)
    return built(src, tmp_path_factory.mktemp("b") / "llama", "--target", "cpu", "--target", sm), sm, src


def _greedy(runner, prompts) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, greedy output ids) of each prompt."""
    from ingot.runtime.llm import LLM, SamplingParams

    outputs = LLM.from_runner(runner).generate(prompts, SamplingParams(temperature=0, max_tokens=12, ignore_eos=True))
    return [(list(o.prompt_token_ids), list(o.token_ids)) for o in outputs]


def _assert_near_cpu_argmax(bundle, generated, gap=0.02):
    """Teacher-forced on the cpu target: each token the GPU chose is the cpu target's argmax, or
    within `gap` of the row's logit range of it (fp16 attention and TF32 GEMMs on the GPU against
    fp32 on the CPU: a random tiny model's near-ties may flip)."""
    from ingot.runtime import load

    cpu = load(bundle, "cpu")
    for prompt, tokens in generated:
        ids = np.array([prompt + tokens[:-1]], np.int64)
        feeds = {"input_ids": ids} | ({"attention_mask": np.ones_like(ids)}
                                     if any(i.name == "attention_mask" for i in cpu.manifest.inputs) else {})
        rows = cpu.run(feeds)[names.LOGITS][0, len(prompt) - 1:]
        for row, token in zip(rows, tokens):
            assert row.max() - row[token] <= gap * np.ptp(row), (prompt, tokens)


@pytest.mark.gpu
def test_paged_plan_generates_what_the_cpu_target_generates(llama_sm_bundle):
    """Greedy tokens of a batch of prompts (decodes of 1..4 sequences: graphs of sizes 1, 2, 4, a
    batch of 3 padded to 4), with and without CUDA graphs, checked on the cpu target."""
    from ingot.runtime import load
    from ingot.runtime.llm.runner import load_runner
    from ingot.runtime.trt.runner import TrtRunner

    bundle, sm, _ = llama_sm_bundle
    prompts = ["Once upon a time", "The", "In the beginning the", "A"]
    graphs = load_runner(bundle, target=sm, kv_cache_memory="8MiB")
    assert isinstance(graphs, TrtRunner) and graphs.sizes[:3] == (1, 2, 4)
    with_graphs = _greedy(graphs, prompts)
    _assert_near_cpu_argmax(bundle, with_graphs)
    _assert_near_cpu_argmax(bundle, _greedy(graphs, prompts[:3]))  # a decode of 3, padded to 4
    assert graphs.memory().kv_cache_bytes == graphs.layout.nbytes
    graphs.close()
    eager = TrtRunner(load(bundle, sm), "8MiB", cuda_graphs=False)
    assert eager.sizes == ()
    _assert_near_cpu_argmax(bundle, _greedy(eager, prompts))
    eager.close()


@pytest.mark.gpu
def test_paged_plan_perplexity_matches_the_cpu_target(llama_sm_bundle):
    """Model.run of the sm target (dense rows prefilled in chunks, dense.py) against the cpu target."""
    from ingot.runtime import load

    bundle, sm, _ = llama_sm_bundle
    text = "Once upon a time there was a tiny model that ran on a GPU and on a CPU alike. " * 3
    cpu, gpu = load(bundle, "cpu").perplexity(text, window=64), load(bundle, sm).perplexity(text, window=64)
    assert gpu.tokens == cpu.tokens
    assert gpu.perplexity == pytest.approx(cpu.perplexity, rel=1e-2)


@pytest.mark.gpu
def test_weight_stripped_plan_is_refitted_at_load(llama_sm_bundle, tmp_path):
    """--strip-weights: the checks pass it, the runner refits it from the ONNX beside it
    (OnnxParserRefitter) and it generates the cpu target's tokens (checked on the cpu target of the
    first bundle: the same weights). A paged plan cannot be hardware-compatible (its kernels are a
    cubin of the building GPU): the build refuses that."""
    from ingot.plans import open_bundle
    from ingot.runtime.llm.runner import load_runner
    from tests.conftest import built

    bundle, sm, src = llama_sm_bundle
    stripped = built(src, tmp_path / "stripped", "--target", sm, "--strip-weights")
    record = open_bundle(stripped).manifest.targets[sm].tensorrt
    assert record.weights_stripped and record.refit_source
    runner = load_runner(stripped, kv_cache_memory="8MiB")
    _assert_near_cpu_argmax(bundle, _greedy(runner, ["Once upon a time", "The"]))
    runner.close()


def test_the_near_argmax_check_holds_for_the_cpu_targets_own_tokens(llama_bundle):
    """The GPU tests' check, on the CPU: the cpu target's greedy tokens are its own argmax."""
    from ingot.runtime.llm.runner import load_runner

    runner = load_runner(llama_bundle, kv_cache_memory="8MiB")
    generated = _greedy(runner, ["Once upon a time", "The"])
    runner.close()
    _assert_near_cpu_argmax(llama_bundle, generated, gap=1e-3)  # dense and paged runs round apart
    prompt, tokens = generated[0]
    with pytest.raises(AssertionError):  # and it refuses a token that is not
        _assert_near_cpu_argmax(llama_bundle, [(prompt, tokens[:-1] + [(tokens[-1] + 1) % 300])], gap=1e-3)
