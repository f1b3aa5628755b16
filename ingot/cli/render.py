"""Human and JSON views of manifests and outputs (stdout)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from ingot.plans import Manifest, Target

out = Console(highlight=False)


def print_json(data: object) -> None:
    print(json.dumps(data, indent=2))


def manifest_table(manifest: Manifest, root: Path) -> None:
    m = manifest.model
    out.print(f"[bold]{m.id}[/bold]  {m.kind}  {m.architecture or ''}  precision {manifest.precision}")
    out.print(f"source: {m.source.type} {m.source.name} (sha256 {m.source.sha256[:12]}…)")
    out.print(f"bundle: {root}  schema v{manifest.schema_version}, ingot {manifest.ingot_version}")
    for note in manifest.notes:  # what the build could not do (e.g. "no LLM plan: ...")
        out.print(f"[yellow]note:[/yellow] {note}")
    if manifest.quantization:
        quantization(manifest.quantization)
    io = Table("", "name", "dtype", "shape", title="inputs / outputs", title_justify="left")
    for kind, specs in (("in", manifest.inputs), ("out", manifest.outputs)):
        for s in specs:
            io.add_row(kind, s.name, s.dtype, s.describe().split(":", 1)[1].split("[", 1)[1].rstrip("]"))
    out.print(io)
    if manifest.tokenizer:
        tok = manifest.tokenizer
        out.print(f"tokenizer: {', '.join(f.path for f in tok.files)} (text inputs: {', '.join(tok.input_map)})")
    targets = Table("target", "backend", "files", "verified", title="targets", title_justify="left")
    for t in manifest.targets.values():
        targets.add_row(t.name, f"{t.backend} {t.backend_version}", _size(t), _verified(t))
    out.print(targets)


def quantization(q) -> None:
    block = f", block {q.block_size}" if q.block_size else ""
    block += f", {q.rounding} rounding" if q.rounding else ""
    out.print(f"quantization: {q.scheme}{block}, {q.layers_quantized} layers quantized, excluded {', '.join(q.exclude) or 'none'}")
    if q.calibration:
        c = q.calibration
        out.print(f"  calibration: {c.source} ({c.format}, {c.samples} samples, seq {c.seq_len}, {c.method})")
    for name, reason in q.layers_skipped.items():
        out.print(f"  skipped {name}: {reason}")
    for name, reason in q.layers_int8.items():
        out.print(f"  int8 {name}: {reason}")
    for line in [*q.warnings, *q.notes]:
        out.print(f"  note: {line}")


def _size(t: Target) -> str:
    n = sum(f.size for f in t.files)
    return f"{len(t.files)} file(s), {n / 2**20:.1f} MiB"


def _verified(t: Target) -> str:
    v = t.verification
    if v is None:
        return "no"
    where = f" on {v.ran_on}" if v.ran_on != t.name else ""
    return f"vs {v.reference}{where}: {v.summary()}"


def outputs_text(outputs: dict[str, np.ndarray], kind: str) -> None:
    for name, arr in outputs.items():
        out.print(f"[bold]{name}[/bold]  {arr.dtype}{list(arr.shape)}")
        print(np.array2string(arr, threshold=24, edgeitems=3, precision=5))
        if kind == "classifier" and arr.ndim == 2:
            for row, top in enumerate(np.argsort(-arr, axis=1)[:, :5]):
                out.print(f"  row {row} top-5: " + ", ".join(f"{i} ({arr[row, i]:.3f})" for i in top))


def outputs_json(outputs: dict[str, np.ndarray]) -> dict:
    return {n: {"dtype": str(a.dtype), "shape": list(a.shape), "data": a.tolist()} for n, a in outputs.items()}


def save_npz(path: Path, outputs: dict[str, np.ndarray]) -> None:
    """Written to a temporary file first, so a failed write leaves no half file."""
    path = path if path.suffix == ".npz" else path.with_name(path.name + ".npz")
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **outputs)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
