"""`ingot build`: load → export → clean → (quantize) → compile per target → verify → write.

Each stage is a small function with one owner of its artifact; this module only chains
them. Nothing reaches the output folder until every stage, the accuracy gate included,
has passed.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from ingot import __version__
from ingot.builder.config import BuildConfig
from ingot.builder.cpu import compile_cpu, ort_runner
from ingot.builder.errors import BuildError
from ingot.builder.export import export_onnx
from ingot.builder.graph import apply_dim_ranges, cleanup, io_specs
from ingot.builder.progress import Count, Stage, no_progress
from ingot.builder import causal_lm as paged
from ingot.builder.quantize import QuantResult, quant_spec, quantize_model, require_calibration
from ingot.builder.quiet import quiet
from ingot.builder.loaded import LoadedModel
from ingot.builder.sources import load_source
from ingot.builder.trt import (check_options, check_paged_options, check_tensorrt_target, compile_tensorrt,
                               resolve_auto, sm_graph)
from ingot.builder.verify import verify_outputs
from ingot.plans import SCHEMA_VERSION, BundleWriter, Manifest, ModelInfo, Target, TargetName, TokenizerInfo, detect_host
from ingot.plans.llm import CPU_LOWERING, LLMInfo
from ingot.runtime.llm.dense import dense_runner

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


@dataclass
class _Graphs:
    """The float graph (the reference) and the one compiled into plans (quantized or not)."""

    float_model: object
    plan_model: object
    quant: QuantResult | None
    llm: LLMInfo | None = None  # set for paged causal-LM plans
    contract: object = None  # a paged plan's export before its cpu lowering (what sm targets compile)

    def dense(self, run):
        """`run` over a plan as the source model's interface: a paged plan as a dense causal LM."""
        return run if self.llm is None else dense_runner(run, self.llm)


def build(cfg: BuildConfig, stage: Stage = no_progress) -> Manifest:
    """Build `cfg.source` into the bundle at `cfg.output`; returns the written manifest."""
    host = detect_host()
    parsed = [_parse_target(resolve_auto(t, host), host.cpu) for t in cfg.targets]
    targets = list({t.name: t for t in parsed}.values())  # auto may name a target given too
    spec = quant_spec(cfg)  # a bad --block-size fails before any work
    require_calibration(spec, cfg)
    check_options(targets, cfg.tensorrt_options(), cfg.quant)
    for t in targets:
        if t.device == "cuda":
            check_tensorrt_target(t)
    writer = BundleWriter(cfg.output, overwrite=cfg.overwrite)  # refuses a non-bundle folder up front
    with stage("load source"), quiet():
        loaded = load_source(cfg.source, cfg.name)
        loaded.dims = apply_dim_ranges(loaded.dims, cfg.dims)
    writer.check_model(_model_info(loaded))  # another model's bundle at --output: refused before export
    hf_model = paged.paged_source(loaded, cfg, targets)
    if hf_model is not None:
        check_paged_options(targets, cfg.tensorrt_options())
    notes = [n for n in [paged.unpaged_note(loaded, cfg)] if n is not None and hf_model is None]
    with stage("export to ONNX"):
        model = export_onnx(loaded, cfg.opset) if hf_model is None else paged.export(hf_model, cfg)
    llm = loaded.llm if hf_model is None else paged.info(hf_model, cfg, loaded.tokenizer)
    contract = model if hf_model is not None and any(t.device == "cuda" for t in targets) else None
    if hf_model is not None:
        with stage("lower attention for cpu"):
            model = paged.lower(model)
    with stage("clean graph"), quiet():
        model = cleanup(model)
    inputs, outputs = io_specs(model, loaded.dims) if llm is None else paged.dense_specs(loaded, llm)
    graphs = _Graphs(model, model, None, llm, contract)
    if spec is not None:
        quant = quantize_model(model, spec, loaded, cfg, stage, llm)
        graphs = _Graphs(model, quant.model, quant, llm, contract)
    with writer:
        built = {}
        for t in targets:
            with stage(f"compile {t.name}"):
                built[t.name] = _compile(graphs, t, writer, cfg, inputs)
            if t.device == "cpu":
                with stage(f"verify {t.name}") as report:
                    why = _not_verified(cfg, graphs, loaded)
                    if why:
                        report.skip(why)
                    else:
                        built[t.name] = _verify(built[t.name], writer, loaded, graphs, cfg, host.cpu, report.update)
        manifest = Manifest(
            schema_version=SCHEMA_VERSION,
            ingot_version=__version__,
            model=_model_info(loaded),
            inputs=inputs,
            outputs=outputs,
            precision=graphs.quant.precision if graphs.quant else "fp32",
            quantization=graphs.quant.info if graphs.quant else None,
            tokenizer=_save_tokenizer(loaded, writer),
            llm=llm,
            targets=built,
            notes=notes,
        )
        with stage("write bundle"):
            return writer.commit(manifest)


