"""The TensorRT builder config of a plan: profile, optimization level, hardware compatibility,
weight stripping, the plugin's aliased I/O and the timing cache.

Names from the TensorRT 11 Python API (NVIDIA/TensorRT `python/docstrings/infer/pyCoreDoc.h`;
Polygraphy `tools/Polygraphy/polygraphy/backend/trt/config.py` sets them the same way).
"""

from __future__ import annotations

from ingot.builder.errors import BuildError
from ingot.builder.trt.options import TensorRTOptions
from ingot.builder.trt.profiles import ProfileShape


def builder_config(trt, builder, options: TensorRTOptions, profiles: list[ProfileShape], cache: bytes,
                   plugins: bool):
    """(config, timing cache, whether `cache` was accepted). The cache object must outlive the build."""
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    for p in profiles:
        profile.set_shape(p.name, p.min, p.opt, p.max)
    if config.add_optimization_profile(profile) < 0:
        raise BuildError("TensorRT refused the optimization profile: " + ", ".join(p.name for p in profiles))
    config.builder_optimization_level = options.builder_optimization_level
    config.hardware_compatibility_level = {
        "none": trt.HardwareCompatibilityLevel.NONE,
        "ampere-plus": trt.HardwareCompatibilityLevel.AMPERE_PLUS,  # sm_80+; 48 KiB shared memory, no cuBLAS tactics
    }[options.hardware_compatibility]
    if options.strip_weights:
        # a plan without its weights, refitted at load from the bundle's ONNX with the same values
        # (REFIT_IDENTICAL lets TensorRT optimize as for constant weights; pyCoreDoc.h BuilderFlagDoc)
        config.set_flag(trt.BuilderFlag.STRIP_PLAN)
        config.set_flag(trt.BuilderFlag.REFIT_IDENTICAL)
    if plugins:
        # the PagedAttention plugin writes the KV pool in place through outputs aliased to its inputs
        # (IPluginV3OneBuildV2.get_aliased_input; samples/python/quickly_deployable_plugins, in-place add)
        config.set_preview_feature(trt.PreviewFeature.ALIASED_PLUGIN_IO_10_03, True)
    timing = config.create_timing_cache(cache)  # b"": a new, empty cache
    accepted = bool(config.set_timing_cache(timing, ignore_mismatch=False))
    if cache and not accepted:  # recorded on another GPU model: start from an empty cache instead
        timing = config.create_timing_cache(b"")
        config.set_timing_cache(timing, ignore_mismatch=False)
    return config, timing, bool(cache) and accepted
