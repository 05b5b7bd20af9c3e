"""A shared memory budget: concurrent requests that each need a lot of memory for a moment take turns."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class MemoryBudget:
    """Lets the threads of one process hold at most `capacity` bytes at once between them.

    A request for more than the whole capacity is admitted alone, so nothing waits forever; the others wait.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._in_use = 0
        self._condition = threading.Condition()

    @property
    def in_use(self) -> int:
        return self._in_use

    @contextmanager
    def hold(self, amount: int) -> Iterator[None]:
        amount = max(0, min(amount, self.capacity))
        with self._condition:
            self._condition.wait_for(lambda: self._in_use + amount <= self.capacity)
            self._in_use += amount
        try:
            yield
        finally:
            with self._condition:
                self._in_use -= amount
                self._condition.notify_all()
