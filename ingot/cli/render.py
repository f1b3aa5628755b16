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
err = Console(stderr=True, highlight=False)


def print_json(data: object) -> None:
    """One line of compact JSON (every --json of the CLI): `jq` reads it, and pretty-prints it."""
    print(json.dumps(data, separators=(",", ":")))


def manifest_table(manifest: Manifest, root: Path) -> None:
    m = manifest.model
    out.print(f"[bold]{m.id}[/bold]  {m.kind}  {m.architecture or ''}  precision {manifest.precision}")
    out.print(f"source: {m.source.type} {m.source.name} (sha256 {m.source.sha256[:12]}…)")
    out.print(f"bundle: {root}  schema v{manifest.schema_version}, ingot {manifest.ingot_version}")
    for note in manifest.notes:  # what the build could not do (e.g. "no LLM plan: ...")
        out.print(f"[yellow]note:[/yellow] {note}")
    if manifest.llm:
        for line in llm_limits(manifest.llm):
            out.print(line)
    if manifest.quantization:
        quantization(manifest.quantization, manifest.targets.values())
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
    for t in manifest.targets.values():
        if t.tensorrt is not None:
            out.print(tensorrt_line(t.name, t.tensorrt), soft_wrap=True)


def tensorrt_line(name: str, info) -> str:
    """What an sm plan needs of the machine that loads it, and what it embeds."""
    loads = "sm_80 and newer" if info.hardware_compatibility == "ampere-plus" else "that arch only"
    parts = [f"{name}: TensorRT {info.version}, built on compute {info.compute_capability} (loads on {loads})",
             f"optimization level {info.builder_optimization_level}"]
    if info.weights_stripped:
        parts.append(f"weights stripped (refit from {info.refit_source})")
    if info.timing_cache_sha256:
        parts.append(f"timing cache {info.timing_cache_sha256[:12]}…")
    if info.plugins:
        parts.append(f"{len(info.plugins)} plugin kernel(s): " + ", ".join(sorted({k.kernel for k in info.plugins})))
    return "; ".join(parts)


def llm_limits(llm) -> list[str]:
    """The paged plan's limits, which `run`, `bench` and `serve` obey."""
    return [
        f"LLM plan: max_model_len {llm.max_model_len} (prompt + output tokens), max_num_seqs {llm.max_num_seqs}, "
        f"max_num_tokens {llm.max_num_tokens} a step",
        f"  KV cache: blocks of {llm.kv_block_size} tokens, {_bytes(llm.kv_bytes_per_token)} per token "
        f"({llm.kv_dtype}, {llm.num_layers} layers x {llm.num_kv_heads} kv heads x {llm.head_dim})",
        *([f"  sliding window: {len(llm.sliding_layers)} of {llm.num_layers} layers attend the last "
           f"{llm.sliding_window} tokens"] if llm.sliding_window else []),
        *([f"  rope scaling: {llm.rope_scaling}"] if llm.rope_scaling else []),
    ]


def quantization(q, targets) -> None:
    """The scheme, calibration and accuracy gate, then the layers kept out of it, summarised
    (`inspect --json` lists every one with its reason)."""
    block = f", block {q.block_size}" if q.block_size else ""
    block += f", {q.rounding} rounding" if q.rounding else ""
    out.print(f"quantization: {q.scheme}{block}, {q.layers_quantized} layers quantized, excluded {', '.join(q.exclude) or 'none'}")
    out.print(f"  layers: {precisions(q)}")
    if q.calibration:
        c = q.calibration
        out.print(f"  calibration: {c.source} ({c.format}, {c.samples} samples, seq {c.seq_len}, {c.method})")
    for t in targets:
        if t.verification is not None and t.verification.gates:
            out.print(f"  accuracy gate on {t.name}: {gate_line(t.verification)}")
    if q.layers_skipped:
        out.print(f"  {_layers(len(q.layers_skipped))} kept float: {_by_reason(q.layers_skipped)}; --json for the list")
    if q.layers_int8:
        out.print(f"  {_layers(len(q.layers_int8))} INT8 weight-only: {_by_reason(q.layers_int8)}; --json for the list")
    listed = set(q.layers_skipped) | set(q.layers_int8)
    for line in [*q.warnings, *q.notes]:
        if line.split(" ", 1)[0] not in listed:  # "NAME stays in float: reason": in the summary above
            out.print(f"  note: {line}")


