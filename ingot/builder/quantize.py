"""The build's quantization stage: spec from options, calibration data, ingot.quant, and the
manifest record of what was done. ingot/quant knows nothing of bundles; this adapter does.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import ValidationError

from ingot.builder.accuracy import Gates, gate
from ingot.builder.calib import CalibData, builtin_calibration, gate_text_feeds, load_calibration
from ingot.builder.config import BuildConfig
from ingot.builder.errors import BuildError
from ingot.builder.loaded import LoadedModel
from ingot.builder.progress import Count, no_count
from ingot.builder.quiet import quiet
from ingot.builder.verify import resized_example
from ingot.plans import Verification
from ingot.plans.manifest import CalibrationInfo, Quantization

# Gates when no --max-ppl-increase, --min-cosine or --min-top1 is given, by model kind: lenient,
# to stop a plainly broken plan. Causal LMs are judged as they are used, on text: perplexity
# and top-1 next-token agreement (their logits' cosine says little about either); other models
# on the cosine of their outputs (and, for classifiers, top-1 agreement is reported).
DEFAULT_GATES = {"causal-lm": Gates(max_ppl_increase=50.0, min_top1=0.5)}
OTHER_GATES = Gates(max_ppl_increase=50.0, min_cosine=0.90)
# Mixed precision toward accuracy targets when --calib is given (QuantSpec.target_cosine,
# target_top1; ingot.quant.sensitivity), by model kind. Causal LMs: none; they have their
# perplexity gate, and their recipe keeps layers float by rule (ranking hundreds of layers one
# pass each would take minutes). Others: cosine 0.995, a margin over the 0.99 wanted of
# embeddings, because the search stops at the first count that reaches its target on rows
# like the calibration data and users' inputs differ; classifiers also top-1 0.99 on the
# logits, which kept near-ties in place where cosine alone did not (measured: `git show 954c8cb:BENCHMARKS.md`,
# Encoder and vision models).
TARGETS = {
    "causal-lm": {},
    "classifier": {"target_cosine": 0.995, "target_top1": 0.99},
}
DEFAULT_TARGETS = {"target_cosine": 0.995}
# GPTQ rounding (int4-awq) is the default for causal LMs only: on an encoder it fit the
# calibration text and carried worse to other sentences (`git show 954c8cb:BENCHMARKS.md`, Encoder and vision models).
# --quant int4-rtn (round to nearest, no calibration) on a causal LM: block 32, with the k/v
# projections float (QuantSpec.kv_float), passes the default gate where block 128 did not.
RTN_LM_BLOCK = 32
RTN_LM = {"block_size": RTN_LM_BLOCK, "kv_float": True}
# --quant int4 on a causal LM: the quality-first recipe. AWQ scales and GPTQ rounding for every
# layer INT4 at block 128, but the k/v projections and the layers whose input has the most
# massive activations (max |x| >= 1000x the median channel's mean |x|: SmolLM2's few extreme
# down projections) INT8 weight-only, per output channel, and an INT8 LM head, as llama.cpp keeps
# its output tensor in Q8_0. No weight a decode step reads stays fp32 (the embedding table is read
# a row a token). Calibrated on --calib or the built-in text (calib.py). SmolLM2-135M: perplexity
# +17.6% on the development text (Hamlet), +10.6% on held-out King Lear, 90.8 MB of weights read
# per decode token; int4-rtn +26.2%/+23.3% at 202.1 MB. The fewest bytes a token of the plans
# measured within +20% on the development text: every layer INT4 (85.5 MB) was +19.7% there even
# calibrated on Shakespeare; the threshold 100 instead of 1000 (36 layers INT8, 102.9 MB) +9.6%.
AWQ_LM = {"recipe_precision": "int8", "massive_ratio": 1000.0, "quantize_lm_head": True, "lm_head_precision": "int8"}


def kind_defaults(kind: str, cfg: BuildConfig, calibrated: bool) -> dict[str, object]:
    """{spec field: value} a build of this model kind uses where no option says otherwise:
    the INT4 scheme (int4 on a causal LM is AWQ + GPTQ), block size and recipe, GPTQ or not,
    and the accuracy targets (they need calibration data; none with --keep-sensitive)."""
    out: dict[str, object] = {} if cfg.gptq is not None else {"gptq": kind == "causal-lm"}
    if cfg.quant == "int4-rtn" and kind == "causal-lm":
        out |= {k: v for k, v in RTN_LM.items() if getattr(cfg, k) is None}
    if cfg.quant == "int4" and kind == "causal-lm":
        out |= {"scheme": "int4-awq"}
        if cfg.recipe_precision is None:
            out["recipe_precision"] = AWQ_LM["recipe_precision"]
        if cfg.massive_ratio is None:
            out["massive_ratio"] = AWQ_LM["massive_ratio"]
        if cfg.lm_head_precision is None and not cfg.quant_lm_head:
            out |= {k: AWQ_LM[k] for k in ("quantize_lm_head", "lm_head_precision")}
    if calibrated and not cfg.keep_sensitive:
        given = {"target_cosine": cfg.target_cosine, "target_top1": cfg.target_top1}
        out |= {k: v for k, v in TARGETS.get(kind, DEFAULT_TARGETS).items() if given[k] is None}
    return out


_NOTES = {
    "fp8": "cpu targets: ONNX Runtime dequantizes the FP8 weights at load and runs at fp32 speed; "
           "FP8 speed needs a GPU target (sm_89 or newer)",
    "int4": "cpu targets: ONNX Runtime fuses DequantizeLinear(INT4) + MatMul into MatMulNBits",
    "builtin": "--quant int4 on a causal LM is AWQ + GPTQ: calibrated on the built-in text (ingot/builder/calib_text.txt: "
               "prose and verse in English; pass --calib FILE to calibrate on your own)",
}


def quant_spec(cfg: BuildConfig):
    """The validated QuantSpec, or None for --quant none."""
    if cfg.quant == "none":
        return None
    from ingot.quant import QuantSpec

    try:
        block = {} if cfg.block_size is None else {"block_size": cfg.block_size}  # None: the kind's (kind_defaults)
        recipe = {} if cfg.recipe_precision is None else {"recipe_precision": cfg.recipe_precision}
        massive = {} if cfg.massive_ratio is None else {"massive_ratio": cfg.massive_ratio or None}  # 0: off
        return QuantSpec(
            scheme="int4" if cfg.quant == "int4-rtn" else cfg.quant, **block, **recipe, exclude=cfg.exclude, calib_method=cfg.calib_method,
            accuracy_level=cfg.accuracy_level, **_lm_head(cfg), gptq=cfg.gptq is not False,
            float_weights=cfg.float_weights, kv_float=cfg.kv_float,
            **massive,
            keep_sensitive=cfg.keep_sensitive, target_cosine=cfg.target_cosine or None, target_top1=cfg.target_top1 or None,
        )
    except ValidationError as e:
        raise BuildError(f"--quant {cfg.quant}: {e.errors()[0]['msg'].removeprefix('Value error, ')}") from None


def _lm_head(cfg: BuildConfig) -> dict:
    """--lm-head-precision (float, int4, int8), or --quant-lm-head (int4)."""
    precision = cfg.lm_head_precision or ("int4" if cfg.quant_lm_head else "float")
    if precision == "float":
        return {"quantize_lm_head": False}
    return {"quantize_lm_head": True, "lm_head_precision": precision}


@dataclass
class QuantResult:
    model: object  # the quantized onnx.ModelProto
    report: object  # ingot.quant.QuantReport
    spec: object  # ingot.quant.QuantSpec
    calib: CalibData | None
    max_len: int | None = None  # tokens a causal-LM plan takes in one sequence (its gate windows fit)

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
        if c is not None and c.builtin:
            notes.append(_NOTES["builtin"])
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
            layers_quantized_names=r.quantized,
            layers_skipped={k.name: k.reason for k in r.skipped},
            layers_int8={k.name: k.reason for k in r.int8},
            warnings=r.warnings,
            notes=notes,
        )

    def gate(
        self, reference, plan, loaded: LoadedModel, cfg: BuildConfig, ran_on: str, count: Count = no_count
    ) -> Verification | None:
        """Score the quantized plan against the float plan on held-out data: the calibration
        file's held-out rows, else (causal LMs) the built-in gate text, else the examples."""
        given = Gates(cfg.max_ppl_increase, cfg.min_cosine, cfg.min_top1)
        gates = given if given.as_dict() else DEFAULT_GATES.get(loaded.kind, OTHER_GATES)
        held, data, ppl = self._held_out(loaded, cfg)
        if not held:
            return None
        mask = next((name for name, field in loaded.text_inputs.items() if field == "attention_mask"), None)
        return gate(loaded.kind, reference, plan, held, ppl, gates, ran_on, data, mask, advice(self.spec), count)

    def _held_out(self, loaded: LoadedModel, cfg: BuildConfig) -> tuple[list[dict], str, bool]:
        """(feeds, what they are, whether perplexity is measured on them)."""
        if self.calib is not None and self.calib.held_out:  # the built-in calibration text has none
            rows = sum(len(next(iter(f.values()))) for f in self.calib.held_out)
            ppl = loaded.kind == "causal-lm" and self.calib.format != "npz"
            return self.calib.held_out, f"{rows} held-out rows of {self.calib.name}", ppl
        if loaded.kind == "causal-lm" and loaded.tokenizer is not None and loaded.text_inputs:
            seq_len = min(cfg.calib_seq_len, self.max_len or cfg.calib_seq_len)
            feeds = gate_text_feeds(loaded, seq_len)
            if feeds:
                rows = sum(len(f["input_ids"]) for f in feeds)
                return feeds, (f"{rows} windows of {seq_len} tokens of the built-in gate text (Alice's Adventures "
                               "in Wonderland, chapter I; pass --calib FILE to score your own)"), True
        if loaded.example:
            held = [{k: v.numpy() for k, v in s.items()} for s in (loaded.example, resized_example(loaded))]
            return held, "the example inputs (pass --calib for held-out data)", False
        return [], "", False


