"""Per-job timing of pipeline stages: the profile travels with the job and names its slowest stage."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from orfeas.pipeline.stages import Stage


@dataclass
class Profile:
    """Wall-clock seconds per stage, in the order the stages ran."""

    stages: dict[Stage, float] = field(default_factory=dict)

    @contextmanager
    def stage(self, name: Stage) -> Iterator[None]:
        """Time the body of a `with` block and add it to stage `name`."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - start)

    def add(self, name: Stage, seconds: float) -> None:
        """Add `seconds` to stage `name` (a batch's shared stage is charged to each job this way)."""
        self.stages[name] = self.stages.get(name, 0.0) + seconds

    @property
    def total(self) -> float:
        return sum(self.stages.values())

    def slowest(self) -> Stage | None:
        """Name of the stage that took longest, or None before any stage ran."""
        return max(self.stages, key=self.stages.__getitem__) if self.stages else None

    def to_dict(self) -> dict[str, Any]:
        """The profile as stored with the job and shown in reports: seconds and shares per stage, rounded."""
        total = self.total
        return {
            "stages": {name: round(sec, 4) for name, sec in self.stages.items()},
            "total": round(total, 4),
            "slowest_stage": self.slowest(),
            "shares": {name: round(sec / total, 4) if total else 0.0 for name, sec in self.stages.items()},
        }
