"""`ingot build --json`: what a CI pipeline needs of a build, in one document on stdout.

The targets with their files and sha256, how each was verified, the quantization and what it
did, and the time of every build stage. The full manifest rides along under `manifest` (the
same document `ingot inspect --json` prints), so a pipeline step reads either.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from ingot.plans import FileEntry, Manifest, TensorRTInfo, Verification

SUMMARY_FORMAT = "ingot-build-summary/1"


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StageTime(_Frozen):
    stage: str  # "export to ONNX", "compile cpu-x86_64", ...
    seconds: float
    skipped: str | None = None  # why the stage did not run


class TargetSummary(_Frozen):
    name: str
    device: str
    arch: str
    backend: str
    backend_version: str
    entrypoint: str
    files: list[FileEntry]
    verification: Verification | None
    tensorrt: TensorRTInfo | None = None


class QuantSummary(_Frozen):
    scheme: str
    precision: str  # the bundle's precision ("int4", "fp8")
    layers_quantized: int
    layers_int8: int
    layers_float: int
    calibration: str | None  # the calibration data's file name
    warnings: list[str] = []


class BuildSummary(_Frozen):
    format: str = SUMMARY_FORMAT
    bundle: str
    model: str  # the manifest's model id
    kind: str
    source_sha256: str
    precision: str
    targets: list[TargetSummary]
    files: list[FileEntry]  # every file of the bundle besides manifest.json, sorted by path
    verified: bool  # every target that was compared with its reference passed (no target compared: False)
    quantization: QuantSummary | None
    timings: list[StageTime]
    total_seconds: float
    notes: list[str]
    manifest: dict


def build_summary(bundle: str, manifest: Manifest, timings: list[StageTime], total_seconds: float) -> BuildSummary:
    targets = [TargetSummary(**t.model_dump(include=set(TargetSummary.model_fields)))
               for t in sorted(manifest.targets.values(), key=lambda t: t.name)]
    checked = [t.verification for t in targets if t.verification is not None]
    return BuildSummary(
        bundle=bundle, model=manifest.model.id, kind=manifest.model.kind, source_sha256=manifest.model.source.sha256,
        precision=manifest.precision, targets=targets,
        files=sorted(manifest.files(), key=lambda f: f.path),
        verified=bool(checked) and all(v.passed for v in checked),
        quantization=_quant(manifest), timings=timings, total_seconds=round(total_seconds, 3), notes=manifest.notes,
        manifest=manifest.model_dump(mode="json"),
    )


def _quant(manifest: Manifest) -> QuantSummary | None:
    q = manifest.quantization
    if q is None:
        return None
    return QuantSummary(
        scheme=q.scheme, precision=manifest.precision, layers_quantized=q.layers_quantized,
        layers_int8=len(q.layers_int8), layers_float=len(q.layers_skipped),
        calibration=q.calibration.source if q.calibration else None, warnings=q.warnings,
    )
