"""The accuracy gate: a quantized plan against the unquantized plan, on held-out data.

Causal LMs: perplexity (and its increase) and top-1 token agreement over full windows.
Encoders: cosine similarity of every float output. Classifiers: top-1 agreement (and cosine).
A gate that fails stops the build (nothing is written) with the figures in the message, what
may make the plan more accurate, and the option values that would accept it as it is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ingot.builder.errors import VerificationError
from ingot.builder.progress import Count, no_count
from ingot.plans import Verification
from ingot.plans.manifest import summarize
from ingot.runtime.evaluate import Run, mean_cosine, token_nll, top1_agreement


@dataclass(frozen=True)
class Gates:
    max_ppl_increase: float | None = None  # percent
    min_cosine: float | None = None
    min_top1: float | None = None

    def as_dict(self) -> dict[str, float]:
        named = {"max_ppl_increase_pct": self.max_ppl_increase, "min_cosine": self.min_cosine, "min_top1": self.min_top1}
        return {k: v for k, v in named.items() if v is not None}


def measure(
    kind: str, ref: Run, quant: Run, held_out: list[dict[str, np.ndarray]], perplexity: bool, mask: str | None = None,
    count: Count = no_count,
) -> dict[str, float]:
    """Figures for `quant` against `ref`; perplexity only over full (unpadded) causal-LM windows.
    `mask` names the attention-mask input: padded token positions are left out of the figures."""
    nll_ref, nll_q, agree, cos = [], [], [], {}
    rows = [row for feeds in held_out for row in _rows(feeds)]
    for done, feeds in enumerate(rows):
        count("held-out batch", done, len(rows))
        a, b = ref(feeds), quant(feeds)
        m = feeds.get(mask) if mask else None
        for name, x in a.items():
            if np.issubdtype(x.dtype, np.floating):
                cos.setdefault(name, []).append(mean_cosine(b[name], x, m))
        if kind in ("causal-lm", "classifier"):
            logits = "logits" if "logits" in a else next(iter(a))
            agree.append(top1_agreement(b[logits], a[logits], m))
        if perplexity:
            nll_ref.append(token_nll(a["logits"], feeds["input_ids"]))
            nll_q.append(token_nll(b["logits"], feeds["input_ids"]))
    metrics = {"cosine_min": min(float(np.mean(v)) for v in cos.values())}
    if agree:
        metrics["top1_agreement"] = float(np.mean(agree))
    if perplexity:
        p_ref = float(np.exp(np.concatenate([n.ravel() for n in nll_ref]).mean()))
        p_q = float(np.exp(np.concatenate([n.ravel() for n in nll_q]).mean()))
        metrics |= {"perplexity_ref": p_ref, "perplexity": p_q, "ppl_increase_pct": 100.0 * (p_q / p_ref - 1.0)}
    return metrics


def _rows(feeds: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    """A held-out batch one row at a time: a row's logits and their float64 figures are what
    the gate holds at once (Gemma 3's 262,144-token vocabulary: 0.27 GB of logits for 256
    tokens, where 8 rows of float64 cosine products took over 13 GB)."""
    batch = {len(v) for v in feeds.values() if np.ndim(v)}
    if len(batch) != 1 or batch == {1}:
        return [feeds]
    return [{k: v[i:i + 1] if np.ndim(v) else v for k, v in feeds.items()} for i in range(batch.pop())]


def failures(metrics: dict[str, float], gates: Gates) -> list[str]:
    out = []
    if gates.max_ppl_increase is not None and "ppl_increase_pct" in metrics:
        if metrics["ppl_increase_pct"] > gates.max_ppl_increase:
            out.append(
                f"perplexity +{metrics['ppl_increase_pct']:.2f}% > --max-ppl-increase {gates.max_ppl_increase:g}"
            )
    if gates.min_cosine is not None and metrics["cosine_min"] < gates.min_cosine:
        out.append(f"cosine {metrics['cosine_min']:.4f} < --min-cosine {gates.min_cosine:g}")
    if gates.min_top1 is not None and "top1_agreement" in metrics and metrics["top1_agreement"] < gates.min_top1:
        out.append(f"top-1 agreement {metrics['top1_agreement']:.4f} < --min-top1 {gates.min_top1:g}")
    return out


def accepting(metrics: dict[str, float], gates: Gates) -> list[str]:
    """The options (given gates replace the defaults) under which these figures pass."""
    out = []
    if gates.max_ppl_increase is not None and metrics.get("ppl_increase_pct", -math.inf) > gates.max_ppl_increase:
        out.append(f"--max-ppl-increase {math.ceil(metrics['ppl_increase_pct'])}")
    if gates.min_cosine is not None and metrics["cosine_min"] < gates.min_cosine:
        out.append(f"--min-cosine {math.floor(100 * metrics['cosine_min']) / 100:g}")
    if gates.min_top1 is not None and metrics.get("top1_agreement", math.inf) < gates.min_top1:
        out.append(f"--min-top1 {math.floor(100 * metrics['top1_agreement']) / 100:g}")
    return out


def gate(
    kind: str, ref: Run, quant: Run, held_out: list[dict[str, np.ndarray]], perplexity: bool,
    gates: Gates, ran_on: str, data: str, mask: str | None = None, advice: str | None = None, count: Count = no_count,
) -> Verification:
    """The Verification of a plan that passes `gates`; VerificationError naming the options
    that would help (`advice`) or accept the plan, if it does not."""
    metrics = measure(kind, ref, quant, held_out, perplexity, mask, count)
    failed = failures(metrics, gates)
    if failed:
        better = f"for a more accurate plan try {advice}; " if advice else ""
        raise VerificationError(
            f"accuracy gate failed: {'; '.join(failed)} ({summarize(metrics)} on {data}); "
            f"{better}to accept this one, pass {' '.join(accepting(metrics, gates))}"
        )
    return Verification(
        reference="unquantized plan", ran_on=ran_on, passed=True, samples=sum(len(next(iter(f.values()))) for f in held_out),
        metrics=metrics, gates=gates.as_dict(), data=data,
    )
