"""Prometheus metrics: families and values in the exposition text after observations and at scrape time."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from orfeas.service.batch_sizing import MemoryProbe, MemoryReading
from orfeas.service.metrics import ServiceMetrics
from tests.fakes import FakeProbe

GIB = 2**30


def scrape(metrics: ServiceMetrics) -> dict[tuple[str, tuple], float]:
    """Every sample as {(name, sorted labels): value}."""
    text, _ = metrics.render()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text.decode())
        for sample in family.samples
    }


def family_names(metrics: ServiceMetrics) -> set[str]:
    return {family.name for family in text_string_to_metric_families(metrics.render()[0].decode())}


@pytest.fixture
def counts() -> dict[str, int]:
    return {"queued": 4, "running": 2, "succeeded": 7}


@pytest.fixture
def metrics(counts: dict[str, int]) -> ServiceMetrics:
    reading = MemoryReading("cuda:0", "Test GPU", 24 * GIB, 18 * GIB, 6 * GIB, 0.5)
    return ServiceMetrics(CollectorRegistry(), lambda: dict(counts), FakeProbe(reading))


def test_families_are_exposed(metrics: ServiceMetrics) -> None:
    assert {
        "orfeas_jobs",
        "orfeas_queue_depth",
        "orfeas_stage_duration_seconds",
        "orfeas_job_duration_seconds",
        "orfeas_batch_size",
        "orfeas_jobs_finished",  # the parser drops the counter's _total suffix from the family name
        "orfeas_memory_used_bytes",
        "orfeas_memory_total_bytes",
        "orfeas_device_utilization",
    } <= family_names(metrics)


def test_job_counts_are_read_at_scrape_time(metrics: ServiceMetrics, counts: dict[str, int]) -> None:
    samples = scrape(metrics)
    assert samples[("orfeas_jobs", (("status", "succeeded"),))] == 7
    assert samples[("orfeas_queue_depth", ())] == 4
    counts["queued"] = 9
    assert scrape(metrics)[("orfeas_queue_depth", ())] == 9


def test_memory_is_read_at_scrape_time(metrics: ServiceMetrics) -> None:
    samples = scrape(metrics)
    assert samples[("orfeas_memory_used_bytes", (("device", "cuda:0"),))] == 6 * GIB
    assert samples[("orfeas_memory_total_bytes", (("device", "cuda:0"),))] == 24 * GIB
    assert samples[("orfeas_device_utilization", (("device", "cuda:0"),))] == 0.5


def test_profile_observations(metrics: ServiceMetrics) -> None:
    metrics.observe_profile({"stages": {"shape_generation": 2.0, "export": 0.004}, "total": 2.004})
    metrics.observe_profile({"stages": {"shape_generation": 4.0}, "total": 4.0})
    samples = scrape(metrics)
    shape = (("stage", "shape_generation"),)
    assert samples[("orfeas_stage_duration_seconds_count", shape)] == 2
    assert samples[("orfeas_stage_duration_seconds_sum", shape)] == 6.0
    assert samples[("orfeas_stage_duration_seconds_bucket", (("le", "0.005"), ("stage", "export")))] == 1
    assert samples[("orfeas_stage_duration_seconds_bucket", (("le", "2.5"), *shape))] == 1
    assert samples[("orfeas_job_duration_seconds_count", ())] == 2
    assert samples[("orfeas_job_duration_seconds_sum", ())] == pytest.approx(6.004)


def test_batch_sizes_and_finished_jobs(metrics: ServiceMetrics) -> None:
    for size in (1, 3, 8):
        metrics.observe_batch(size)
    metrics.job_finished("succeeded")
    metrics.job_finished("succeeded")
    metrics.job_finished("failed")
    samples = scrape(metrics)
    assert samples[("orfeas_batch_size_bucket", (("le", "2.0"),))] == 1
    assert samples[("orfeas_batch_size_bucket", (("le", "4.0"),))] == 2
    assert samples[("orfeas_batch_size_bucket", (("le", "8.0"),))] == 3
    assert samples[("orfeas_batch_size_sum", ())] == 12
    assert samples[("orfeas_jobs_finished_total", (("status", "succeeded"),))] == 2
    assert samples[("orfeas_jobs_finished_total", (("status", "failed"),))] == 1


def test_render_content_type(metrics: ServiceMetrics) -> None:
    _, content_type = metrics.render()
    assert content_type.startswith("text/plain")


def test_without_a_probe_no_memory_is_reported() -> None:
    metrics = ServiceMetrics(CollectorRegistry(), dict)
    names = family_names(metrics)
    assert "orfeas_jobs" in names
    assert "orfeas_memory_used_bytes" not in names
    assert scrape(metrics)[("orfeas_queue_depth", ())] == 0


def test_real_probe_reports_this_machine() -> None:
    samples = scrape(ServiceMetrics(CollectorRegistry(), dict, MemoryProbe("cpu")))
    assert samples[("orfeas_memory_total_bytes", (("device", "cpu"),))] > 0


def test_two_instances_do_not_clash_and_leave_the_default_registry_alone() -> None:
    ServiceMetrics(CollectorRegistry(), dict)
    ServiceMetrics(CollectorRegistry(), dict)
    assert REGISTRY.get_sample_value("orfeas_queue_depth") is None


def test_registering_does_not_query_the_store() -> None:
    def unreachable() -> dict[str, int]:
        raise AssertionError("count_by_status called before a scrape")

    ServiceMetrics(CollectorRegistry(), unreachable)
