"""`ingot build | run | serve | inspect | merge`: parse options, call one function, render.

Commands translate and delegate; errors become exit codes in cli/errors.py.
"""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from ingot import __version__
from ingot.cli import render
from ingot.cli.bench import KV_DEFAULT, KV_NOT_COVERED, bench
from ingot.cli.errors import run_guarded, split_debug
from ingot.cli.help import SectionedCommand

app = typer.Typer(
    name="ingot",
    help="Compile models ahead of time into plan bundles, and run them.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # click's plain help: whole flag names at 80 columns, flags without a type, copyable text
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        print(__version__)
        raise typer.Exit()


@app.callback()
def global_options(
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the ingot version and exit.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show the traceback of an error instead of one line (accepted anywhere on the command line; or INGOT_DEBUG=1).")] = False,
) -> None:
    # main() takes --debug out of argv (split_debug) so that it works after a command too;
    # it is declared here so that `ingot --help` lists it.
    pass


class Quant(str, Enum):
    none = "none"
    fp8 = "fp8"
    int4 = "int4"
    int4_rtn = "int4-rtn"
    int4_awq = "int4-awq"


class HardwareCompatibility(str, Enum):
    none = "none"
    ampere_plus = "ampere-plus"


JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output on stdout.")]


@app.command()
def build(
    ctx: typer.Context,
    source: Annotated[str, typer.Argument(help="HF model folder, .gguf or .onnx file, or module:function.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Bundle folder to write (or add a target to).")],
    target: Annotated[list[str], typer.Option("--target", "-t", metavar="<str>", help="cpu (default), cpu-x86_64, sm_90, ..., or auto (this machine's GPU) (repeatable).")] = [],  # noqa: B006
    name: Annotated[str | None, typer.Option(help="Model id recorded in the manifest.")] = None,
    verify: Annotated[bool, typer.Option("--verify/--no-verify", help="Compare the plan with the source model.")] = True,
    atol: Annotated[float, typer.Option(help="Verification: absolute tolerance.")] = 1e-4,
    rtol: Annotated[float, typer.Option(help="Verification: tolerance relative to max |reference|.")] = 1e-3,
    opset: Annotated[int, typer.Option(help="ONNX opset of the export.")] = 21,
    dim: Annotated[list[str], typer.Option("--dim", metavar="<str>", help="Range of a dynamic dim: NAME=MIN:MAX (repeatable).")] = [],  # noqa: B006
    overwrite: Annotated[bool, typer.Option(help="Replace a bundle of a different model at --output.")] = False,
    quant: Annotated[Quant, typer.Option(help="Quantize weights (and FP8 activations) as ONNX Q/DQ. int4 on a causal LM: AWQ + GPTQ, calibrated on --calib or a built-in text; int4-rtn: round to nearest, no calibration.")] = Quant.none,
    block_size: Annotated[int | None, typer.Option(help="INT4: weights per scale along the input dim (power of 2 >= 16; default 32 for --quant int4-rtn on causal LMs, else 128).", show_default=False)] = None,
    calib: Annotated[Path | None, typer.Option(help="Calibration data: .txt/.jsonl texts, or .npz of named inputs.")] = None,
    calib_samples: Annotated[int, typer.Option(help="Calibration samples (windows or rows).")] = 32,
    calib_seq_len: Annotated[int, typer.Option(help="Tokens per calibration window (text).")] = 256,
    calib_method: Annotated[str, typer.Option(help="FP8 activation range: max or percentile.")] = "max",
    exclude: Annotated[list[str], typer.Option("--exclude", metavar="<str>", help="Keep layers matching this pattern in float (repeatable).")] = [],  # noqa: B006
    accuracy_level: Annotated[int, typer.Option(help="INT4 on CPU: MatMulNBits activation accuracy (4 = int8, 0 = fp32).")] = 4,
    quant_lm_head: Annotated[bool, typer.Option("--quant-lm-head", help="Quantize the LM head too (kept float by default): INT4, as --lm-head-precision int4.")] = False,
    lm_head_precision: Annotated[str | None, typer.Option(help="int4 and int4-awq: the LM head as float, int4 (block 32) or int8 (weight-only, per output channel, as llama.cpp's Q8_0 output tensor; the default of int4 on causal LMs, else float).", show_default=False)] = None,
    massive_ratio: Annotated[float | None, typer.Option(help="FP8 and int4-awq: keep a layer out of FP8/INT4 when its input's max |x| is this many times the median channel's mean |x| (0: never; default 100, and 1000 for int4 on causal LMs).", show_default=False)] = None,
    kv_float: Annotated[bool | None, typer.Option("--kv-float/--no-kv-float", help="int4 and int4-awq: keep the attention key/value projections (*k_proj, *v_proj) out of INT4 (default: int4-awq, and int4 on causal LMs).", show_default=False)] = None,
    recipe_precision: Annotated[str | None, typer.Option(help="int4 and int4-awq: the layers kept out of INT4 (k/v projections; int4-awq: massive activations): float, or int8 (weight-only, per output channel: smaller and faster, less accurate; the default of int4 on causal LMs).", show_default=False)] = None,
    keep_sensitive: Annotated[int, typer.Option(help="Keep the N layers whose lone quantization (INT4: round to nearest) moves the output most on the calibration data in float; one run per layer.")] = 0,
    target_cosine: Annotated[float | None, typer.Option(help="Keep the fewest most sensitive layers in float so every output keeps this cosine to the float model on the calibration data (default with --calib: 0.995, causal LMs none: their recipe keeps layers float by rule; 0: off).")] = None,
    target_top1: Annotated[float | None, typer.Option(help="The same for the top-1 agreement of the logits where the float model is not near a tie (default with --calib: 0.99 for classifiers; 0: off).")] = None,
    gptq: Annotated[bool | None, typer.Option("--gptq/--no-gptq", help="int4-awq: GPTQ error-compensating rounding, or round-to-nearest (default: GPTQ for causal LMs, nearest for others).")] = None,
    float_weights: Annotated[str | None, typer.Option(help="Quantized plans: store the weights kept in float (embeddings, LM head, float layers) as fp16 or fp32 (default: fp16 for INT4, fp32 for FP8).")] = None,
    max_ppl_increase: Annotated[float | None, typer.Option(help="Gate: fail above this perplexity increase (%). Any gate given replaces the defaults (causal LMs: +50% and top-1 0.5 on text; others: cosine 0.9).")] = None,
    min_cosine: Annotated[float | None, typer.Option(help="Gate: fail below this cosine similarity.")] = None,
    min_top1: Annotated[float | None, typer.Option(help="Gate: fail below this top-1 agreement (causal LMs: of the next token).")] = None,
    layout: Annotated[str, typer.Option(help="Causal LMs: paged (generation plan, default) or dense (logits of every position).")] = "auto",
    max_num_tokens: Annotated[int, typer.Option(help="Paged LLM: tokens per step (the token budget).")] = 2048,
    max_num_seqs: Annotated[int, typer.Option(help="Paged LLM: sequences per step.")] = 32,
    max_model_len: Annotated[int | None, typer.Option(help="Paged LLM: prompt + output tokens (default min(model, 2048)).")] = None,
    kv_block_size: Annotated[int, typer.Option(help="Paged LLM: tokens per KV-cache block.")] = 16,
    builder_optimization_level: Annotated[int, typer.Option(help="sm targets: TensorRT's builder optimization level, 0 (fastest build) to 5 (longest tactic search).")] = 3,
    hardware_compatibility_level: Annotated[HardwareCompatibility, typer.Option(help="sm targets: none (the plan loads on its own arch) or ampere-plus (on sm_80 and newer; slower kernels, no FP8).")] = HardwareCompatibility.none,
    strip_weights: Annotated[bool, typer.Option("--strip-weights", help="sm targets: a plan without its weights, refitted at load from the ONNX the bundle keeps beside it.")] = False,
    timing_cache: Annotated[Path | None, typer.Option(help="sm targets: a folder of TensorRT timing caches (one file per arch and TensorRT version), read before the build and written back after it.", show_default=False)] = None,
    json_out: JsonOpt = False,
) -> None:
    """Build SOURCE into a plan bundle. Atomic: a failed build leaves --output as it was."""
    from ingot.builder.config import build_config
    from ingot.builder.pipeline import build as run_build
    from ingot.cli.progress import Timings

    timed = Timings()
    cfg = build_config(
        source=source, output=output, targets=target or ["cpu"], name=name, verify=verify,
        atol=atol, rtol=rtol, opset=opset, dims=_parse_dims(dim), overwrite=overwrite,
        quant=quant.value, block_size=block_size, calib=calib, calib_samples=calib_samples,
        calib_seq_len=calib_seq_len, calib_method=calib_method, exclude=exclude, accuracy_level=accuracy_level,
        quant_lm_head=quant_lm_head, lm_head_precision=lm_head_precision, gptq=gptq, float_weights=float_weights, kv_float=kv_float,
        recipe_precision=recipe_precision,
        massive_ratio=massive_ratio, keep_sensitive=keep_sensitive, target_cosine=target_cosine, target_top1=target_top1,
        max_ppl_increase=max_ppl_increase, min_cosine=min_cosine, min_top1=min_top1, layout=layout,
        max_num_tokens=max_num_tokens, max_num_seqs=max_num_seqs, max_model_len=max_model_len,
        kv_block_size=kv_block_size, builder_optimization_level=builder_optimization_level,
        hardware_compatibility_level=hardware_compatibility_level.value, strip_weights=strip_weights,
        timing_cache=timing_cache,
    )
    manifest = run_build(cfg, timed)
    for note in manifest.notes:  # what the build could not do: said on stderr, kept in the manifest
        print(f"warning: {note}", file=sys.stderr, flush=True)
    given = _given(ctx, ("max_ppl_increase", "min_cosine", "min_top1"))
    for line in render.gates_run(manifest, given):  # which gates ran: given ones replace the defaults
        render.err.print(line, soft_wrap=True)
    if json_out:
        from ingot.cli.summary import StageTime, build_summary

        times = [StageTime(stage=name, seconds=s, skipped=why) for name, s, why in timed.stages]
        render.print_json(build_summary(str(output), manifest, times, timed.total()).model_dump(mode="json"))
    else:
        render.out.print(f"bundle {output}: {manifest.model.id}, targets {', '.join(manifest.targets)}")


GENERATION_OPTIONS = ("max_tokens", "temperature", "top_p", "top_k", "seed", "stop", "ignore_eos", "stream", "chat",
                      "kv_cache_memory")


@app.command(cls=SectionedCommand)
def run(
    ctx: typer.Context,
    bundle: Annotated[Path, typer.Argument(help="Bundle folder.")],
    text: Annotated[list[str], typer.Option("--text", metavar="<str>", help="Input text (repeatable): one batch row each.")] = [],  # noqa: B006
    input: Annotated[list[str], typer.Option("--input", "-i", metavar="<str>", help="NAME=FILE.npy (repeatable).")] = [],  # noqa: B006
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Save outputs to OUT.npz.")] = None,
    target: Annotated[str | None, typer.Option(help="Run this target instead of the automatic choice.")] = None,
    prompt: Annotated[list[str], typer.Option("--prompt", "-p", metavar="<str>", help="LLM bundles: generate from this prompt (repeatable).", rich_help_panel="Generation")] = [],  # noqa: B006
    prompts_file: Annotated[Path | None, typer.Option(help="LLM: one prompt per line, all run concurrently.", rich_help_panel="Generation")] = None,
    max_tokens: Annotated[int, typer.Option(help="LLM: output tokens at most.", rich_help_panel="Generation")] = 64,
    temperature: Annotated[float, typer.Option(help="LLM: 0 = greedy.", rich_help_panel="Generation")] = 0.0,
    top_p: Annotated[float, typer.Option(help="LLM: nucleus mass (1 = off).", rich_help_panel="Generation")] = 1.0,
    top_k: Annotated[int, typer.Option(help="LLM: keep the k most likely tokens (0 = off).", rich_help_panel="Generation")] = 0,
    seed: Annotated[int | None, typer.Option(help="LLM: per-request sampling seed.", rich_help_panel="Generation")] = None,
    stop: Annotated[list[str], typer.Option("--stop", metavar="<str>", help="LLM: stop string (repeatable).", rich_help_panel="Generation")] = [],  # noqa: B006
    ignore_eos: Annotated[bool, typer.Option(help="LLM: keep generating past EOS.", rich_help_panel="Generation")] = False,
    stream: Annotated[bool, typer.Option(help="LLM: print tokens as they come.", rich_help_panel="Generation")] = False,
    chat: Annotated[bool, typer.Option(help="LLM: wrap each prompt in the tokenizer's chat template.", rich_help_panel="Generation")] = False,
    kv_cache_memory: Annotated[str | None, typer.Option(help="LLM: the paged KV cache, bytes (2e9, 512MiB) or a fraction of available RAM (0.5; on an sm target, of free GPU memory). Default: what these prompts and --max-tokens need, at least one max_model_len sequence. " + KV_NOT_COVERED, rich_help_panel="Generation", show_default=False)] = None,
    json_out: JsonOpt = False,
) -> None:
    """Run a bundle on this machine; LLM bundles generate from --prompt. Checksums are checked first."""
    from ingot.runtime import InputError, load
    from ingot.runtime.inputs import load_npy

    if prompt or prompts_file is not None:
        from ingot.cli import generate

        if text or input:
            raise InputError("--prompt/--prompts-file generate text; --text and --input are for other bundles")
        if output is not None:
            raise InputError("--output saves tensor outputs (--text/--input runs); generated text goes to "
                             "stdout (--json: one object per request, with its token ids)")
        params = generate.sampling_params(max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
                                          seed=seed, stop=tuple(stop), ignore_eos=ignore_eos)
        generate.generate(bundle, generate.read_prompts(prompt, prompts_file), params, chat=chat, stream=stream,
                          json_out=json_out, kv_cache_memory=generate.parse_memory(kv_cache_memory), target=target)
        return
    given = _given(ctx, GENERATION_OPTIONS)
    if given:
        raise InputError(f"{', '.join(given)}: generation options, only with --prompt on an LLM bundle")
    if not text and not input:
        raise InputError(_no_input(bundle))
    model = load(bundle, target)
    feeds = model.encode(text) if text else {}
    feeds.update(load_npy(spec) for spec in input)
    outputs = model.run(feeds)
    if output is not None:
        render.save_npz(output, outputs)
    if json_out:
        render.print_json({"model": model.manifest.model.id, "target": model.target.name, "outputs": render.outputs_json(outputs)})
    elif output is None:
        render.outputs_text(outputs, model.manifest.model.kind)
    else:
        render.out.print(f"saved {', '.join(outputs)} to {output}")


class ControlMode(str, Enum):
    none = "none"
    explicit = "explicit"


@app.command()
def serve(
    path: Annotated[Path, typer.Argument(help="A model repository (REPO/<model>/<version>/) or a single bundle.")],
    host: Annotated[str, typer.Option(help="Address to bind (127.0.0.1: this machine only).")] = "127.0.0.1",
    grpc_port: Annotated[int, typer.Option(help="KServe v2 / Triton gRPC port (0: any free port).")] = 8001,
    http_port: Annotated[int, typer.Option(help="HTTP port: the OpenAI-compatible API and KServe v2 REST (0: any free port).")] = 8000,
    metrics_port: Annotated[int, typer.Option(help="Prometheus /metrics port (0: any free port).")] = 8002,
    model_control_mode: Annotated[ControlMode, typer.Option(help="none: load every model at start; explicit: --load-model, then the load/unload RPCs.")] = ControlMode.none,
    load_model: Annotated[list[str], typer.Option("--load-model", metavar="<str>", help="explicit mode: a model to load at start (repeatable).")] = [],  # noqa: B006
    model_name: Annotated[str | None, typer.Option(help="A single bundle's model name (default: its folder's name).")] = None,
    grace_period: Annotated[float, typer.Option(help="Seconds in-flight requests may drain after SIGTERM/SIGINT.")] = 30.0,
    max_message_bytes: Annotated[int, typer.Option(help="Largest gRPC message accepted.")] = 64 << 20,
    target: Annotated[str | None, typer.Option(help="Run this target instead of the automatic choice.")] = None,
    threads: Annotated[int | None, typer.Option(help="Intra-op threads of each model (default: ONNX Runtime's).")] = None,
    kv_cache_memory: Annotated[str | None, typer.Option(help="LLM: the paged KV cache of each model, bytes (2e9, 512MiB) or a fraction of available RAM (0.5; on an sm target, of free GPU memory). Default: " + KV_DEFAULT + " " + KV_NOT_COVERED, show_default=False)] = None,
    max_num_tokens: Annotated[int | None, typer.Option(help="LLM: token budget of a step (default 768, at most the plan's).")] = None,
) -> None:
    """Serve a model repository over gRPC (KServe v2) and HTTP (OpenAI). Prints READY when every model is loaded."""
    from ingot.runtime.llm.kv_cache import parse_memory
    from ingot.serve.served import RuntimeOptions
    from ingot.serve.server import ServeOptions, run as serve_run, setup_logging

    runtime = RuntimeOptions(threads=threads, kv_cache_memory=parse_memory(kv_cache_memory),
                             max_num_tokens=max_num_tokens, target=target)
    setup_logging("--debug" in sys.argv or False)
    code = serve_run(ServeOptions(path=str(path), host=host, grpc_port=grpc_port, http_port=http_port,
                                  metrics_port=metrics_port,
                                  model_control_mode=model_control_mode.value, load_model=load_model,
                                  model_name=model_name, grace_period=grace_period,
                                  max_message_bytes=max_message_bytes, runtime=runtime))
    raise typer.Exit(code)


@app.command()
def inspect(
    bundle: Annotated[Path, typer.Argument(help="Bundle folder.")],
    check: Annotated[bool, typer.Option("--check", help="Also verify every file's sha256.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Show what a bundle holds. The model, its I/O and tokenizer, the targets and their verification."""
    from ingot.plans import open_bundle

    b = open_bundle(bundle, verify=check)
    if json_out:
        render.print_json(b.manifest.model_dump(mode="json"))
    else:
        render.manifest_table(b.manifest, b.root)
    if check:  # on stderr with --json, which keeps stdout for the manifest
        (render.err if json_out else render.out).print(render.checked(b.manifest.files()))


@app.command()
def merge(
    bundles: Annotated[list[Path], typer.Argument(help="Bundles of the same model (e.g. one per GPU arch).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Merged bundle folder.")],
    overwrite: Annotated[bool, typer.Option(help="Replace a bundle of a different model at --output.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Merge bundles of one model into one holding all their targets."""
    from ingot.plans import merge_bundles

    manifest = merge_bundles(output, bundles, overwrite=overwrite)
    if json_out:
        render.print_json({"bundle": str(output), "targets": sorted(manifest.targets)})
    else:
        render.out.print(f"bundle {output}: targets {', '.join(sorted(manifest.targets))}")


@app.command(name="eval")
def eval_(
    bundle: Annotated[Path, typer.Argument(help="Causal-LM bundle folder.")],
    text_file: Annotated[Path, typer.Option("--text-file", "-f", help="Text file to measure perplexity on.")],
    window: Annotated[int | None, typer.Option(help="Tokens per window, non-overlapping (default 512, or the bundle's limit).")] = None,
    target: Annotated[str | None, typer.Option(help="Run this target instead of the automatic choice.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Perplexity of a causal-LM bundle on a text file. Any precision, any target this machine runs."""
    from ingot.runtime import InputError, load

    if not text_file.is_file():
        raise InputError(f"--text-file: file not found: {text_file}")
    from ingot.cli.progress import bar

    model = load(bundle, target)
    with bar("perplexity windows") as count:
        result = model.perplexity(text_file.read_text(encoding="utf-8", errors="replace"), window, progress=count)
    if json_out:
        render.print_json(result.model_dump())
    else:
        render.out.print(f"perplexity {result.perplexity:.3f} over {result.tokens} tokens in {result.windows} windows")


app.command()(bench)


@app.command()
def version() -> None:
    """Print the ingot version."""
    print(__version__)


def _given(ctx: typer.Context, names: tuple[str, ...]) -> list[str]:
    """The options among `names` the user typed (not left at their defaults), as --flags."""
    sources = {n: ctx.get_parameter_source(n) for n in names}  # typer's own (vendored) click enum
    return [f"--{n.replace('_', '-')}" for n, source in sources.items() if source and source.name == "COMMANDLINE"]


def _no_input(bundle: Path) -> str:
    from ingot.plans import open_bundle

    if open_bundle(bundle, verify=False).manifest.llm is not None:
        return "no prompt: pass --prompt TEXT (or --prompts-file FILE) to generate from this LLM bundle"
    return "no inputs: pass --text (text models) or --input NAME=FILE.npy"


def _parse_dims(specs: list[str]) -> dict[str, tuple[int, int]]:
    dims = {}
    for spec in specs:
        name, _, rng = spec.partition("=")
        lo, _, hi = rng.partition(":")
        if not (name and lo.isdigit() and hi.isdigit()):
            raise typer.BadParameter(f"{spec!r}: expected NAME=MIN:MAX", param_hint="--dim")
        dims[name] = (int(lo), int(hi))
    return dims


def main(argv: list[str] | None = None) -> int:
    args, debug = split_debug(list(sys.argv[1:] if argv is None else argv))
    code = run_guarded(lambda: app(args=args, prog_name="ingot"), debug)
    raise SystemExit(code)


if __name__ == "__main__":
    main()
