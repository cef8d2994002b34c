"""MicroBatcher: callers share model calls, each gets its own rows, shapes never mix."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from anyband.batching import MicroBatcher


def tile_sums(batch: np.ndarray) -> np.ndarray:
    """A stand-in model whose answer identifies its input: the sum of each tile."""
    time.sleep(0.05)  # long enough for other requests to queue meanwhile
    return batch.sum(axis=(1, 2, 3))[:, np.newaxis]


def run(coroutine):
    return asyncio.run(coroutine)


def test_each_caller_gets_the_rows_of_its_own_tiles():
    async def go():
        batcher = MicroBatcher(tile_sums, max_batch=64, max_wait_s=0.02)
        tiles = [np.full((n, 4, 4, 2), float(i)) for i, n in enumerate([1, 3, 2, 1, 5], start=1)]
        results = await asyncio.gather(*(batcher.submit(t) for t in tiles))
        await batcher.close()
        return tiles, results, batcher.batch_sizes

    tiles, results, batch_sizes = run(go())
    for tile, result in zip(tiles, results, strict=True):
        np.testing.assert_array_equal(result[:, 0], tile.sum(axis=(1, 2, 3)))
    assert batch_sizes == [12]  # all five requests answered by one call


def test_requests_queued_during_a_call_form_the_next_batch_without_waiting():
    async def go():
        executor = ThreadPoolExecutor(1)
        batcher = MicroBatcher(tile_sums, max_batch=32, max_wait_s=0.0, executor=executor)
        first = asyncio.ensure_future(batcher.submit(np.ones((1, 4, 4, 1))))
        await asyncio.sleep(0.01)  # the first call is running now
        later = [batcher.submit(np.full((1, 4, 4, 1), float(i))) for i in range(10)]
        results = await asyncio.gather(first, *later)
        await batcher.close()
        executor.shutdown()
        return results, batcher.batch_sizes

    results, batch_sizes = run(go())
    assert batch_sizes == [1, 10]
    assert [float(r[0, 0]) for r in results[1:]] == [16.0 * i for i in range(10)]


def test_tiles_of_different_sizes_are_never_stacked_together():
    async def go():
        batcher = MicroBatcher(tile_sums, max_batch=64, max_wait_s=0.02)
        small, large = np.ones((2, 32, 32, 3)), np.ones((1, 48, 64, 3))
        results = await asyncio.gather(batcher.submit(small), batcher.submit(large))
        await batcher.close()
        return results, sorted(batcher.batch_sizes)

    (small, large), batch_sizes = run(go())
    assert small[:, 0].tolist() == [32 * 32 * 3] * 2 and large[:, 0].tolist() == [48 * 64 * 3]
    assert batch_sizes == [1, 2]


def test_large_requests_are_split_at_max_batch():
    async def go():
        batcher = MicroBatcher(tile_sums, max_batch=4, max_wait_s=0.0)
        tiles = np.arange(10, dtype=float).reshape(10, 1, 1, 1)
        result = await batcher.submit(tiles)
        await batcher.close()
        return result, batcher.batch_sizes

    result, batch_sizes = run(go())
    assert result[:, 0].tolist() == list(range(10))
    assert batch_sizes == [4, 4, 2]


def test_a_failing_call_fails_every_caller_of_that_batch_and_the_next_batch_works():
    calls = []

    def flaky(batch):
        calls.append(len(batch))
        if len(calls) == 1:
            raise RuntimeError("device lost")
        return batch.sum(axis=(1, 2, 3))[:, np.newaxis]

    async def go():
        batcher = MicroBatcher(flaky, max_batch=8, max_wait_s=0.02)
        failed = await asyncio.gather(
            batcher.submit(np.ones((1, 2, 2, 1))),
            batcher.submit(np.ones((1, 2, 2, 1))),
            return_exceptions=True,
        )
        ok = await batcher.submit(np.ones((1, 2, 2, 1)))
        await batcher.close()
        return failed, ok

    failed, ok = run(go())
    assert all(isinstance(f, RuntimeError) and "device lost" in str(f) for f in failed)
    assert ok[0, 0] == 4.0


def test_max_batch_must_be_positive():
    async def go():
        MicroBatcher(tile_sums, max_batch=0, max_wait_s=0.0)

    with pytest.raises(ValueError, match="max_batch must be >= 1"):
        run(go())


def instant_sums(batch: np.ndarray) -> np.ndarray:
    return batch.sum(axis=(1, 2, 3))[:, np.newaxis]


async def announced(batcher: MicroBatcher, value: float, read_s: float) -> np.ndarray:
    """A request as the predict route makes one: announced, read for `read_s`, then enqueued."""
    with batcher.expecting():
        await asyncio.sleep(read_s)  # receiving and decoding its tiles
        answer = batcher.enqueue(np.full((1, 2, 2, 1), value))
    return await answer


def test_a_forming_batch_waits_for_requests_still_being_read():
    async def go(hold_s):
        batcher = MicroBatcher(instant_sums, max_batch=8, max_wait_s=0.0, max_hold_s=hold_s)
        results = await asyncio.gather(announced(batcher, 1.0, 0.0), announced(batcher, 2.0, 0.05))
        await batcher.close()
        return results, batcher.batch_sizes

    results, batch_sizes = run(go(hold_s=1.0))
    assert [float(r[0, 0]) for r in results] == [4.0, 8.0]
    assert batch_sizes == [2]  # the first tile waited for the second
    _, batch_sizes = run(go(hold_s=0.0))
    assert batch_sizes == [1, 1]  # without the hold, it left alone


def test_the_hold_is_bounded_and_ends_when_an_announced_request_gives_up():
    async def go():
        batcher = MicroBatcher(instant_sums, max_batch=8, max_wait_s=0.0, max_hold_s=0.1)
        started = time.perf_counter()
        slow = asyncio.ensure_future(announced(batcher, 2.0, 5.0))  # a very slow upload
        first = await announced(batcher, 1.0, 0.0)
        held = time.perf_counter() - started
        slow.cancel()

        async def fails():
            with batcher.expecting():
                await asyncio.sleep(0.05)
                raise ValueError("a corrupt tile")

        failing = asyncio.ensure_future(fails())
        started = time.perf_counter()
        second = await batcher.submit(np.full((1, 2, 2, 1), 3.0))
        released = time.perf_counter() - started
        with pytest.raises(ValueError):
            await failing
        await batcher.close()
        return first, held, second, released

    first, held, second, released = run(go())
    assert float(first[0, 0]) == 4.0 and float(second[0, 0]) == 12.0
    assert 0.1 <= held < 1.0  # waited for the slow upload, but only max_hold_s
    assert released < 0.09  # the failed request stopped the wait at once (~0.05 s), not at 0.1


def test_the_wait_counts_from_the_oldest_tile_so_tiles_queued_during_a_call_do_not_wait_again():
    def slow_sums(batch):
        time.sleep(0.3)
        return batch.sum(axis=(1, 2, 3))[:, np.newaxis]

    async def go():
        executor = ThreadPoolExecutor(1)
        batcher = MicroBatcher(slow_sums, max_batch=4, max_wait_s=0.25, executor=executor)
        started = time.perf_counter()
        full = asyncio.ensure_future(batcher.submit(np.ones((4, 2, 2, 1))))  # runs at once
        await asyncio.sleep(0.01)
        later = await batcher.submit(np.ones((2, 2, 2, 1)))  # queued while the first call runs
        answered = time.perf_counter() - started
        await full
        await batcher.close()
        executor.shutdown()
        return later, answered, batcher.batch_sizes

    later, answered, batch_sizes = run(go())
    assert later[:, 0].tolist() == [4.0, 4.0] and batch_sizes == [4, 2]
    # Two calls of 0.3 s back to back (~0.6 s); waiting max_wait_s again after the first call
    # ended would make it ~0.85 s.
    assert answered < 0.75, answered


class CountingModel:
    """A stand-in model that records how many of its calls ever ran at the same moment."""

    def __init__(self, seconds: float):
        self.seconds, self.running, self.peak = seconds, 0, 0
        self._lock = threading.Lock()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        with self._lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
        time.sleep(self.seconds)
        with self._lock:
            self.running -= 1
        return batch.sum(axis=(1, 2, 3))[:, np.newaxis]


@pytest.mark.parametrize("concurrency", [1, 2, 3])
def test_at_most_concurrency_batches_run_at_once_and_each_caller_gets_its_rows(concurrency):
    async def go():
        model = CountingModel(0.2)
        executor = ThreadPoolExecutor(4)  # more threads than slots: the batcher must limit
        batcher = MicroBatcher(
            model, max_batch=2, max_wait_s=0.0, concurrency=concurrency, executor=executor
        )
        tiles = [np.full((2, 2, 2, 1), float(i)) for i in range(6)]  # six full batches at once
        results = await asyncio.gather(*(batcher.submit(t) for t in tiles))
        await batcher.close()
        executor.shutdown()
        return results, model.peak, batcher.batch_sizes

    results, peak, batch_sizes = run(go())
    assert [r[:, 0].tolist() for r in results] == [[4.0 * i] * 2 for i in range(6)]
    assert batch_sizes == [2] * 6
    assert peak == concurrency  # never more at once, and as many as allowed when six wait


def test_while_every_slot_is_busy_new_requests_form_one_batch():
    async def go():
        model = CountingModel(0.2)
        executor = ThreadPoolExecutor(2)
        batcher = MicroBatcher(
            model, max_batch=32, max_wait_s=0.0, concurrency=2, executor=executor
        )
        busy = [asyncio.ensure_future(batcher.submit(np.ones((1, 2, 2, 1)))) for _ in range(2)]
        await asyncio.sleep(0.01)
        busy.append(asyncio.ensure_future(batcher.submit(np.ones((1, 2, 2, 1)))))
        await asyncio.sleep(0.05)  # both slots busy: these queue up
        later = [batcher.submit(np.full((1, 2, 2, 1), float(i))) for i in range(5)]
        results = await asyncio.gather(*busy, *later)
        await batcher.close()
        executor.shutdown()
        return results, batcher.batch_sizes

    results, batch_sizes = run(go())
    assert batch_sizes == [2, 1, 5]  # the first two left together, then one, then the five
    assert [float(r[0, 0]) for r in results[3:]] == [4.0 * i for i in range(5)]


def test_concurrency_must_be_positive():
    async def go():
        MicroBatcher(tile_sums, max_batch=4, max_wait_s=0.0, concurrency=0)

    with pytest.raises(ValueError, match="concurrency must be >= 1"):
        run(go())


def test_close_answers_the_requests_it_holds_and_expects_then_refuses_new_ones():
    async def go():
        executor = ThreadPoolExecutor(2)
        batcher = MicroBatcher(
            tile_sums, max_batch=8, max_wait_s=0.0, concurrency=2, executor=executor
        )
        running = asyncio.ensure_future(batcher.submit(np.ones((1, 2, 2, 1))))
        reading = asyncio.ensure_future(announced(batcher, 2.0, 0.1))  # still being read
        await asyncio.sleep(0.01)
        await batcher.close()  # the model was evicted meanwhile
        with pytest.raises(RuntimeError, match="closed"):
            batcher.enqueue(np.ones((1, 2, 2, 1)))
        executor.shutdown()
        return running.result(), reading.result()

    running, reading = run(go())
    assert float(running[0, 0]) == 4.0 and float(reading[0, 0]) == 8.0