def advice(spec) -> str:
    """The options most likely to make a plan of `spec` more accurate, for a failed gate's message."""
    if spec.scheme == "int4":
        smaller = f" or --block-size {RTN_LM_BLOCK}" if spec.block_size > RTN_LM_BLOCK else ""
        return f"--quant int4-awq --calib FILE (AWQ scales, GPTQ rounding, more layers float){smaller}"
    if spec.scheme == "int4-awq" and spec.block_size > 32:
        return "--block-size 32"
    return "a lower --massive-ratio or --exclude PATTERN (more layers float)"


def require_calibration(spec, cfg: BuildConfig, calibrated: bool = False) -> None:
    """FP8, int4-awq and a sensitivity search need --calib: refused before any model is loaded
    (int4 on a causal LM, AWQ too, has the built-in text: `calibrated`)."""
    if spec is not None and spec.needs_calibration and cfg.calib is None and not calibrated:
        raise BuildError(f"--quant {cfg.quant} needs calibration data: pass --calib FILE (.txt, .jsonl or .npz)")


def quantize_model(model, spec, loaded: LoadedModel, cfg: BuildConfig, stage, llm=None) -> QuantResult:
    """`llm`: the LLMInfo of a paged plan, whose calibration rows are fed as prefills."""
    from ingot.quant import QuantError, quantize

    spec = spec.model_copy(update=kind_defaults(loaded.kind, cfg, cfg.calib is not None))
    calib = None
    if cfg.calib is not None:
        with stage("load calibration data"), quiet():
            # AWQ and GPTQ fit their rows: a target search must score them on others
            calib = load_calibration(cfg.calib, loaded, cfg.calib_samples, cfg.calib_seq_len, spec.scheme == "int4-awq")
    elif spec.needs_calibration and loaded.kind == "causal-lm" and loaded.tokenizer is not None:
        seq_len = min(cfg.calib_seq_len, _max_len(loaded, llm) or cfg.calib_seq_len)  # windows the plan takes
        with stage("load the built-in calibration text (--calib FILE: your own)"), quiet():
            calib = builtin_calibration(loaded, cfg.calib_samples, seq_len)
    require_calibration(spec, cfg, calib is not None)
    feeds, check = (calib.calib, calib.check) if calib else (None, None)
    if calib and llm is not None:
        from ingot.runtime.llm.dense import paged_feeds

        feeds, check = ([call for f in part for call in paged_feeds(llm, f["input_ids"], f.get("attention_mask"))]
                        for part in (feeds, check))
    with stage(f"quantize {spec.scheme}") as progress:
        try:
            qmodel, report = quantize(model, spec, feeds, check, progress.update)
        except QuantError as e:
            raise BuildError(str(e)) from None
    return QuantResult(qmodel, report, spec, calib, _max_len(loaded, llm))


def _max_len(loaded: LoadedModel, llm) -> int | None:
    """The longest sequence a causal-LM plan takes: the paged plan's limit, or the export's range."""
    if llm is not None:
        return llm.max_model_len
    sequence = loaded.dims.get("input_ids", {}).get(1)  # (batch, sequence)
    return sequence.max if sequence is not None else None


__all__ = ["DEFAULT_GATES", "DEFAULT_TARGETS", "OTHER_GATES", "advice", "kind_defaults", "QuantResult", "quant_spec",
           "quantize_model"]
