"""Micro-batching: concurrent requests wait a few milliseconds to share one model call."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import Executor

import numpy as np


class MicroBatcher:
    """Collects tiles from concurrent callers for up to `max_wait_s` or until `max_batch` tiles
    wait, runs `run` once per tile shape on the whole batch (in `executor`, off the event loop),
    and hands each caller its own rows, the way TensorFlow Serving's batching does.

    While a batch runs, new requests queue up and form the next batch, so batches grow with load.
    Created inside a running event loop; one per served model.
    """

    def __init__(
        self,
        run: Callable[[np.ndarray], np.ndarray],
        *,
        max_batch: int,
        max_wait_s: float,
        executor: Executor | None = None,
    ):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1. Received: max_batch={max_batch}")
        self.run, self.max_batch, self.max_wait_s = run, max_batch, max_wait_s
        self.executor = executor
        self._queue: asyncio.Queue[tuple[np.ndarray, asyncio.Future]] = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._loop())
        self.batch_sizes: list[int] = []  # tiles per model call, for tests and metrics

    async def submit(self, tiles: np.ndarray) -> np.ndarray:
        """(n, H, W, C) float32 -> (n, classes), batched with whatever else is waiting."""
        future = asyncio.get_running_loop().create_future()
        await self._queue.put((tiles, future))
        return await future

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            pending = [await self._queue.get()]
            waiting = len(pending[0][0])
            # Whatever queued while the last batch ran joins now, without waiting...
            while waiting < self.max_batch and not self._queue.empty():
                item = self._queue.get_nowait()
                pending.append(item)
                waiting += len(item[0])
            # ...then wait a little for more, unless the batch is full.
            deadline = time.monotonic() + self.max_wait_s
            while waiting < self.max_batch:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self._queue.get(), remaining)
                except TimeoutError:
                    break
                pending.append(item)
                waiting += len(item[0])
            for group in _by_shape(pending).values():
                await self._run_group(loop, group)

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
