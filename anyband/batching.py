"""Micro-batching: concurrent requests wait a few milliseconds to share one model call."""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Executor

import numpy as np


class MicroBatcher:
    """Collects tiles from concurrent callers for up to `max_wait_s` or until `max_batch` tiles
    wait, runs `run` once per tile shape on the whole batch (in `executor`, off the event loop),
    and hands each caller its own rows, the way TensorFlow Serving's batching does.

    Up to `concurrency` batches run at once (TensorFlow Serving's `num_batch_threads`): while
    one is in the model, the next is read and can start, so reading tiles and copying them to a
    device overlap the model instead of taking turns with it. While every slot is busy, new
    requests queue up and form the next batch, so batches grow with load.
    Callers that announce themselves with `expecting()` while they are still receiving and
    reading their tiles are waited for, up to `max_hold_s` after the oldest tile came: under
    load, a batch does not leave with two tiles while fourteen more are being decoded. A batch
    never waits for a request the server has not begun to read. Created inside a running event
    loop; one per served model.
    """

    def __init__(
        self,
        run: Callable[[np.ndarray], np.ndarray],
        *,
        max_batch: int,
        max_wait_s: float,
        max_hold_s: float = 0.0,
        concurrency: int = 1,
        executor: Executor | None = None,
    ):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1. Received: max_batch={max_batch}")
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1. Received: concurrency={concurrency}")
        self.run, self.max_batch = run, max_batch
        self.max_wait_s, self.max_hold_s = max_wait_s, max(max_hold_s, max_wait_s)
        self.executor = executor
        # (tiles, future, when it was enqueued in event loop time), oldest first.
        self._pending: deque[tuple[np.ndarray, asyncio.Future, float]] = deque()
        self._pending_tiles = 0
        self._expected = 0  # requests being received or read that will enqueue tiles
        self._changed = asyncio.Event()
        self._slots = asyncio.Semaphore(concurrency)
        self._running: set[asyncio.Task] = set()
        self._closing = False
        self._task = asyncio.get_running_loop().create_task(self._loop())
        self.batch_sizes: list[int] = []  # tiles per model call, for tests and metrics

    @contextlib.contextmanager
    def expecting(self) -> Iterator[None]:
        """Around a request's reading and `enqueue`: batches forming meanwhile wait for it."""
        self._expected += 1
        try:
            yield
        finally:
            self._expected -= 1
            self._changed.set()

    def enqueue(self, tiles: np.ndarray) -> asyncio.Future:
        """(n, H, W, C) float32 -> a future of its (n, classes) rows."""
        if self._task.done():
            raise RuntimeError("this MicroBatcher is closed: enqueue inside expecting()")
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._pending.append((tiles, future, loop.time()))
        self._pending_tiles += len(tiles)
        self._changed.set()
        return future

    async def submit(self, tiles: np.ndarray) -> np.ndarray:
        """(n, H, W, C) float32 -> (n, classes), batched with whatever else is waiting."""
        return await self.enqueue(tiles)

    async def close(self) -> None:
        """Stops once every tile it holds or expects has been answered: a model evicted from
        the cache while requests for it are being read still answers them."""
        self._closing = True
        self._changed.set()
        await asyncio.shield(self._task)

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._slots.acquire()  # a batch forms only when it can start at once
            while not self._pending:
                if self._closing and not self._expected:
                    await asyncio.gather(*self._running)
                    return
                self._changed.clear()
                await self._changed.wait()
            # A batch leaves when full, or once its oldest tile has waited max_wait_s (longer,
            # up to max_hold_s, while announced requests are still being read), as in
            # TensorFlow Serving: tiles that queued while the last batch ran leave at once.
            while self._pending_tiles < self.max_batch:
                limit = self.max_hold_s if self._expected else self.max_wait_s
                remaining = self._pending[0][2] + limit - loop.time()
                if remaining <= 0:
                    break
                self._changed.clear()
                try:
                    await asyncio.wait_for(self._changed.wait(), remaining)
                except TimeoutError:
                    break
            pending = self._take_batch()
            task = loop.create_task(self._run_batch(loop, pending))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    def _take_batch(self) -> list[tuple[np.ndarray, asyncio.Future]]:
        """The oldest requests, up to max_batch tiles (a larger request alone, run in chunks):
        what is left forms the next batch, which may run beside this one."""
        batch, tiles = [], 0
        while self._pending and (not batch or tiles + len(self._pending[0][0]) <= self.max_batch):
            request, future, _ = self._pending.popleft()
            batch.append((request, future))
            tiles += len(request)
        self._pending_tiles -= tiles
        return batch

    async def _run_batch(self, loop, pending: list[tuple[np.ndarray, asyncio.Future]]) -> None:
        try:
            for group in _by_shape(pending).values():
                await self._run_group(loop, group)
        finally:
            self._slots.release()

    async def _run_group(self, loop, group: list[tuple[np.ndarray, asyncio.Future]]) -> None:
        stacked = np.concatenate([tiles for tiles, _ in group])
        try:
            outputs = []
            for start in range(0, len(stacked), self.max_batch):
                chunk = stacked[start : start + self.max_batch]
                self.batch_sizes.append(len(chunk))
                outputs.append(await loop.run_in_executor(self.executor, self.run, chunk))
            results = np.concatenate(outputs)
        except Exception as exc:  # every caller of this batch learns why
            for _, future in group:
                if not future.done():
                    future.set_exception(exc)
            return
        offset = 0
        for tiles, future in group:
            if not future.done():  # a caller that went away
                future.set_result(results[offset : offset + len(tiles)])
            offset += len(tiles)


def _by_shape(pending):
    groups = defaultdict(list)
    for tiles, future in pending:
        groups[tiles.shape[1:]].append((tiles, future))
    return groups
