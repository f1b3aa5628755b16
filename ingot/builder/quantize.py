"""The build's quantization stage: spec from options, calibration data, ingot.quant, and the
manifest record of what was done. ingot/quant knows nothing of bundles; this adapter does.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import ValidationError

from ingot.builder.accuracy import Gates, gate
from ingot.builder.calib import CalibData, load_calibration
from ingot.builder.config import BuildConfig
from ingot.builder.errors import BuildError
from ingot.builder.quiet import quiet
from ingot.builder.loaded import LoadedModel
from ingot.builder.verify import resized_example
from ingot.plans import Verification
from ingot.plans.manifest import CalibrationInfo, Quantization

# Without explicit thresholds the gate still refuses a plan that is plainly broken.
DEFAULT_GATES = Gates(max_ppl_increase=50.0, min_cosine=0.90)
# Mixed precision toward accuracy targets when --calib is given (QuantSpec.target_cosine,
# target_top1; ingot.quant.sensitivity), by model kind. Causal LMs: none. They have their
# perplexity gate, and their recipe (int4-awq: massive activations, k/v projections; FP8:
# massive activations) keeps layers float by rule: ranking hundreds of layers one pass each
# would take minutes. Others: cosine 0.995, a margin over the 0.99 for embeddings,
# because the search stops at the first count that reaches its target on rows like the
# calibration data, and users' inputs differ. all-MiniLM-L6-v2 INT4-AWQ calibrated on Romeo
# and Juliet, 14 modern sentences: target 0.99 kept 11 of 32 layers float and gave 0.9864
# (128 lines: 9 float, 0.9818); 0.995 kept 19 and gave 0.9921. Classifiers: also top-1 0.99 on
# the logits. EfficientNet-Lite0 FP8 on its 4 sample photos: at cosine 0.99 the near-tie
# `rocket` (0.42 vs 0.36) flipped in one of two calibration sets; at 0.995 (22-23 of 50
# layers float) it held in both.
# GPTQ rounding (int4-awq) is the default for causal LMs only. On the same MiniLM runs it fit
# the calibration text's distribution: 128 Romeo and Juliet lines, target 0.995, GPTQ kept 11
# layers float and gave 0.9890 on the modern sentences; round to nearest kept 19 and gave
# 0.9943 (32 lines: 0.9921 with GPTQ, 0.9940 without). SmolLM2 needs it (+16.3% perplexity
# against +32.8% without, evaluated on held-out text of the calibration's kind).
TARGETS = {
    "causal-lm": {},
    "classifier": {"target_cosine": 0.995, "target_top1": 0.99},
}
DEFAULT_TARGETS = {"target_cosine": 0.995}


def kind_defaults(kind: str, cfg: BuildConfig, calibrated: bool) -> dict[str, object]:
    """{spec field: value} a build of this model kind uses where no option says otherwise:
    GPTQ or not, and its accuracy targets (they need calibration data; none with --keep-sensitive)."""
    out: dict[str, object] = {} if cfg.gptq is not None else {"gptq": kind == "causal-lm"}
    if calibrated and not cfg.keep_sensitive:
        given = {"target_cosine": cfg.target_cosine, "target_top1": cfg.target_top1}
        out |= {k: v for k, v in TARGETS.get(kind, DEFAULT_TARGETS).items() if given[k] is None}
    return out


_NOTES = {
    "fp8": "cpu targets: ONNX Runtime dequantizes the FP8 weights at load and runs at fp32 speed; "
           "FP8 speed needs a GPU target (sm_89 or newer)",
    "int4": "cpu targets: ONNX Runtime fuses DequantizeLinear(INT4) + MatMul into MatMulNBits",
}


def quant_spec(cfg: BuildConfig):
    """The validated QuantSpec, or None for --quant none."""
    if cfg.quant == "none":
        return None
    from ingot.quant import QuantSpec

    try:
        return QuantSpec(
            scheme=cfg.quant, block_size=cfg.block_size, exclude=cfg.exclude, calib_method=cfg.calib_method,
            accuracy_level=cfg.accuracy_level, quantize_lm_head=cfg.quant_lm_head, gptq=cfg.gptq is not False,
            float_weights=cfg.float_weights, kv_float=cfg.kv_float, recipe_precision=cfg.recipe_precision,
            massive_ratio=cfg.massive_ratio or None,
            keep_sensitive=cfg.keep_sensitive, target_cosine=cfg.target_cosine or None, target_top1=cfg.target_top1 or None,
        )
    except ValidationError as e:
        raise BuildError(f"--quant {cfg.quant}: {e.errors()[0]['msg'].removeprefix('Value error, ')}") from None


@dataclass
class QuantResult:
    model: object  # the quantized onnx.ModelProto
    report: object  # ingot.quant.QuantReport
    spec: object  # ingot.quant.QuantSpec
    calib: CalibData | None

    @property
    def precision(self) -> str:
        return "fp8" if self.spec.scheme == "fp8" else "int4"

    @property
    def info(self) -> Quantization:
        r, s, c = self.report, self.spec, self.calib
        method = "max" if s.calib_method == "max" else f"percentile({s.percentile:g})"
        calibration = None
        if c is not None and s.needs_calibration:
            calibration = CalibrationInfo(
                source=c.name, sha256=c.sha256, format=c.format, samples=c.samples, seq_len=c.seq_len, method=method
            )
        notes = [_NOTES["fp8" if s.scheme == "fp8" else "int4"]]
        if s.scheme != "fp8":
            notes[0] += f", accuracy level {s.accuracy_level} ({'int8' if s.accuracy_level == 4 else 'float'} activations)"
        if r.half_weights:
            notes.append(f"{len(r.half_weights)} float weight tables stored as fp16 (a Cast to float, folded at load): "
                         f"{r.half_bytes_saved / 1e6:.1f} MB saved")
        if r.calib_cosine is not None:
            kept = sum(k.reason.startswith("sensitive:") for k in r.skipped)
            aims = [f"{name} >= {aim:g} (reached {got:.4f})" for name, aim, got in
                    (("cosine", r.target_cosine, r.calib_cosine), ("top-1", r.target_top1, r.calib_top1)) if aim is not None]
            notes.append(f"mixed precision: the {kept} most sensitive layers kept float for {' and '.join(aims)} "
                         f"on {'calibration rows kept back from the AWQ fit (where any were left)' if s.scheme == 'int4-awq' else 'the calibration data'}")
        if r.rounding == "gptq":
            notes.append(f"GPTQ rounding: damp {r.gptq_damp:g}, {'act-order' if r.gptq_act_order else 'natural order'}")
        return Quantization(
            scheme=s.scheme,
            block_size=s.block_size if s.scheme != "fp8" else None,
            exclude=s.effective_exclude,
            calibration=calibration,
            cpu_accuracy_level=s.accuracy_level if s.scheme != "fp8" else None,
            rounding=r.rounding,
            float_weights=r.float_weights,
            target_cosine=r.target_cosine,
            target_top1=r.target_top1,
            calib_cosine=r.calib_cosine,
            calib_top1=r.calib_top1,
            layers_quantized=r.layers_quantized,
            layers_skipped={k.name: k.reason for k in r.skipped},
            layers_int8={k.name: k.reason for k in r.int8},
            warnings=r.warnings,
            notes=notes,
        )

    def gate(self, reference, plan, loaded: LoadedModel, cfg: BuildConfig, ran_on: str) -> Verification | None:
        """Score the quantized plan against the float plan on held-out data (or the examples)."""
        given = Gates(cfg.max_ppl_increase, cfg.min_cosine, cfg.min_top1)
        gates = given if given.as_dict() else DEFAULT_GATES
        if self.calib is not None:
            held, data = self.calib.held_out, f"{sum(len(next(iter(f.values()))) for f in self.calib.held_out)} held-out rows of {self.calib.name}"
            ppl = loaded.kind == "causal-lm" and self.calib.format != "npz"
        elif loaded.example:
            held = [{k: v.numpy() for k, v in s.items()} for s in (loaded.example, resized_example(loaded))]
            data, ppl = "the example inputs (pass --calib for held-out data)", False
        else:
            return None
        mask = next((name for name, field in loaded.text_inputs.items() if field == "attention_mask"), None)
        return gate(loaded.kind, reference, plan, held, ppl, gates, ran_on, data, mask)


def quantize_model(model, spec, loaded: LoadedModel, cfg: BuildConfig, stage, llm=None) -> QuantResult:
    """`llm`: the LLMInfo of a paged plan, whose calibration rows are fed as prefills."""
    from ingot.quant import QuantError, quantize

    calib = None
    if cfg.calib is not None:
        with stage("load calibration data"), quiet():
            # AWQ and GPTQ fit their rows: a target search must score them on others
            calib = load_calibration(cfg.calib, loaded, cfg.calib_samples, cfg.calib_seq_len, spec.scheme == "int4-awq")
    elif spec.needs_calibration:
        raise BuildError(f"--quant {spec.scheme} needs calibration data: pass --calib FILE (.txt, .jsonl or .npz)")
    spec = spec.model_copy(update=kind_defaults(loaded.kind, cfg, calib is not None))
    feeds, check = (calib.calib, calib.check) if calib else (None, None)
    if calib and llm is not None:
        from ingot.runtime.llm.dense import paged_feeds

        feeds, check = ([call for f in part for call in paged_feeds(llm, f["input_ids"], f.get("attention_mask"))]
                        for part in (feeds, check))
    with stage(f"quantize {spec.scheme}"):
        try:
            qmodel, report = quantize(model, spec, feeds, check)
        except QuantError as e:
            raise BuildError(str(e)) from None
    return QuantResult(qmodel, report, spec, calib)


__all__ = ["DEFAULT_GATES", "DEFAULT_TARGETS", "kind_defaults", "QuantResult", "quant_spec", "quantize_model"]
