"""An fp32 bundle as a build source: quantize (or add a target) without exporting again.

    ingot build out/smollm2 --quant int4-awq --calib text.txt --output out/smollm2-int4

The bundle's CPU model is the graph; its model identity, dims and tokenizer carry over
(the tokenizer files verbatim), so the result describes the same model as a build from the
original source. Its checksums are verified first.
"""

from __future__ import annotations

import os
from pathlib import Path

from ingot.builder.errors import SourceError
from ingot.builder.loaded import LoadedModel
from ingot.builder.spec import DimSpec
from ingot.plans import BundleError, open_bundle
from ingot.plans.llm import lowering_problem


def load_bundle(root: Path) -> LoadedModel:
    try:
        bundle = open_bundle(root)
    except BundleError as e:
        raise SourceError(f"cannot use bundle {root} as a source: {e}") from None
    m = bundle.manifest
    if m.quantization is not None:
        raise SourceError(f"bundle {root} is already quantized ({m.precision}); build from an fp32 bundle or the model")
    cpu = next((t for t in m.targets.values() if t.device == "cpu"), None)
    if cpu is None:
        raise SourceError(f"bundle {root} has no cpu target to read the graph from (targets: {', '.join(m.targets)})")
    problem = lowering_problem(cpu.build_options) if m.llm is not None else None
    if problem:
        raise SourceError(f"cannot use bundle {root} as a source: {problem}; rebuild it from the original model")
    dims = {
        spec.name: {a: DimSpec(d.name, d.min, d.max) for a, d in enumerate(spec.shape) if not isinstance(d, int)}
        for spec in m.inputs
    }
    loaded = LoadedModel(
        model_id=m.model.id,
        kind=m.model.kind,
        source=m.model.source,
        example={},
        dims={k: v for k, v in dims.items() if v},
        output_names=[o.name for o in m.outputs],
        onnx_path=bundle.path(cpu.entrypoint),
        architecture=m.model.architecture,
        llm=m.llm,
    )
    if m.tokenizer is not None:
        _attach_tokenizer(loaded, bundle.root / "tokenizer", m.tokenizer.input_map)
    return loaded


def _attach_tokenizer(loaded: LoadedModel, folder: Path, input_map: dict[str, str]) -> None:
    """The HF tokenizer (for text calibration and example inputs) from the bundle's files."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from ingot.builder.hf import text_example
    from ingot.builder.quiet import quiet_transformers

    tok = quiet_transformers().AutoTokenizer.from_pretrained(folder)
    loaded.example, _ = text_example(tok, input_map)
    loaded.tokenizer, loaded.tokenizer_files, loaded.text_inputs = tok, folder, dict(input_map)
