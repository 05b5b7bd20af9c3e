"""The shared memory budget: concurrent holders never exceed it, and an oversized request runs alone."""

from __future__ import annotations

import threading
import time

from orfeas.service.budget import MemoryBudget


def test_concurrent_holders_stay_within_the_capacity():
    budget = MemoryBudget(100)
    peak = 0
    lock = threading.Lock()

    def hold(amount: int) -> None:
        nonlocal peak
        with budget.hold(amount):
            with lock:
                peak = max(peak, budget.in_use)
            time.sleep(0.01)

    threads = [threading.Thread(target=hold, args=(amount,)) for amount in [40, 60, 30, 70, 500, 10] * 4]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert peak <= 100
    assert budget.in_use == 0


def test_a_request_larger_than_the_capacity_is_admitted_alone():
    budget = MemoryBudget(100)
    with budget.hold(10**9):
        assert budget.in_use == 100
    assert budget.in_use == 0
