"""`ModelRunner`: executes a scheduler step on a paged plan and keeps the KV pool.

execute(step) = pack the scheduled sequences into one ragged batch → per plan call: the cpu
attention inputs and the windows of the sequences' pasts (windows.py: a decode call's stay filled
between steps) → run the plan, its outputs bound to reused arrays (plan_outputs.py) → write the
new K/V into the pool at their slots → the logits of the sequences that sample.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ingot.plans import llm as names
from ingot.plans.llm import LLMInfo
from ingot.runtime.errors import RunError
from ingot.runtime.llm.batch import PackedBatch, pack, plan_feeds, run_calls, select
from ingot.runtime.llm.kv_cache import KVCache, num_blocks_for
from ingot.runtime.llm.plan_outputs import PlanOutputs
from ingot.runtime.llm.scheduler_output import SchedulerOutput
from ingot.runtime.llm.windows import Bound, Windows


class ModelRunner:
    def __init__(self, bundle: str | Path, *, kv_cache_memory: int | float | None = None, target: str | None = None,
                 threads: int | None = None):
        from ingot.runtime.model import load

        self.model = load(Path(bundle), target, threads=threads)
        info = self.model.manifest.llm
        if info is None:
            raise RunError(f"{self.model.manifest.model.id} is not an LLM plan (kind {self.model.manifest.model.kind}); "
                           "generation needs a causal LM built by this version of ingot")
        if self.model.tokenizer is None:
            raise RunError(f"{self.model.manifest.model.id} has no tokenizer; generation needs one")
        self.info: LLMInfo = info
        self.num_blocks = num_blocks_for(info, kv_cache_memory)
        self.kv = KVCache(info, self.num_blocks)
        self.outputs = PlanOutputs(info)
        self.windows = Windows(info)
        self.tokenizer = self.model.tokenizer
        self.chat_template = _chat_template(self.model.bundle.root)

    @property
    def kv_cache_bytes(self) -> int:
        return self.kv.nbytes

    @property
    def window_bytes_max(self) -> int:
        """The attention windows' memory at most, beside the pool: every sequence's past as
        one [B, kv, W, dim] pair per layer (windows.py), B <= max_num_seqs, W <= max_model_len."""
        return self.info.max_num_seqs * self.info.max_model_len * self.info.kv_bytes_per_token

    @property
    def max_cached_tokens(self) -> int:
        return self.kv.max_tokens

    def execute(self, out: SchedulerOutput) -> np.ndarray:
        """Run one step; float32 logits [len(out.sampling), vocab] in `out.sampling` order.

        The step is one packed batch; it runs as one plan call per batch.plan_calls (the decodes
        together, each prefill chunk alone), so a decode never pays for a chunk's query rows.
        """
        assert not out.is_empty
        assert out.num_tokens <= self.info.max_num_tokens and out.num_seqs <= self.info.max_num_seqs, out
        seqs = out.sequences
        batch = pack([s.token_ids for s in seqs], [s.num_computed_tokens for s in seqs],
                     [s.block_table for s in seqs], self.info.kv_block_size,
                     [[s.num_new_tokens - 1] if s.samples else [] for s in seqs], [s.seq_id for s in seqs])
        assert np.array_equal(batch.slot_mapping, np.concatenate([s.slot_mapping for s in seqs])), "slot mismatch"
        return run_calls(batch, self.forward)

    def forward(self, batch: PackedBatch) -> np.ndarray:
        """One plan call (see batch.plan_calls): its logits rows; the new K/V go into the pool.
        A decode call of sequences with ids runs over the resident decode windows, its sequences
        in their rows' order."""
        decode = batch.seq_ids is not None and bool((batch.new_lens == 1).all())
        if not decode:
            return self._run(batch, self.windows.prefill(batch, self.kv.caches))
        order, windows = self.windows.decode(batch, self.kv.caches)
        if np.array_equal(order, np.arange(len(order))):
            logits = self._run(batch, windows)
        else:
            sub, mine = select(batch, order)
            logits = np.empty((len(batch.logits_indices), self.info.vocab_size), np.float32)
            logits[mine] = self._run(sub, windows)
        self.windows.decoded()
        return logits

    def _run(self, batch: PackedBatch, windows: Bound) -> np.ndarray:
        inputs, presents = windows
        outputs = self.outputs.buffers(len(batch.logits_indices), batch.num_tokens) | presents
        self.model.backend.run_bound(plan_feeds(batch, self.info) | inputs, outputs)
        self.kv.write(batch.slot_mapping, outputs)
        return outputs[names.LOGITS].copy()  # the arrays are reused by the next call

    def report(self) -> dict[str, int]:
        """What the KV pool holds (printed at load)."""
        return {"kv_blocks": self.num_blocks, "kv_block_size": self.info.kv_block_size,
                "kv_cache_bytes": self.kv_cache_bytes, "max_cached_tokens": self.max_cached_tokens,
                "max_model_len": self.info.max_model_len, "max_num_seqs": self.info.max_num_seqs,
                "max_num_tokens": self.info.max_num_tokens}


def _chat_template(root: Path) -> str | None:
    folder = root / "tokenizer"
    if (folder / "chat_template.jinja").is_file():
        return (folder / "chat_template.jinja").read_text()
    config = folder / "tokenizer_config.json"
    if config.is_file():
        template = json.loads(config.read_text()).get("chat_template")
        return template if isinstance(template, str) else None
    return None
