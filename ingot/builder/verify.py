"""Compare a built target with the source model on example inputs.

Inputs: the example, plus a variant with every dynamic dim changed (shrunk by one, or
tiled to 2), so a dim the exporter froze is caught here rather than in production.
"""

from __future__ import annotations

import numpy as np

from ingot.builder.errors import VerificationError
from ingot.builder.loaded import LoadedModel
from ingot.plans import Verification
from ingot.plans.manifest import OutputCheck


def verify_outputs(
    run, loaded: LoadedModel, atol: float, rtol: float, ran_on: str, reference: str = "torch", mask: str | None = None
) -> Verification:
    """`run(feeds) -> {name: array}` is the built target. Raise VerificationError beyond
    tolerance: max |a - b| > atol + rtol * max |b| for any output. With `mask` (an input name),
    positions where that input is 0 (padding) are not compared."""
    samples = [loaded.example, resized_example(loaded)]
    worst: dict[str, tuple[float, float]] = {}
    for sample in samples:
        expected = _torch_outputs(loaded, sample)
        got = run({k: v.numpy() for k, v in sample.items()})
        for name, ref in expected.items():
            out = got[name]
            if out.shape != ref.shape:
                raise VerificationError(f"output {name}: shape {out.shape} from the plan, {ref.shape} from {reference}")
            if mask is not None:
                valid = sample[mask].numpy().astype(bool)
                out, ref = out[valid], ref[valid]
            err = float(np.max(np.abs(out.astype(np.float64) - ref))) if ref.size else 0.0
            scale = float(np.max(np.abs(ref))) if ref.size else 0.0
            rel = err / scale if scale else err
            if err > atol + rtol * scale:
                raise VerificationError(
                    f"verification failed: output {name} differs from {reference} by {err:.3g} "
                    f"(relative {rel:.3g}; tolerance atol {atol:g} + rtol {rtol:g} x max|ref|); "
                    "pass --no-verify to build anyway"
                )
            prev = worst.get(name, (0.0, 0.0))
            worst[name] = (max(prev[0], err), max(prev[1], rel))
    checks = [OutputCheck(name=n, max_abs_err=a, max_rel_err=r) for n, (a, r) in worst.items()]
    return Verification(reference=reference, ran_on=ran_on, atol=atol, rtol=rtol, passed=True, samples=len(samples), outputs=checks)


def _torch_outputs(loaded: LoadedModel, sample: dict) -> dict[str, np.ndarray]:
    import torch
    from torch.utils._pytree import tree_flatten

    with torch.no_grad():
        out = loaded.module(**sample)
    leaves = list(out.values()) if isinstance(out, dict) else tree_flatten(out)[0]
    assert len(leaves) == len(loaded.output_names), (len(leaves), loaded.output_names)
    return {n: t.detach().to(torch.float64 if t.is_floating_point() else t.dtype).numpy() for n, t in zip(loaded.output_names, leaves)}


def resized_example(loaded: LoadedModel) -> dict:
    """The example with each dynamic dim resized within its range: shrink by one, else tile to 2."""
    import torch

    sizes: dict[str, int] = {}
    for name, axes in loaded.dims.items():
        for axis, dim in axes.items():
            n = loaded.example[name].shape[axis]
            if dim.name not in sizes:
                sizes[dim.name] = n - 1 if n - 1 >= max(dim.min, 1) else min(2 * n, dim.max)
    out = {}
    for name, tensor in loaded.example.items():
        for axis, dim in loaded.dims.get(name, {}).items():
            want = sizes[dim.name]
            reps = -(-want // tensor.shape[axis])
            tensor = torch.cat([tensor] * reps, dim=axis).narrow(axis, 0, want)
        out[name] = tensor
    return out
