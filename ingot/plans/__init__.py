"""The plan bundle: the contract between `ingot build` and every runtime.

Depends on pydantic only. Nothing here imports torch, onnx, onnxruntime or tensorrt.
"""

from ingot.plans.bundle import Bundle, BundleWriter, merge_bundles, open_bundle, read_manifest
from ingot.plans.errors import (
    BundleError,
    ChecksumError,
    IncompatibleBundleError,
    ManifestError,
    NoTargetError,
)
from ingot.plans.manifest import (
    SCHEMA_VERSION,
    DynamicDim,
    FileEntry,
    Manifest,
    ModelInfo,
    PluginKernel,
    SourceInfo,
    Target,
    TensorRTInfo,
    TensorSpec,
    TokenizerInfo,
    Verification,
)
from ingot.plans.targets import Host, TargetName, detect_host, select_target

__all__ = [
    "SCHEMA_VERSION", "Bundle", "BundleError", "BundleWriter", "ChecksumError", "DynamicDim",
    "FileEntry", "Host", "IncompatibleBundleError", "Manifest", "ManifestError", "ModelInfo",
    "NoTargetError", "PluginKernel", "SourceInfo", "Target", "TargetName", "TensorRTInfo", "TensorSpec", "TokenizerInfo",
    "Verification", "detect_host", "merge_bundles", "open_bundle", "read_manifest", "select_target",
]
