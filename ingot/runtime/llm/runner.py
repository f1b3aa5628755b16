"""`Runner`: the execution backend behind the engine loop, and how one is opened for a bundle.

The engine hands a runner each scheduled step; the runner runs the model on it, writes the
step's new K/V into its paged pool and returns the logits of the sequences that sample. How
it does that (which plan calls, what buffers, which device) is the backend's own business, and
so is its memory, which it reports itself. The ONNX Runtime runner (ort_runner.py) runs the cpu
targets; the TensorRT runner (ingot.runtime.trt.runner) runs the sm targets.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import numpy as np

    from ingot.plans.llm import LLMInfo
    from ingot.runtime.llm.scheduler_output import SchedulerOutput
    from ingot.runtime.tokenizer import TextTokenizer


@dataclass(frozen=True)
class RunnerMemory:
    """What a runner holds beside the weights: its KV pool, and at most `other_bytes` more."""

    kv_cache_bytes: int
    other_bytes: int = 0
    other: str = ""  # what the other memory is

    def __str__(self) -> str:
        text = f"{self.kv_cache_bytes / 2**20:.1f} MiB"
        return text + (f"; {self.other} up to {self.other_bytes / 2**20:.1f} MiB more" if self.other_bytes else "")


class Runner(Protocol):
    """What the engine needs of an execution backend."""

    info: LLMInfo  # the plan's shape and limits (the manifest's llm section)
    num_blocks: int  # KV blocks in the pool
    tokenizer: TextTokenizer

    def execute(self, out: SchedulerOutput) -> np.ndarray:
        """Run one step: float32 logits [len(out.sampling), vocab] in `out.sampling` order; the
        new tokens' K/V are in the pool at their slots when it returns."""
        ...

    def memory(self) -> RunnerMemory: ...

    def close(self) -> None: ...


def load_runner(bundle: str | Path, *, kv_cache_memory: int | float | str | None = None, target: str | None = None,
                threads: int | None = None) -> Runner:
    """Open `bundle` for generation on this machine: verify it, select its target, and open
    the runner of that target's backend with a KV pool of `kv_cache_memory` (bytes, a
    fraction of available memory, or text as the CLI takes it, "256MiB"; default: see
    kv_cache.num_blocks_for)."""
    from ingot.runtime.errors import RunError
    from ingot.runtime.model import load

    model = load(Path(bundle), target, threads=threads)
    manifest = model.manifest
    if manifest.llm is None:
        raise RunError(f"{manifest.model.id} is not an LLM plan (kind {manifest.model.kind}); "
                       "generation needs a causal LM built by this version of ingot")
    if model.tokenizer is None:
        raise RunError(f"{manifest.model.id} has no tokenizer; generation needs one")
    if model.target.backend == "tensorrt":  # load() checked the plan against this GPU and deserialized it
        from ingot.runtime.trt.runner import TrtRunner

        return TrtRunner(model, kv_cache_memory)
    from ingot.runtime.llm.ort_runner import OrtRunner  # load() opened an ONNX Runtime target

    return OrtRunner(model, kv_cache_memory)