def _model_info(loaded: LoadedModel) -> ModelInfo:
    return ModelInfo(id=loaded.model_id, kind=loaded.kind, architecture=loaded.architecture, source=loaded.source)


def _parse_target(text: str, host_cpu: str) -> TargetName:
    try:
        return TargetName.parse(text, host_cpu.removeprefix("cpu-"))
    except ValueError as e:
        raise BuildError(str(e)) from None


def _compile(graphs: _Graphs, target: TargetName, writer: BundleWriter, cfg: BuildConfig, inputs) -> Target:
    if target.device == "cpu":
        config = graphs.quant.report.session_config if graphs.quant else {}
        # ORT's RotaryEmbedding wants table rows for every packed token of a call, not only for every position
        max_positions = max(graphs.llm.max_model_len, graphs.llm.max_num_tokens) if graphs.llm else None
        built = compile_cpu(graphs.plan_model, target, writer, cfg.opset, config, max_positions)
        if graphs.llm is None:
            return built
        return built.model_copy(update={"build_options": {**built.build_options, "attention": CPU_LOWERING}})
    # a paged LLM: its sm graph is the plan graph with the attention as the TensorRT plugin (ingot.builder.trt)
    graph = sm_graph(graphs.plan_model, inputs, graphs.contract, graphs.llm)
    return compile_tensorrt(graph, target, writer, cfg.tensorrt_options())


def _not_verified(cfg: BuildConfig, graphs: _Graphs, loaded: LoadedModel) -> str | None:
    """Why a cpu target is not compared with anything, or None when it is."""
    if not cfg.verify:
        return "--no-verify"
    if graphs.quant is None and loaded.module is None:
        what = "an .onnx source" if str(cfg.source).endswith(".onnx") else "a bundle source"
        return f"{what} has no torch model to compare with"
    return None


def _verify(
    target: Target, writer: BundleWriter, loaded: LoadedModel, graphs: _Graphs, cfg: BuildConfig, ran_on: str,
    count: Count,
) -> Target:
    plan_run = ort_runner(str(writer.path(target.entrypoint)), target.session_config)
    float_run = plan_run if graphs.quant is None else ort_runner(graphs.float_model.SerializeToString(), {})
    plan = graphs.dense(plan_run)
    mask = "attention_mask" if graphs.llm is not None and "attention_mask" in loaded.example else None
    if graphs.llm is not None and loaded.module is not None:  # the paged contract (past read from the cache) against torch
        paged.check_paged(float_run, loaded.module.model, graphs.llm, cfg.atol, cfg.rtol)
    if graphs.quant is None:  # loaded.module is set: _not_verified
        verification = verify_outputs(plan, loaded, cfg.atol, cfg.rtol, ran_on, mask=mask)
        return target.model_copy(update={"verification": verification})
    reference = graphs.dense(float_run)
    if loaded.module is not None:  # the float export must match torch before it is a reference
        verify_outputs(reference, loaded, cfg.atol, cfg.rtol, ran_on, mask=mask)
    verification = graphs.quant.gate(reference, plan, loaded, cfg, ran_on, count)
    return target.model_copy(update={"verification": verification})


def _save_tokenizer(loaded: LoadedModel, writer: BundleWriter) -> TokenizerInfo | None:
    """The tokenizer as plain JSON files (tokenizer.json is what the runtime loads)."""
    tok = loaded.tokenizer
    if tok is None or not loaded.text_inputs:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        folder = loaded.tokenizer_files or Path(tmp)
        if loaded.tokenizer_files is None:
            tok.save_pretrained(tmp)
        saved = [f for f in TOKENIZER_FILES if (folder / f).is_file()]
        if "tokenizer.json" not in saved:
            return None  # a slow (Python) tokenizer only; --text needs tokenizer.json
        for f in saved:
            writer.path(f"tokenizer/{f}").write_bytes((folder / f).read_bytes())
    limit = tok.model_max_length if 0 < (tok.model_max_length or 0) < 1_000_000 else None
    return TokenizerInfo(
        files=[writer.entry(f"tokenizer/{f}") for f in saved],
        pad_token_id=tok.pad_token_id,
        model_max_length=limit,
        input_map=loaded.text_inputs,
    )
