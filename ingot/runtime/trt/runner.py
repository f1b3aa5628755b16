"""`TrtRunner`: the sm targets' runner, a TensorRT plan of the paged contract with its KV pool in
device memory.

execute(step) = pack the step (ingot.runtime.llm.batch) → a decode of a captured size? pad it
(graphs.py) → copy the step's inputs into their device buffers (pinned staging, one stream) → replay
the size's CUDA graph, or set the shapes and run the plan (execute_async_v3) → copy the logits back.
The plan's PagedAttention plugin writes each new token's K/V into the pool at its slot, in place:
the pool never leaves the device.

Device memory, all made at load: the plan's weights and one scratch for its activations, shared by
every execution context (the eager one and one per captured decode size, run one at a time); one
buffer for the step's inputs and logits; the pool, sized by --kv-cache-memory against the memory
free once the rest is there (pool.py). Addresses never change, so a graph replays a step after its
inputs are copied in.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ingot.plans import llm as names
from ingot.plans.llm import blocks_needed
from ingot.runtime.errors import RunError
from ingot.runtime.llm.batch import PackedBatch, pack_step
from ingot.runtime.llm.runner import RunnerMemory
from ingot.runtime.llm.scheduler_output import SchedulerOutput
from ingot.runtime.model import Model
from ingot.runtime.trt import cuda
from ingot.runtime.trt.bindings import STEP_INPUTS, arena_layout, cache_names, input_shapes, step_arrays
from ingot.runtime.trt.graphs import capture_sizes, graph_size, pad_decode, padding_batch
from ingot.runtime.trt.pool import pool_blocks, pool_layout


class TrtRunner:
    def __init__(self, model: Model, kv_cache_memory: int | float | str | None = None, cuda_graphs: bool = True,
                 logits_rows: int | None = None):
        """`model`: a bundle loaded for an sm target (ingot.runtime.load: checked, plan deserialized)
        with an LLM plan. `cuda_graphs`: capture decode steps (False: every step runs eagerly).
        `logits_rows`: logits rows a call returns at most (default max_num_seqs: one per sequence)."""
        info = model.manifest.llm
        assert info is not None, model.manifest.model.id  # generation also needs a tokenizer: load_runner checks it
        self.model, self.info, self.tokenizer = model, info, model.tokenizer
        backend = model.backend
        self.engine, self.stream, self.label = backend.engine, backend.stream, backend.label
        self._check_io()
        tensors = self.engine.tensors
        self.caches = cache_names(info)
        self.width = tensors[names.BLOCK_TABLES].max_shape[1]  # every call binds tables this wide
        self.dtypes = {name: tensors[name].dtype for name in STEP_INPUTS}
        self.io = self.staging = self.pool = None
        self.contexts, self.graphs = {}, {}
        try:
            self.eager = self.engine.context()
            self._io_buffers(logits_rows or info.max_num_seqs)
            self._pool(kv_cache_memory, backend.facts.describe())
            self.eager_addresses = self._addresses()
            self.engine.set_addresses(self.eager, self.eager_addresses)
            self.engine.set_shapes(self.eager, {name: self.layout.cache_shape for name in self.caches})
            self.sizes = capture_sizes(self.max_decode) if cuda_graphs else ()
            for size in self.sizes:
                self._capture(size)
        except BaseException:
            self.release()  # what was allocated so far; the plan stays with its backend
            raise

    # ---- load

    def _check_io(self) -> None:
        """The plan's I/O must be the paged contract: the step inputs, a cache per layer and k|v, and
        logits (plus outputs that alias an input: the caches, written in place)."""
        tensors, expected = self.engine.tensors, {*STEP_INPUTS, *cache_names(self.info)}
        inputs = {t.name for t in tensors.values() if t.is_input}
        outputs = {t.name for t in tensors.values() if not t.is_input and t.aliased_input is None}
        if inputs != expected or outputs != {names.LOGITS}:
            odd = sorted(inputs ^ expected) + sorted(outputs ^ {names.LOGITS})
            raise RunError(f"{self.label} is not a paged LLM plan this runtime binds ({', '.join(odd)} differ): "
                           "rebuild it with this version of ingot")
        itemsizes = {tensors[name].dtype.itemsize for name in cache_names(self.info)}
        assert len(itemsizes) == 1, f"caches of several dtypes: {itemsizes}"
        width = tensors[names.BLOCK_TABLES].max_shape[1]
        needed = blocks_needed(self.info.max_model_len, self.info.kv_block_size)
        if width < needed:
            raise RunError(f"{self.label} takes block tables of {width} blocks, fewer than a max_model_len sequence "
                           f"needs ({needed}): rebuild it with this version of ingot")

    def _io_buffers(self, logits_rows: int) -> None:
        """One device buffer, and its pinned mirror, for the step inputs (at the plan's largest
        shapes) and `logits_rows` rows of logits."""
        tensors, info = self.engine.tensors, self.info
        shapes = {name: tensors[name].max_shape for name in STEP_INPUTS}
        self.max_decode = min(info.max_num_seqs, shapes[names.BLOCK_TABLES][0], shapes[names.INPUT_IDS][0],
                              shapes[names.LOGITS_INDICES][0])
        self.logits_rows = min(max(logits_rows, self.max_decode), shapes[names.LOGITS_INDICES][0])
        shapes[names.LOGITS] = (self.logits_rows, info.vocab_size)
        self.io_dtypes = self.dtypes | {names.LOGITS: tensors[names.LOGITS].dtype}
        self.offsets, nbytes = arena_layout(shapes, self.io_dtypes)
        self.io = cuda.DeviceMemory(nbytes, "the step's inputs and logits")
        self.staging = cuda.PinnedMemory(nbytes)

    def _pool(self, kv_cache_memory, gpu: str) -> None:
        free, _ = cuda.memory_info()  # with the weights, the scratch and the I/O buffers in place
        itemsize = self.engine.tensors[self.caches[0]].dtype.itemsize
        blocks = pool_blocks(self.info, itemsize, kv_cache_memory, free, gpu)
        self.num_blocks = min(blocks, self.engine.tensors[self.caches[0]].max_shape[1] - 1)  # the plan's limit
        if self.num_blocks < blocks_needed(self.info.max_model_len, self.info.kv_block_size):
            raise RunError(f"{self.label} takes KV caches of at most {self.num_blocks} blocks, fewer than one "
                           f"max_model_len sequence needs: rebuild it with this version of ingot")
        self.layout = pool_layout(self.info, self.num_blocks, itemsize)
        self.pool = cuda.DeviceMemory(self.layout.nbytes, "the KV cache")
        self.pool.zero(self.stream)  # blocks are read only where written; zeros keep stray reads finite

    def _addresses(self) -> dict[str, int]:
        tensors = self.engine.tensors
        addresses = {name: self.io.ptr + offset for name, offset in self.offsets.items()}
        addresses |= {name: self.pool.ptr + self.layout.offsets[name] for name in self.caches}
        aliased = {t.name: addresses[t.aliased_input] for t in tensors.values() if t.aliased_input is not None}
        return addresses | aliased

    def _capture(self, size: int) -> None:
        """The graph of a decode of `size` rows, captured over padding rows (the buffers must hold a
        valid batch when the warm-up run reads them)."""
        ctx = self.engine.context()
        self.engine.set_addresses(ctx, self.eager_addresses)
        arrays = self._stage(padding_batch(size, self.width, self.layout.padding_block, self.info.kv_block_size))
        self.engine.set_shapes(ctx, input_shapes(arrays, self.layout.cache_shape, self.info))
        self.engine.execute(ctx, self.stream)  # one run before capture: TensorRT's deferred setup happens here
        self.contexts[size] = ctx
        self.graphs[size] = cuda.Graph.capture(self.stream, lambda: self.engine.execute(ctx, self.stream))
        self.stream.synchronize()

    # ---- steps

    def execute(self, out: SchedulerOutput) -> np.ndarray:
        assert not out.is_empty
        assert out.num_tokens <= self.info.max_num_tokens and out.num_seqs <= self.info.max_num_seqs, out
        batch = pack_step(out, self.info.kv_block_size)
        rows = len(batch.logits_indices)
        size = graph_size(batch, self.sizes)
        if size is not None:
            batch = pad_decode(batch, size, self.layout.padding_block, self.info.kv_block_size)
        elif rows == 0:  # no sequence samples (prefill chunks): one row's logits, dropped, keeps N >= 1
            batch = replace(batch, logits_indices=np.zeros(1, np.int64))
        return self.forward(batch, size)[:rows]

    def forward(self, batch: PackedBatch, size: int | None = None) -> np.ndarray:
        """float32 logits [N, vocab] of one plan call; the graph captured for `size` rows replays it if given."""
        assert len(batch.logits_indices) <= self.logits_rows, (len(batch.logits_indices), self.logits_rows)
        arrays = self._stage(batch)
        if size is not None:
            self.graphs[size].launch()
        else:
            self.engine.set_shapes(self.eager, {name: a.shape for name, a in arrays.items()})
            self.engine.execute(self.eager, self.stream)
        logits = self.staging.view(self.offsets[names.LOGITS], self.io_dtypes[names.LOGITS],
                                   (len(batch.logits_indices), self.info.vocab_size))
        cuda.copy_to_host(logits, self.io.ptr + self.offsets[names.LOGITS], self.stream)
        self.stream.synchronize()
        return logits.astype(np.float32)  # a copy: the staging rows are reused by the next call

    def _stage(self, batch: PackedBatch) -> dict[str, np.ndarray]:
        """Copy `batch`'s step inputs into their device buffers, through the pinned staging buffer."""
        arrays = step_arrays(batch, self.width, self.dtypes)
        for name, a in arrays.items():
            view = self.staging.view(self.offsets[name], a.dtype, a.shape)
            view[...] = a
            cuda.copy_to_device(self.io.ptr + self.offsets[name], view, self.stream)
        return arrays

    # ---- lifecycle

    def memory(self) -> RunnerMemory:
        return RunnerMemory(self.layout.nbytes, self.engine.scratch_bytes + self.io.nbytes,
                            "TensorRT's activations and the step's input and logits buffers (GPU)")

    def release(self) -> None:
        """Release the graphs, the contexts, the pool and the buffers (not the plan)."""
        self.stream.synchronize()
        for graph in self.graphs.values():
            graph.close()
        self.graphs, self.contexts, self.eager = {}, {}, None
        for memory in (self.pool, self.io, self.staging):
            if memory is not None:
                memory.close()
        self.pool = self.io = self.staging = None

    def close(self) -> None:
        """release(), then the plan."""
        self.release()
        self.model.backend.close()
