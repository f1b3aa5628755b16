"""`OrtRunner`: the cpu target's runner, ONNX Runtime over the cpu-lowered paged plan, KV pool in numpy.

execute(step) = pack the step (batch.py) → per plan call (cpu_lowering.py): its inputs and its
windows (views of the pool's pages, page_map.py; else gathered copies) → run the plan, every
output bound to a reused array → write the call's new K/V into the
pool at their slots → the logits of the sequences that sample.
"""

from __future__ import annotations

import numpy as np

from ingot.plans import llm as names
from ingot.runtime.llm.batch import PackedBatch, pack_step
from ingot.runtime.llm.buffers import ReusedArrays
from ingot.runtime.llm.cpu_lowering import Windows, plan_feeds, run_calls, select
from ingot.runtime.llm.kv_cache import KVCache, num_blocks_for
from ingot.runtime.llm.page_map import MappedWindows
from ingot.runtime.llm.runner import RunnerMemory
from ingot.runtime.llm.scheduler_output import SchedulerOutput
from ingot.runtime.model import Model


class OrtRunner:
    def __init__(self, model: Model, kv_cache_memory: int | float | str | None = None):
        """`model`: a bundle loaded for its cpu target (ingot.runtime.load), with an LLM plan."""
        info = model.manifest.llm
        assert info is not None and model.tokenizer is not None, model.manifest.model.id
        self.model, self.info, self.tokenizer = model, info, model.tokenizer
        self.num_blocks = num_blocks_for(info, kv_cache_memory)
        self.kv = KVCache(info, self.num_blocks)
        # windows mapped onto the pool's pages where it can (page_map.py), else gathered into copies
        self.mapped = MappedWindows(info, self.kv.fd, self.num_blocks) if self.kv.fd is not None else None
        self.windows = Windows(info)
        # the plan's other outputs, by call shape: logits [N, vocab], the new rows [T, kv, dim] per layer and k|v
        self._logits = ReusedArrays([names.LOGITS])
        self._rows = ReusedArrays([f(layer) for layer in range(info.num_layers) for f in (names.present_key, names.present_value)])

    def memory(self) -> RunnerMemory:
        if self.mapped is not None:
            return RunnerMemory(self.kv.nbytes, self.mapped.page_table_bytes_max + self.windows.scratch_bytes_max,
                                "attention windows map the pool's pages (no copy); their page tables and "
                                "the scratch rows of prefills from scratch")
        return RunnerMemory(self.kv.nbytes, self.windows.bytes_max, "attention windows")

    def windows_bytes(self) -> int:
        """Memory the attention windows hold beside the pool now: gathered copies and scratch rows,
        and the page tables of mapped windows."""
        return self.windows.bytes_held + (self.mapped.page_table_bytes if self.mapped is not None else 0)

    def execute(self, out: SchedulerOutput) -> np.ndarray:
        assert not out.is_empty
        assert out.num_tokens <= self.info.max_num_tokens and out.num_seqs <= self.info.max_num_seqs, out
        return run_calls(pack_step(out, self.info.kv_block_size), self.forward)

    def forward(self, batch: PackedBatch) -> np.ndarray:
        """One plan call (see cpu_lowering.plan_calls): its logits rows; the new K/V go into the pool.
        A decode call of sequences with ids runs over the resident decode windows, in their rows' order."""
        mapped = self.mapped
        if batch.seq_ids is None or not (batch.new_lens == 1).all():
            # prefills from scratch read no past: their windows are scratch rows the kernel writes
            # (bounded by the step's token budget), cheaper than mapping blocks it only writes
            views = mapped.prefill(batch) if mapped is not None and batch.past_lens.any() else None
            return self._run(batch, *(views or self.windows.prefill(batch, self.kv.caches)))
        views = mapped.decode(batch) if mapped is not None else None
        order, windows, presents = views or self.windows.decode(batch, self.kv.caches)
        if np.array_equal(order, np.arange(len(order))):
            logits = self._run(batch, windows, presents)
        else:
            sub, mine = select(batch, order)
            logits = np.empty((len(batch.logits_indices), self.info.vocab_size), np.float32)
            logits[mine] = self._run(sub, windows, presents)
        if views is None:
            self.windows.decoded()
        return logits

    def close(self) -> None:
        """Nothing to release beyond what garbage collection frees (the session, the pool)."""

    def _run(self, batch: PackedBatch, windows: dict[str, np.ndarray], presents: dict[str, np.ndarray]) -> np.ndarray:
        info = self.info
        outputs = (self._logits.get((len(batch.logits_indices), info.vocab_size))
                   | self._rows.get((batch.num_tokens, info.num_kv_heads, info.head_dim)) | presents)
        self.model.backend.run_bound(plan_feeds(batch) | windows, outputs)
        self.kv.write(batch.slot_mapping, outputs)
        return outputs[names.LOGITS].copy()  # the arrays are reused by the next call
