"""MemoryBudget: what concurrent predict requests may hold at once, shared across threads."""

from __future__ import annotations

import threading

import pytest

from anyband.serving import MemoryBudget


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