def precisions(q) -> str:
    """What the MatMul layers became: `114 INT4 (block 128), 97 INT8 weight-only, 0 float; LM head INT8`."""
    own = "FP8" if q.scheme == "fp8" else "INT4"
    parts = [f"{q.layers_quantized} {own}" + (f" (block {q.block_size})" if q.block_size else ""),
             f"{len(q.layers_int8)} INT8 weight-only", f"{len(q.layers_skipped)} float"]
    head = next((precision for precision, names in (("INT8", q.layers_int8), (own, q.layers_quantized_names),
                                                    ("float", q.layers_skipped))
                 if any(name.startswith("lm_head") for name in names)), None)
    return ", ".join(parts) + (f"; LM head {head}" if head else "")


GATE_OPTIONS = {"max_ppl_increase_pct": "--max-ppl-increase", "min_cosine": "--min-cosine", "min_top1": "--min-top1"}


def gate_line(v) -> str:
    """`passed (--max-ppl-increase 50, --min-top1 0.5): perplexity 49.9 -> 51.8 (+3.71%), ... on DATA`."""
    gates = ", ".join(f"{GATE_OPTIONS.get(k, k)} {value:g}" for k, value in v.gates.items())
    on = f" on {v.data}" if v.data else ""
    return f"{'passed' if v.passed else 'failed'} ({gates}): {v.summary()}{on}"


def gates_run(manifest: Manifest, given: list[str]) -> list[str]:
    """A line per target whose accuracy gate ran: which gates, given or the defaults."""
    which = f"{', '.join(given)} given, the default gates off" if given else "the default gates"
    return [f"accuracy gate on {t.name} ({which}): {gate_line(t.verification)}"
            for t in manifest.targets.values() if t.verification is not None and t.verification.gates]


# What a layer kept out of a scheme is, by the start of its reason (ingot.quant's wording)
REASON_KINDS = {
    "attention key/value projection": "k/v projections",
    "massive activations": "massive activations",
    "sensitive": "most sensitive",
}


def _by_reason(layers: dict[str, str]) -> str:
    """`30 k/v projections, 2 massive activations`: counts by kind of reason, most first."""
    kinds: dict[str, int] = {}
    for reason in layers.values():
        kind = next((k for start, k in REASON_KINDS.items() if reason.startswith(start)), reason.split(":")[0])
        kinds[kind] = kinds.get(kind, 0) + 1
    return ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items(), key=lambda kv: -kv[1]))


def _layers(n: int) -> str:
    return f"{n} layer{'s' if n != 1 else ''}"


def _bytes(n: int) -> str:
    return f"{n / 2**10:.1f} KiB" if n < 2**20 else f"{n / 2**20:.1f} MiB"


def checked(files) -> str:
    total = sum(f.size for f in files)
    return f"sha256: all {len(files)} files match the manifest ({total / 2**20:.1f} MiB read)"


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
    return {n: {"dtype": str(a.dtype), "shape": list(a.shape), "data": _values(a)} for n, a in outputs.items()}


def _values(a: np.ndarray) -> list:
    """Nested lists; a float16/32 value as the shortest decimal that reads back to it (0.1, not
    0.10000000149011612): numpy's str of the value, as a Python float with the same repr."""
    if a.dtype in (np.float16, np.float32):
        return a.astype(str).astype(np.float64).tolist()
    return a.tolist()


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
