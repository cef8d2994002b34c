"""MemoryBudget: what concurrent predict requests may hold at once, shared across threads; and
the API's Serving state: batchers of evicted models."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest
import tensorflow as tf

from anyband.serving import MemoryBudget, ServedModel
from anyband.settings import Settings
from service.serving import Serving


def test_a_reservation_holds_what_fits_refuses_the_rest_and_gives_all_back_on_exit():
    budget = MemoryBudget(100)
    with budget.reservation() as first:
        assert first.add(60) and budget.held == 60
        with budget.reservation() as second:
            assert second.add(40) and budget.held == 100
            assert not second.add(1)  # refused whole: nothing more is held
            assert second.nbytes == 40 and budget.held == 100
        assert budget.held == 60
        assert first.add(40) and not first.add(1)
    assert budget.held == 0


def test_a_reservation_is_given_back_when_its_request_fails():
    budget = MemoryBudget(100)
    with pytest.raises(RuntimeError), budget.reservation() as held:
        held.add(70)
        raise RuntimeError("a corrupt tile")
    assert budget.held == 0
    with budget.reservation() as held:
        assert held.add(100)


def test_concurrent_reservations_never_hold_more_than_the_total():
    budget, worst, lock = MemoryBudget(10), [0], threading.Lock()

    def request():
        for _ in range(2000):
            with budget.reservation() as held:
                for _ in range(3):
                    if held.add(2):
                        with lock:
                            worst[0] = max(worst[0], budget.held)

    threads = [threading.Thread(target=request) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert 6 <= worst[0] <= 10
    assert budget.held == 0


def test_nonsense_sizes_are_refused():
    with pytest.raises(ValueError, match=r"total must be >= 1 byte\. Received: total=0"):
        MemoryBudget(0)
    with MemoryBudget(10).reservation() as held, pytest.raises(ValueError, match="nbytes=-1"):
        held.add(-1)


def sums_model(model_id: str) -> ServedModel:
    """A served model whose answer identifies its input: the sum of each tile."""
    return ServedModel(
        model_id=model_id,
        model_input=None,
        classes=["sum"],
        tile_size=(2, 2),
        function=lambda x: tf.reduce_sum(x, axis=[1, 2, 3])[:, tf.newaxis],
        keras_model=None,
    )


def test_a_model_evicted_while_its_requests_are_read_still_answers_them(tmp_path):
    settings = Settings(
        data_dir=tmp_path, api_keys="", model_cache_size=1, predict_batch_hold_ms=300.0
    )

    async def go():
        serving = Serving(settings)
        first = serving.cache.get("first", lambda: sums_model("first"))
        batcher = serving.batcher(first)

        async def request():  # as the predict route makes one: announced, read, enqueued
            with batcher.expecting():
                await asyncio.sleep(0.1)  # its tiles are being received and read
                answer = batcher.enqueue(np.full((1, 2, 2, 1), 3.0, np.float32))
            return await answer

        reading = asyncio.ensure_future(request())
        await asyncio.sleep(0.01)
        second = serving.cache.get("second", lambda: sums_model("second"))  # evicts the first
        other = await serving.batcher(second).submit(np.ones((1, 2, 2, 1), np.float32))
        assert "first" not in serving._batchers
        answer = await asyncio.wait_for(reading, 5)  # before: never answered
        await serving.close()
        return answer, other

    answer, other = asyncio.run(go())
    assert float(answer[0, 0]) == 12.0 and float(other[0, 0]) == 4.0
