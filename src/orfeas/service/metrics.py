"""Prometheus metrics of the service, on a registry the app factory owns (never the process-wide default).

Events (stage timings, batch sizes, finished jobs) are recorded as they happen; job counts by status and device
memory are read at scrape time, so they are always current and need no bookkeeping.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from orfeas.service.batch_sizing import MemorySource

# Stage durations run from about a millisecond (image loading) to minutes (diffusion on a slow GPU).
STAGE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60, 120, 300)
# Whole jobs: from a fraction of a second (inflate, small grid) to the 3-minute cold start of the brief's baseline.
JOB_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 45, 60, 75, 90, 120, 180, 300, 600)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32)


class StateCollector(Collector):
    """Job counts by status, queue depth and device memory, read when Prometheus scrapes."""

    def __init__(
        self, count_by_status: Callable[[], dict[str, int]], probe: MemorySource | None, queued_status: str
    ) -> None:
        self.count_by_status = count_by_status
        self.probe = probe
        self.queued_status = queued_status

    def describe(self) -> Iterator[GaugeMetricFamily]:
        # Names only, so registering checks for clashes without querying the store or the device.
        yield from self._families()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        jobs, queue, used, total, utilization = self._families()
        counts = self.count_by_status()
        for status, count in sorted(counts.items()):
            jobs.add_metric([status], count)
        queue.add_metric([], counts.get(self.queued_status, 0))
        yield jobs
        yield queue
        if self.probe is not None:
            reading = self.probe.read()
            used.add_metric([reading.device], reading.used_bytes)
            total.add_metric([reading.device], reading.total_bytes)
            yield used
            yield total
            if reading.utilization is not None:
                utilization.add_metric([reading.device], reading.utilization)
                yield utilization

    def _families(self) -> tuple[GaugeMetricFamily, ...]:
        return (
            GaugeMetricFamily("orfeas_jobs", "Jobs in the store by status.", labels=["status"]),
            GaugeMetricFamily("orfeas_queue_depth", "Jobs waiting to run."),
            GaugeMetricFamily("orfeas_memory_used_bytes", "Device memory in use.", labels=["device"]),
            GaugeMetricFamily("orfeas_memory_total_bytes", "Device memory in all.", labels=["device"]),
            GaugeMetricFamily("orfeas_device_utilization", "Device busy share (0-1).", labels=["device"]),
        )


class ServiceMetrics:
    """The service's metrics on `registry`; `count_by_status` and `probe` are called at each scrape."""

    def __init__(
        self,
        registry: CollectorRegistry,
        count_by_status: Callable[[], dict[str, int]],
        probe: MemorySource | None = None,
        queued_status: str = "queued",
    ) -> None:
        self.registry = registry
        self.stage_duration = Histogram(
            "orfeas_stage_duration_seconds",
            "Seconds per pipeline stage and job.",
            ["stage"],
            buckets=STAGE_BUCKETS,
            registry=registry,
        )
        self.job_duration = Histogram(
            "orfeas_job_duration_seconds", "Seconds per job, all stages.", buckets=JOB_BUCKETS, registry=registry
        )
        self.batch_size = Histogram(
            "orfeas_batch_size", "Jobs per generator batch.", buckets=BATCH_BUCKETS, registry=registry
        )
        self.jobs_finished = Counter(
            "orfeas_jobs_finished", "Jobs that reached a final status.", ["status"], registry=registry
        )
        registry.register(StateCollector(count_by_status, probe, queued_status))

    def observe_profile(self, profile: Mapping[str, Any]) -> None:
        """Record a finished job's stage timings and total (a `Profile.to_dict()`)."""
        stages = profile.get("stages", {})
        for stage, seconds in stages.items():
            self.stage_duration.labels(stage=stage).observe(seconds)
        total = profile.get("total")
        self.job_duration.observe(total if total is not None else sum(stages.values()))

    def observe_batch(self, size: int) -> None:
        self.batch_size.observe(size)

    def job_finished(self, status: str) -> None:
        self.jobs_finished.labels(status=status).inc()

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type, for `GET /metrics`."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
