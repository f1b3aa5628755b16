"""Model families side by side, in one run: each bundle on the same serving workload (N requests of
P prompt tokens of real Shakespeare, in its own tokenizer, G greedy output tokens, EOS ignored)
at each concurrency, and its perplexity on a held-out text.

    .venv/bin/python scripts/bench_families.py smol=q/int4 gemma=gemma3-int4 --held-out q/held_out.txt \\
        [--concurrency 1,16] [--rounds 3] [--num-requests 32 --prompt-len 128 --output-len 64]

The bundles run in turn within each round (never at once), so a slow minute on this shared machine
hits one round of each, and each round's ratios are taken between runs minutes apart at most.
Prints one JSON line per run and per perplexity, then a table of medians over the rounds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from bench_llm import ingot_run  # noqa: E402
from bench_llm_peers import parse_concurrency  # noqa: E402
from peers import workload  # noqa: E402


def bundle_tokenizer(bundle: Path):
    """The bundle's own tokenizer, called as `workload` calls a transformers one."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(bundle / "tokenizer" / "tokenizer.json"))
    return lambda text, add_special_tokens=False: {"input_ids": tok.encode(text, add_special_tokens=add_special_tokens).ids}


def perplexity(bundle: Path, text: Path, window: int) -> dict:
    proc = subprocess.run([sys.executable, "-m", "ingot.cli.app", "eval", str(bundle), "-f", str(text), "--window",
                           str(window), "--json"], capture_output=True, text=True, check=True)
    return json.loads(proc.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundles", nargs="+", help="NAME=BUNDLE, one per model")
    ap.add_argument("--held-out", type=Path, required=True, help="text for perplexity (neither calibration nor tuning)")
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--concurrency", default="1,16", help="comma-separated, e.g. 1,16")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--num-requests", type=int, default=32)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    args.concurrency = parse_concurrency([args.concurrency]) or ap.error("--concurrency: positive integers, e.g. 1,16")
    models = dict(b.split("=", 1) for b in args.bundles)
    prompts = {name: workload(args.num_requests, args.prompt_len, tok=bundle_tokenizer(Path(b)))
               for name, b in models.items()}
    rows: dict[tuple[str, int], list[dict]] = {}
    for r in range(args.rounds):
        for name, bundle in models.items():
            for c in args.concurrency:
                row = ingot_run(Path(bundle), prompts[name], args.output_len, c, None, args.threads)
                print(json.dumps({"round": r, "model": name, **row}), flush=True)
                rows.setdefault((name, c), []).append(row)
    ppl = {}
    for name, bundle in models.items():
        ppl[name] = perplexity(Path(bundle), args.held_out, args.window)
        print(json.dumps({"model": name, "perplexity": ppl[name]}), flush=True)
    print("\n| model | bundle | perplexity | " + " | ".join(f"C={c} tok/s | C={c} TTFT p50" for c in args.concurrency) + " |")
    print("|---|---|---|" + "---|---|" * len(args.concurrency))
    for name, bundle in models.items():
        cells = []
        for c in args.concurrency:
            runs = rows[(name, c)]
            cells += [f"{statistics.median(x['output_tokens_per_s'] for x in runs):.1f}",
                      f"{statistics.median(x['ttft_p50_s'] for x in runs):.3f} s"]
        print(f"| {name} | {bundle} | {ppl[name]['perplexity']:.2f} | " + " | ".join(cells) + " |")
    first = next(iter(models))
    for name in list(models)[1:]:
        for c in args.concurrency:
            ratios = [a["output_tokens_per_s"] / b["output_tokens_per_s"] for a, b in zip(rows[(name, c)], rows[(first, c)])]
            print(f"{name} / {first} tok/s at C={c}: median {statistics.median(ratios):.2f} over rounds "
                  f"{', '.join(f'{x:.2f}' for x in ratios)}")


if __name__ == "__main__":
    main()
