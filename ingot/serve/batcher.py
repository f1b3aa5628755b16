"""Dynamic batching: concurrent requests to one model merged into one plan call.

A request is a dict of arrays whose axis 0 is the batch dim. The worker takes the first
waiting request, then waits up to `max_queue_delay_us` for more until the batch is full,
groups what it took by shape (requests whose other dims differ only in a sequence dim padded
under an attention mask are padded to the longest; others run in their own call), runs each
group as one call in a worker thread, and splits the outputs back along axis 0.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ingot.serve.errors import ResourceExhausted
from ingot.serve.stats import VersionStats

Feeds = dict[str, np.ndarray]


@dataclass(frozen=True)
class BatchShape:
    """What the batcher may do with a model's inputs (from its manifest)."""

    max_batch: int  # the plan's largest batch (1: no batch dim, each request runs alone)
    pad_inputs: frozenset[str] = frozenset()  # inputs padded on axis 1 (the sequence) with zeros
    pad_outputs: frozenset[str] = frozenset()  # outputs cut back on axis 1 to each request's length
    mask: str | None = None  # the attention mask that makes that padding safe


@dataclass(eq=False)
class _Pending:
    feeds: Feeds
    future: asyncio.Future
    arrived: float = field(default_factory=time.perf_counter)

    @property
    def rows(self) -> int:
        return next(iter(self.feeds.values())).shape[0]


class DynamicBatcher:
    def __init__(self, run: Callable[[Feeds], Feeds], shape: BatchShape, max_delay_us: int, max_queue: int,
                 stats: VersionStats):
        self.run, self.shape, self.stats = run, shape, stats
        self.max_delay = max_delay_us / 1e6
        self.max_queue = max_queue
        self.queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._held: _Pending | None = None  # taken from the queue, did not fit the last batch
        self.worker: asyncio.Task | None = None

    @property
    def pending(self) -> int:
        return self.queue.qsize()

    async def infer(self, feeds: Feeds) -> Feeds:
        if self.queue.qsize() >= self.max_queue:
            raise ResourceExhausted(f"the model's queue is full ({self.max_queue} requests waiting); retry later")
        item = _Pending(feeds, asyncio.get_running_loop().create_future())
        self.queue.put_nowait(item)
        if self.worker is None or self.worker.done():
            self.worker = asyncio.get_running_loop().create_task(self._work(), name="ingot-batcher")
        return await item.future

    async def close(self) -> None:
        if self.worker is not None:
            self.worker.cancel()
            await asyncio.gather(self.worker, return_exceptions=True)
        while not self.queue.empty():
            item = self.queue.get_nowait()
            if not item.future.done():
                item.future.cancel()

    async def _work(self) -> None:
        while True:
            batch = await self._collect()
            for group in self._groups(batch):
                await self._execute(group)

    async def _collect(self) -> list[_Pending]:
        first, self._held = self._held or await self.queue.get(), None
        batch, rows = [first], first.rows
        deadline = time.perf_counter() + self.max_delay
        while rows < self.shape.max_batch:
            try:
                if not self.queue.empty():
                    item = self.queue.get_nowait()
                else:
                    left = deadline - time.perf_counter()
                    if left <= 0:
                        break
                    item = await asyncio.wait_for(self.queue.get(), left)
            except TimeoutError:
                break
            if rows + item.rows > self.shape.max_batch:
                self._held = item  # it starts the next batch
                break
            batch.append(item)
            rows += item.rows
        return [p for p in batch if not p.future.done()]  # a cancelled request is dropped here

    def _groups(self, batch: list[_Pending]) -> list[list[_Pending]]:
        groups: dict[tuple, list[_Pending]] = {}
        for p in batch:
            groups.setdefault(self._key(p.feeds), []).append(p)
        return list(groups.values())

    def _key(self, feeds: Feeds) -> tuple:
        return tuple((name, a.dtype.str, a.shape[2 if name in self.shape.pad_inputs else 1:])
                     for name, a in sorted(feeds.items()))

    async def _execute(self, group: list[_Pending]) -> None:
        started = time.perf_counter()
        for p in group:
            self.stats.queue.add(started - p.arrived)
        try:
            feeds = self._merge(group)
            outputs = await asyncio.to_thread(self.run, feeds)
        except Exception as e:  # noqa: BLE001 - the error goes to each request of the call
            for p in group:
                if not p.future.done():
                    p.future.set_exception(e)
            return
        rows = sum(p.rows for p in group)
        self.stats.executed(rows, time.perf_counter() - started)
        start = 0
        for p in group:
            part = {name: self._cut(name, arr[start: start + p.rows], p) for name, arr in outputs.items()}
            start += p.rows
            if not p.future.done():
                p.future.set_result(part)

    def _merge(self, group: list[_Pending]) -> Feeds:
        if len(group) == 1:
            return group[0].feeds
        length = max(self._length(p) for p in group) if self.shape.pad_inputs else 0
        return {name: np.concatenate([self._pad(name, p.feeds[name], length) for p in group])
                for name in group[0].feeds}

    def _length(self, p: _Pending) -> int:
        return p.feeds[min(self.shape.pad_inputs)].shape[1]

    def _pad(self, name: str, arr: np.ndarray, length: int) -> np.ndarray:
        if name not in self.shape.pad_inputs or arr.shape[1] == length:
            return arr
        width = [(0, 0)] * arr.ndim
        width[1] = (0, length - arr.shape[1])
        return np.pad(arr, width)

    def _cut(self, name: str, arr: np.ndarray, p: _Pending) -> np.ndarray:
        if name in self.shape.pad_outputs and self.shape.pad_inputs:
            return arr[:, : self._length(p)]
        return arr
