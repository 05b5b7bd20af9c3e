"""Stand-ins for what the machine would otherwise decide (device readings, the time), shared by the tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from orfeas.service.batch_sizing import MemoryReading


class FakeProbe:
    """A MemorySource that returns the given readings in turn, repeating the last one, and counts its reads."""

    def __init__(self, *readings: MemoryReading) -> None:
        self.readings = list(readings)
        self.reads = 0

    @property
    def reading(self) -> MemoryReading:
        return self.readings[0]

    @reading.setter
    def reading(self, value: MemoryReading) -> None:
        self.readings = [value]

    def read(self) -> MemoryReading:
        self.reads += 1
        return self.readings.pop(0) if len(self.readings) > 1 else self.readings[0]


class Clock:
    """A clock that stands still until moved; readable as a datetime (stores) or Unix seconds (the signer)."""

    def __init__(self, start: datetime = datetime(2026, 1, 1, tzinfo=UTC)) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def time(self) -> float:
        return self.now.timestamp()

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)
