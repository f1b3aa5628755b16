"""`ingot.runtime.load(bundle)`: verify, select the target, open its backend."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ingot.plans import Bundle, Host, Target, detect_host, open_bundle, select_target
from ingot.plans.llm import lowering_problem
from ingot.runtime.errors import InputError, RunError
from ingot.runtime.inputs import check_feeds
from ingot.runtime.ort_backend import OrtBackend
from ingot.runtime.tokenizer import TextTokenizer

if TYPE_CHECKING:
    from ingot.runtime.trt.backend import TrtBackend


@dataclass
class Model:
    bundle: Bundle
    target: Target
    backend: OrtBackend | TrtBackend
    tokenizer: TextTokenizer | None

    @property
    def manifest(self):
        return self.bundle.manifest

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Outputs by name; raises InputError (listing the expected inputs) on a mismatch.
        A paged LLM plan is run as a dense causal LM (every position's logits)."""
        check_feeds(self.manifest.inputs, feeds)
        return self._run(feeds)

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.manifest.llm is None:
            return self.backend.run(feeds)
        if self.target.backend == "tensorrt":
            return self.backend.run_dense(self, feeds)
        from ingot.runtime.llm.dense import dense_runner

        return dense_runner(self.backend.run, self.manifest.llm)(feeds)

    def encode(self, texts: list[str]) -> dict[str, np.ndarray]:
        if self.tokenizer is None:
            raise InputError(f"{self.manifest.model.id} has no tokenizer: pass tensors with --input NAME=FILE.npy")
        if not texts:
            raise InputError("no text given")
        return self.tokenizer.encode(texts)

    def run_text(self, texts: list[str]) -> dict[str, np.ndarray]:
        return self.run(self.encode(texts))

    def perplexity(self, text: str, window: int | None = None, batch: int = 4,
                   progress: Callable[[int, int], None] | None = None):
        """Perplexity of a causal-LM bundle on `text`, in non-overlapping windows of `window`
        tokens (default: 512, or the bundle's longest sequence if shorter); `progress(done,
        total)` hears of the windows as they are scored."""
        from ingot.runtime.evaluate import perplexity

        if self.manifest.model.kind != "causal-lm":
            raise RunError(f"perplexity needs a causal-LM bundle; {self.manifest.model.id} is {self.manifest.model.kind}")
        if self.tokenizer is None:
            raise RunError(f"{self.manifest.model.id} has no tokenizer")
        limit = max(d.max for d in self.manifest.inputs[0].shape if not isinstance(d, int))
        window = min(512, limit) if window is None else window
        if not 2 <= window <= limit:
            raise InputError(f"--window {window}: must be within 2..{limit} (the bundle's sequence range)")
        ids = self.tokenizer.ids(text)
        if len(ids) < 2:
            raise InputError(f"the text has {len(ids)} tokens; perplexity needs at least 2")
        names = [i.name for i in self.manifest.inputs]
        return perplexity(self._run, names, ids, window, batch, progress)


def load(root: Path, target: str | None = None, host: Host | None = None, threads: int | None = None) -> Model:
    """Open the bundle at `root` for this machine; checks the sha256 of every file it uses (and,
    for an sm target, that this GPU and TensorRT load its plan: ingot.runtime.trt.checks)."""
    bundle = open_bundle(Path(root), verify=False)  # only the files this target uses are checked
    chosen = select_target(bundle.manifest, host or detect_host(), target)
    if chosen.backend == "tensorrt":
        from ingot.runtime.trt.backend import open_backend

        backend = open_backend(bundle, chosen)  # the files' checksums first, then this GPU and TensorRT
        return Model(bundle, chosen, backend, _tokenizer(bundle))
    bundle.verify_target(chosen)
    problem = lowering_problem(chosen.build_options) if bundle.manifest.llm is not None else None
    if problem:
        raise RunError(f"{root}: {problem}: rebuild the bundle with this version of ingot")
    return Model(bundle, chosen, OrtBackend(bundle.path(chosen.entrypoint), chosen.session_config, threads),
                 _tokenizer(bundle))


def _tokenizer(bundle: Bundle) -> TextTokenizer | None:
    return TextTokenizer(bundle.root, bundle.manifest.tokenizer) if bundle.manifest.tokenizer else None

