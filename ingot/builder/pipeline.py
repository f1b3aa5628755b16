"""`ingot build`: load → export → clean → compile per target → verify → write the bundle.

Each stage is a small function with one owner of its artifact; this module only chains
them. Nothing reaches the output folder until every stage has passed.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

from ingot import __version__
from ingot.builder.config import BuildConfig
from ingot.builder.cpu import compile_cpu, ort_runner
from ingot.builder.export import export_onnx
from ingot.builder.quiet import quiet
from ingot.builder.graph import apply_dim_ranges, cleanup, io_specs
from ingot.builder.sources import LoadedModel, load_source
from ingot.builder.tensorrt import check_tensorrt_target, compile_tensorrt
from ingot.builder.verify import verify_outputs
from ingot.plans import SCHEMA_VERSION, BundleWriter, Manifest, ModelInfo, Target, TargetName, TokenizerInfo, detect_host

Stage = Callable[[str], AbstractContextManager]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


def _no_progress(_: str) -> AbstractContextManager:
    return contextlib.nullcontext()


def build(cfg: BuildConfig, stage: Stage = _no_progress) -> Manifest:
    """Build `cfg.source` into the bundle at `cfg.output`; returns the written manifest."""
    host = detect_host()
    targets = [_parse_target(t, host.cpu) for t in dict.fromkeys(cfg.targets)]
    for t in targets:
        if t.device == "cuda":
            check_tensorrt_target(t)
    writer = BundleWriter(cfg.output, overwrite=cfg.overwrite)  # refuses a non-bundle folder up front
    with stage("load source"), quiet():
        loaded = load_source(cfg.source, cfg.name)
        loaded.dims = apply_dim_ranges(loaded.dims, cfg.dims)
    with stage("export to ONNX"):
        model = export_onnx(loaded, cfg.opset)
    with stage("clean graph"), quiet():
        model = cleanup(model)
    inputs, outputs = io_specs(model, loaded.dims)
    with writer:
        built = {}
        for t in targets:
            with stage(f"compile {t.name}"):
                built[t.name] = _compile(model, t, writer, cfg, inputs)
            if cfg.verify and loaded.module is not None and t.device == "cpu":
                with stage(f"verify {t.name}"):
                    built[t.name] = _verify(built[t.name], writer, loaded, cfg, host.cpu)
        manifest = Manifest(
            schema_version=SCHEMA_VERSION,
            ingot_version=__version__,
            model=ModelInfo(
                id=loaded.model_id, kind=loaded.kind, architecture=loaded.architecture, source=loaded.source
            ),
            inputs=inputs,
            outputs=outputs,
            tokenizer=_save_tokenizer(loaded, writer),
            targets=built,
        )
        with stage("write bundle"):
            return writer.commit(manifest)


def _parse_target(text: str, host_cpu: str) -> TargetName:
    from ingot.builder.errors import BuildError

    try:
        return TargetName.parse(text, host_cpu.removeprefix("cpu-"))
    except ValueError as e:
        raise BuildError(str(e)) from None


def _compile(model, target: TargetName, writer: BundleWriter, cfg: BuildConfig, inputs) -> Target:
    if target.device == "cpu":
        return compile_cpu(model, target, writer, cfg.opset)
    import onnx

    with tempfile.TemporaryDirectory() as tmp:  # TensorRT's parser reads from a file
        path = Path(tmp) / "model.onnx"
        onnx.save_model(model, path, save_as_external_data=True, location="model.onnx.data")
        return compile_tensorrt(path, target, inputs, writer)


def _verify(target: Target, writer: BundleWriter, loaded: LoadedModel, cfg: BuildConfig, ran_on: str) -> Target:
    run = ort_runner(str(writer.path(target.entrypoint)), target.session_config)
    verification = verify_outputs(run, loaded, cfg.atol, cfg.rtol, ran_on)
    return target.model_copy(update={"verification": verification})


def _save_tokenizer(loaded: LoadedModel, writer: BundleWriter) -> TokenizerInfo | None:
    """The tokenizer as plain JSON files (tokenizer.json is what the runtime loads)."""
    tok = loaded.tokenizer
    if tok is None or not loaded.text_inputs:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        tok.save_pretrained(tmp)
        saved = [f for f in TOKENIZER_FILES if (Path(tmp) / f).is_file()]
        if "tokenizer.json" not in saved:
            return None  # a slow (Python) tokenizer only; --text needs tokenizer.json
        for f in saved:
            writer.path(f"tokenizer/{f}").write_bytes((Path(tmp) / f).read_bytes())
    limit = tok.model_max_length if 0 < (tok.model_max_length or 0) < 1_000_000 else None
    return TokenizerInfo(
        files=[writer.entry(f"tokenizer/{f}") for f in saved],
        pad_token_id=tok.pad_token_id,
        model_max_length=limit,
        input_map=loaded.text_inputs,
    )
