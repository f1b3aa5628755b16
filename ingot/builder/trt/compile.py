"""Compile an sm target: the graph of sm_graph into a TensorRT plan in the bundle, and the
manifest's Target with its `tensorrt` record (TensorRTInfo). Written against the TensorRT 11
Python API; it runs only where TensorRT and a GPU of the target's arch are (machine.py).

Files of a target: `targets/sm_XY/model.plan`; with --strip-weights also `targets/sm_XY/refit.onnx`
(+ `.data` above 1 GiB), the exact ONNX TensorRT parsed, from which the runtime refits the weights
(trt.OnnxParserRefitter.refit_from_file) before the first run.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import onnx

from ingot.builder.errors import BuildError
from ingot.builder.trt.builder_config import builder_config
from ingot.builder.trt.network import parse_onnx
from ingot.builder.trt.options import TensorRTOptions, compute_capability
from ingot.builder.trt.plugin import kernel_records, register_plugin
from ingot.builder.trt.sm_graph import SmGraph
from ingot.builder.trt.timing_cache import TimingCacheFile, load_cache, save_cache
from ingot.plans import BundleWriter, PluginKernel, Target, TargetName, TensorRTInfo

_EXTERNAL_DATA_ABOVE = 1 << 30  # protobuf caps one message at 2 GiB (as ingot.builder.cpu)


def compile_tensorrt(graph: SmGraph, target: TargetName, writer: BundleWriter, options: TensorRTOptions) -> Target:
    import tensorrt as trt

    cache = load_cache(options.timing_cache, target.name, trt.__version__) if options.timing_cache else None
    cc = compute_capability(target)
    if graph.plugins:
        register_plugin()
    with tempfile.TemporaryDirectory() as tmp:  # TensorRT's parser reads a file
        folder = writer.path(f"targets/{target.name}") if options.strip_weights else Path(tmp)
        onnx_files = save_onnx(graph.model, folder / ("refit.onnx" if options.strip_weights else "model.onnx"))
        plan, timing, started = _build(trt, graph, onnx_files[0], target, options, cache)
    rel = f"targets/{target.name}/model.plan"
    writer.path(rel).write_bytes(plan)
    if cache is not None:
        save_cache(cache.path, bytes(timing.serialize()))
    refit = [f"targets/{target.name}/{p.name}" for p in onnx_files] if options.strip_weights else []
    plugins = kernel_records(graph.model, cc) if graph.plugins else []
    info = tensorrt_info(trt.__version__, target, options, cache if started else None, refit, plugins)
    return Target(
        name=target.name, device="cuda", arch=target.arch, backend="tensorrt", backend_version=trt.__version__,
        entrypoint=rel, build_options=build_options(graph, options), files=[writer.entry(f) for f in [rel, *refit]],
        tensorrt=info,
    )


def tensorrt_info(version: str, target: TargetName, options: TensorRTOptions, cache: TimingCacheFile | None,
                  refit: list[str], plugins: list[PluginKernel]) -> TensorRTInfo:
    """The target's `tensorrt` record. `cache`: the timing cache the build started from (None: none, or
    one TensorRT did not accept); `refit`: the bundle paths of the refit ONNX (--strip-weights)."""
    assert bool(refit) == options.strip_weights, (refit, options)
    return TensorRTInfo(
        version=version, compute_capability=compute_capability(target),
        hardware_compatibility=options.hardware_compatibility,
        builder_optimization_level=options.builder_optimization_level,
        timing_cache_sha256=cache.sha256 if cache is not None else None,
        weights_stripped=options.strip_weights, refit_source=refit[0] if refit else None, plugins=plugins,
    )


def _build(trt, graph: SmGraph, onnx_path: Path, target: TargetName, options: TensorRTOptions,
           cache: TimingCacheFile | None) -> tuple[bytes, object, bool]:
    """(plan bytes, the builder's timing cache, whether it started from `cache`'s bytes)."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder, network, _parser = parse_onnx(trt, logger, onnx_path, target.name, graph.plugins)
    config, timing, started = builder_config(trt, builder, options, graph.profiles, cache.data if cache else b"",
                                             graph.plugins)
    plan = builder.build_serialized_network(network, config)  # IHostMemory, or None on failure
    if plan is None:
        raise BuildError(f"TensorRT failed to build the {target.name} plan (see the TensorRT log above)")
    return bytes(plan), config.get_timing_cache() or timing, started


def save_onnx(model: onnx.ModelProto, path: Path, external_above: int = _EXTERNAL_DATA_ABOVE) -> list[Path]:
    """`model` at `path` (and its weights in `path.data` when too large for one file); the files written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if model.ByteSize() <= external_above:
        onnx.save_model(model, path)
        return [path]
    copy = onnx.ModelProto()  # saving moves the weights out of the proto it writes: not out of the caller's
    copy.CopyFrom(model)
    onnx.save_model(copy, path, save_as_external_data=True, location=path.name + ".data")
    return [path, path.with_name(path.name + ".data")]


def build_options(graph: SmGraph, options: TensorRTOptions) -> dict:
    """The target's build_options: how it was built, and what the runtime needs of its graph."""
    return {"strongly_typed": True, "builder_optimization_level": options.builder_optimization_level,
            "hardware_compatibility": options.hardware_compatibility, "strip_weights": options.strip_weights,
            **graph.build_options()}
