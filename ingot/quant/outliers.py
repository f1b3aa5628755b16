"""FP8 and INT4-AWQ mixed precision: layers whose input has massive activations stay in float.

Llama-style models put a few activations of enormous size (Sun et al., 2024, "Massive
Activations in Large Language Models": ~1000x the median magnitude and more) in fixed
channels of a few tokens, the attention sinks. They show in the input of a few down_proj
layers (SmolLM2-135M: |x| ~ 3000 where the median channel's mean |x| is ~0.1). There, one
per-tensor FP8 scale sized for them leaves the other tokens' values near E4M3's subnormals,
and no per-tensor scale suits both. Keeping those few layers in float (TensorRT-LLM's and
llm-awq's recipes allow per-layer exclusions) costs little size.

INT4 is weight-only, but a massive channel hurts it too: AWQ protects the channel by scaling
its weights up, and the block's one scale then crushes the other 127 weights. int4-awq applies
the same rule (round-to-nearest `int4` takes no calibration and does not), the float weights
stored fp16 (half.py) to stay within the INT4 size budget. What each rule buys on SmolLM2:
BENCHMARKS.md, Quantization.

The test is on calibration statistics: max |x| over the median of the per-channel mean |x|.
"""

from __future__ import annotations

import numpy as np

from ingot.quant.calibrate import TensorStats
from ingot.quant.layers import Layer
from ingot.quant.report import SkippedLayer


def peak_ratio(stats: TensorStats) -> float:
    """max |x| / median over channels of mean |x|: ~1-100 for ordinary activations, ~1000
    and more where massive activations live (inf for an activation that is 0 almost everywhere)."""
    typical = float(np.median(stats.channel_mean_abs))
    if typical > 0:
        return stats.absmax / typical
    return float("inf") if stats.absmax > 0 else 0.0


def keep_massive(
    layers: list[Layer], stats: dict[str, TensorStats], ratio: float | None
) -> tuple[list[Layer], list[SkippedLayer]]:
    """Split `layers` into those to quantize and those to leave in float because their input's
    peak ratio is at least `ratio` (None: quantize all)."""
    if ratio is None:
        return layers, []
    quantize, skipped = [], []
    for layer in layers:
        st = stats[layer.activation]
        r = peak_ratio(st)
        if r < ratio or not np.isfinite(st.absmax):  # no finite range: the pass's own concern
            quantize.append(layer)
            continue
        reason = (
            f"massive activations in its input: max |x| {st.absmax:.4g} is {r:.0f}x the median channel's "
            f"mean |x| (limit {ratio:g}x)"
        )
        skipped.append(SkippedLayer(name=layer.name, reason=reason, warn=True))
    return quantize, skipped
