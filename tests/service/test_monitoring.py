"""Monitoring: summary from profiles, bottlenecks, each advice rule, the utilization trend and the status body."""

from __future__ import annotations

import threading
import time

import pytest

from orfeas.pipeline.stages import Stage
from orfeas.service.batch_sizing import MemoryProbe, MemoryReading, plan_batch
from orfeas.service.monitoring import (
    STAGE_ADVICE,
    UtilizationSampler,
    bottleneck_severity,
    device_status,
    performance_summary,
    recommendations,
)
from tests.fakes import FakeProbe

GIB = 2**30


def profile(**stages: float) -> dict:
    return {"stages": stages, "total": sum(stages.values())}


def balanced_summary() -> dict:
    """Five stages of 20% each: below the bottleneck threshold, so no stage advice."""
    stages = ("image_loading", "background_removal", "shape_generation", "mesh_cleanup", "export")
    return performance_summary([profile(**dict.fromkeys(stages, 1.0))])


def gpu(used_fraction: float, utilization: float | None = 0.5) -> MemoryReading:
    total = 24 * GIB
    used = round(total * used_fraction)
    return MemoryReading("cuda:0", "Test GPU", total, total - used, used, utilization)


def cpu(used_fraction: float) -> MemoryReading:
    total = 16 * GIB
    used = round(total * used_fraction)
    return MemoryReading("cpu", "Test CPU", total, total - used, used, 0.1)


class StepClock:
    """A clock that advances one second per call."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def messages(advice: list[dict]) -> str:
    return " | ".join(item["message"] for item in advice)


def test_summary_of_no_profiles() -> None:
    summary = performance_summary([])
    assert summary == {
        "total_pipelines": 0,
        "avg_duration": None,
        "p50_duration": None,
        "p95_duration": None,
        "stage_breakdown": {},
        "slowest_stage": None,
        "bottlenecks": [],
    }


def test_summary_percentiles_on_known_durations() -> None:
    # totals 1..10 s: mean 5.5, median 5.5, p95 by linear interpolation 9 + 0.55 = 9.55
    profiles = [profile(shape_generation=float(n)) for n in range(1, 11)]
    summary = performance_summary(profiles)
    assert summary["total_pipelines"] == 10
    assert summary["avg_duration"] == 5.5
    assert summary["p50_duration"] == 5.5
    assert summary["p95_duration"] == 9.55


def test_stage_breakdown_shares_and_slowest() -> None:
    profiles = [
        profile(image_loading=1.0, shape_generation=6.0, export=1.0),
        profile(image_loading=1.0, shape_generation=2.0, export=1.0, mesh_extraction=0.0),
        profile(image_loading=2.0, shape_generation=1.0),  # skipped export: counts as 0 s
    ]
    summary = performance_summary(profiles)
    breakdown = summary["stage_breakdown"]
    assert list(breakdown) == ["image_loading", "shape_generation", "export", "mesh_extraction"]
    assert breakdown["shape_generation"]["avg_seconds"] == 3.0
    assert breakdown["shape_generation"]["share"] == 0.6  # 9 of 15 s
    assert breakdown["export"]["avg_seconds"] == round(2 / 3, 4)
    assert breakdown["image_loading"]["p95_seconds"] == 1.9  # [1, 1, 2]: rank 1.9 of 0..2
    assert sum(stage["avg_seconds"] for stage in breakdown.values()) == pytest.approx(summary["avg_duration"], 1e-3)
    assert summary["slowest_stage"] == "shape_generation"


def test_summary_without_stored_total_adds_the_stages() -> None:
    summary = performance_summary([{"stages": {"a": 1.0, "b": 2.0}}])
    assert summary["avg_duration"] == 3.0


def test_bottlenecks_by_severity() -> None:
    profiles = [profile(shape_generation=6.0, mesh_cleanup=3.0, export=1.0)]
    assert performance_summary(profiles)["bottlenecks"] == [
        {"stage": "shape_generation", "label": "shape generation", "share": 0.6, "severity": "high"},
        {"stage": "mesh_cleanup", "label": "mesh cleanup", "share": 0.3, "severity": "medium"},
    ]


@pytest.mark.parametrize(
    ("share", "seconds", "severity"),
    [(0.5, 2.0, "high"), (0.99, 1.0, "high"), (0.25, 5.0, "medium"), (0.2499, 50.0, None), (0.9, 0.99, None)],
)
def test_bottleneck_severity_thresholds(share: float, seconds: float, severity: str | None) -> None:
    assert bottleneck_severity(share, seconds) == severity


def test_a_short_stage_of_a_short_job_is_no_bottleneck() -> None:
    """The studio once flagged a 0.36 s export in a 0.77 s job: a large share of almost nothing."""
    summary = performance_summary([profile(image_loading=0.05, shape_generation=0.36, export=0.36)])
    assert summary["stage_breakdown"]["export"]["share"] > 0.45
    assert summary["bottlenecks"] == []
    [note] = recommendations(summary, None, None, None)
    assert note["message"] == "no stage needs a change of settings" and note["severity"] == "info"
    assert note["reason"] == "the slowest stage, shape generation, averages 0.36 s of 0.77 s per job over 1 job"


def test_no_data_says_so() -> None:
    advice = recommendations(performance_summary([]), None, None, None)
    assert len(advice) == 1
    assert "no finished jobs yet" in advice[0]["message"]
    assert advice[0]["severity"] == "info"


def test_no_data_note_disappears_once_jobs_finish() -> None:
    summary = performance_summary([profile(image_loading=1.0, shape_generation=1.0, export=1.0, texturing=1.0)])
    assert "no finished jobs" not in messages(recommendations(summary, None, None, None))


@pytest.mark.parametrize(
    ("stage", "page", "cli"),
    [
        ("shape_generation", "lower Resolution, or the generator's steps", "lower --resolution or -O steps=N"),
        ("mesh_extraction", "lower Resolution", "lower --resolution"),
        ("mesh_cleanup", "lower Faces or Resolution", "lower --faces or --resolution"),
        ("export", "tick fewer Formats", "ask for fewer formats (--format)"),
        ("texturing", "untick Texture", "pass --no-texture"),
        ("background_removal", "transparent background", "transparent background"),
    ],
)
def test_dominant_stage_gets_its_advice_for_the_page_and_for_the_cli(stage: str, page: str, cli: str) -> None:
    summary = performance_summary([profile(**{stage: 99.0, "image_loading": 1.0})])
    result = recommendations(summary, None, None, None)
    label = stage.replace("_", " ").capitalize()
    assert result[0]["message"].startswith(f"{label} is 99% of the time: ")
    assert page in result[0]["message"] and "--" not in result[0]["message"]
    assert result[0]["cli"].startswith(f"{label} is 99% of the time: ") and cli in result[0]["cli"]
    assert result[0]["severity"] == "high"
    assert result[0]["reason"] == f"{stage.replace('_', ' ')} averages 99.00 s of 100.00 s per job over 1 job"


def test_every_stage_has_advice_and_a_stage_name_from_elsewhere_gets_none() -> None:
    assert set(STAGE_ADVICE) == set(Stage)
    summary = performance_summary([profile(legacy_stage=99.0, image_loading=1.0)])
    assert summary["bottlenecks"][0]["stage"] == "legacy_stage"
    assert not any("Legacy stage" in advice["message"] for advice in recommendations(summary, None, None, None))


def test_reasons_count_jobs_in_the_plural() -> None:
    summary = performance_summary([profile(shape_generation=9.0, export=1.0)] * 3)
    assert recommendations(summary, None, None, None)[0]["reason"].endswith("over 3 jobs")


def test_balanced_stages_get_no_stage_advice() -> None:
    assert messages(recommendations(balanced_summary(), None, None, None)) == "no stage needs a change of settings"


def device_advice(summary: dict, reading, plan, trend) -> list[dict]:
    """The advice other than notes (the balanced summary's "no stage needs a change" one)."""
    return [item for item in recommendations(summary, reading, plan, trend) if item["severity"] != "info"]


def test_nearly_full_memory_warns() -> None:
    summary = balanced_summary()
    advice = device_advice(summary, gpu(0.97), None, None)
    assert messages(advice) == "GPU memory nearly full (97%): lower Resolution, or the server's ORFEAS_MAX_BATCH"
    assert advice[0]["cli"] == "GPU memory nearly full (97%): lower --resolution, or the server's ORFEAS_MAX_BATCH"
    assert advice[0]["severity"] == "high"
    assert device_advice(summary, gpu(0.9), None, None) == []
    assert "RAM memory nearly full" in messages(device_advice(summary, cpu(0.99), None, None))


def test_under_used_gpu_names_the_bound() -> None:
    summary = balanced_summary()
    reading = gpu(0.25)
    capped = plan_batch(reading.free_bytes, reading.used_bytes, reading.total_bytes, GIB, 40, max_batch=8)
    short_queue = plan_batch(reading.free_bytes, reading.used_bytes, reading.total_bytes, GIB, 2, max_batch=8)

    assert "raise the batch size" in messages(device_advice(summary, reading, None, None))
    capped_advice = messages(device_advice(summary, reading, capped, None))
    assert capped_advice.startswith("GPU under-used (25% of memory): raise ORFEAS_MAX_BATCH above 8")
    assert "fits 14 images" in capped_advice
    assert "limited by the queue (2 waiting)" in messages(device_advice(summary, reading, short_queue, None))


def test_busy_gpu_or_cpu_is_not_called_under_used() -> None:
    summary = balanced_summary()
    assert device_advice(summary, gpu(0.6), None, None) == []
    assert device_advice(summary, cpu(0.1), None, None) == []


def idle_trend(mean: float, samples: int = 30) -> dict:
    return {"samples": samples, "window_seconds": 60.0, "mean_utilization": mean, "direction": "steady"}


def test_idle_gpu_while_jobs_wait_advises_larger_batches() -> None:
    summary = balanced_summary()
    reading = gpu(0.7)  # memory is not under-used, so only the compute rule can speak
    waiting = plan_batch(reading.free_bytes, reading.used_bytes, reading.total_bytes, GIB, 20, max_batch=4)
    advice = device_advice(summary, reading, waiting, idle_trend(0.25))
    assert messages(advice) == (
        "GPU busy 25% of the time while jobs wait: raise ORFEAS_MAX_BATCH or the memory target"
        " (ORFEAS_TARGET_UTILIZATION)"
    )


@pytest.mark.parametrize(
    ("trend", "queue"),
    [
        (idle_trend(0.25), 2),  # idle only because there was no more work
        (idle_trend(0.8), 20),  # busy enough
        (idle_trend(0.25, samples=3), 20),  # too few samples to judge
    ],
)
def test_compute_rule_stays_silent_without_support(trend: dict, queue: int) -> None:
    summary = balanced_summary()
    reading = gpu(0.7)
    plan = plan_batch(reading.free_bytes, reading.used_bytes, reading.total_bytes, GIB, queue, max_batch=4)
    assert device_advice(summary, reading, plan, trend) == []


def test_recommendations_sorted_most_severe_first() -> None:
    summary = performance_summary([profile(shape_generation=7.0, mesh_cleanup=3.0)])
    severities = [item["severity"] for item in recommendations(summary, gpu(0.98), None, None)]
    assert severities == ["high", "high", "medium"]


@pytest.mark.parametrize(
    ("series", "direction"),
    [
        ([0.1, 0.2, 0.3, 0.4, 0.5], "rising"),
        ([0.9, 0.7, 0.6, 0.4, 0.2], "falling"),
        ([0.5, 0.52, 0.49, 0.51, 0.5], "steady"),
        ([0.5], "steady"),
    ],
)
def test_trend_direction(series: list[float], direction: str) -> None:
    sampler = UtilizationSampler(FakeProbe(gpu(0.5)))
    for second, utilization in enumerate(series):
        sampler.record(float(second), utilization, GIB * (second + 1))
    trend = sampler.trend()
    assert trend["direction"] == direction
    assert trend["samples"] == len(series)
    assert trend["last_utilization"] == series[-1]
    assert trend["mean_utilization"] == pytest.approx(sum(series) / len(series), abs=1e-4)
    assert trend["memory_used_mean"] == GIB * (len(series) + 1) / 2


def test_trend_threshold_is_the_change_across_the_window() -> None:
    sampler = UtilizationSampler(FakeProbe(gpu(0.5)))
    # +0.04 across 100 s is below the 0.05 threshold; +0.1 across 200 s is above it
    sampler.record(0.0, 0.50, 0)
    sampler.record(100.0, 0.54, 0)
    assert sampler.trend()["direction"] == "steady"
    sampler.record(200.0, 0.60, 0)
    assert sampler.trend()["direction"] == "rising"


def test_empty_trend() -> None:
    trend = UtilizationSampler(FakeProbe(gpu(0.5))).trend()
    assert trend["samples"] == 0
    assert trend["mean_utilization"] is None
    assert trend["memory_used_mean"] is None
    assert trend["direction"] == "steady"


def test_sampler_keeps_a_bounded_window_from_its_clock() -> None:
    sampler = UtilizationSampler(FakeProbe(gpu(0.5, utilization=0.3)), capacity=5, clock=StepClock())
    for _ in range(8):
        sampler.sample()
    trend = sampler.trend()
    assert trend["samples"] == 5
    assert trend["window_seconds"] == 4.0
    assert trend["mean_utilization"] == 0.3
    assert trend["direction"] == "steady"


def test_sampler_thread_starts_and_stops() -> None:
    probe = FakeProbe(gpu(0.5))
    sampler = UtilizationSampler(probe)
    sampler.start(interval_s=0.01)
    sampler.start(interval_s=0.01)  # a second start is a no-op
    deadline = time.monotonic() + 5
    while probe.reads < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    sampler.stop()
    reads = probe.reads
    assert reads >= 3
    time.sleep(0.05)
    assert probe.reads == reads


def test_latest_is_the_sampler_threads_reading() -> None:
    probe = FakeProbe(gpu(0.5, utilization=0.7))
    sampler = UtilizationSampler(probe)
    assert sampler.latest().utilization is None  # before the first sample: memory only
    sampler.sample()
    assert sampler.latest() == probe.reading


def test_requests_see_the_cpu_busy_while_the_sampler_runs() -> None:
    """psutil counts CPU time per calling thread since its previous call: a request thread's own first reading is
    0 however busy the machine is. `latest()` hands over the sampler thread's reading instead."""
    sampler = UtilizationSampler(MemoryProbe("cpu"))
    sampler.start(interval_s=0.05)
    try:
        deadline = time.monotonic() + 0.6
        while time.monotonic() < deadline:  # keep one core busy
            pass
    finally:
        sampler.stop()  # no sample lands between the request's read and the trend's
    seen: list[MemoryReading] = []
    worker = threading.Thread(target=lambda: seen.append(sampler.latest()))
    worker.start()
    worker.join()
    assert seen[0].utilization is not None and seen[0].utilization > 0
    assert seen[0].utilization == pytest.approx(sampler.trend()["last_utilization"], abs=0.005)  # trend rounds


def test_device_status_on_gpu() -> None:
    reading = gpu(0.25, utilization=0.4)
    plan = plan_batch(reading.free_bytes, reading.used_bytes, reading.total_bytes, GIB, 3)
    trend = {"samples": 0}
    status = device_status(reading, plan, trend)
    assert status["gpu"] is True
    assert status["device"] == "cuda:0"
    assert status["memory"] == {
        "total": 24 * GIB,
        "used": 6 * GIB,
        "free": 18 * GIB,
        "used_fraction": 0.25,
    }
    assert status["utilization"] == 0.4
    assert status["batch_size"] == 3
    assert status["batch_reason"] == plan.reason
    assert status["trend"] is trend
    assert status["note"] is None


def test_device_status_on_this_cpu_machine() -> None:
    status = device_status(MemoryProbe("cpu").read(), None, {"samples": 0})
    assert status["gpu"] is False
    assert status["device"] == "cpu"
    assert status["note"] == "no GPU found: CPU and RAM reported"
    assert status["batch_size"] is None
    assert status["memory"]["total"] > 0


def test_the_prometheus_gauge_reads_the_samplers_last_utilization():
    from prometheus_client import CollectorRegistry, generate_latest

    from orfeas.service.batch_sizing import MemoryProbe
    from orfeas.service.metrics import ServiceMetrics
    from orfeas.service.monitoring import UtilizationSampler

    sampler = UtilizationSampler(MemoryProbe("cpu"))
    sampler.sample()
    sampler.sample()
    registry = CollectorRegistry()
    ServiceMetrics(registry, lambda: {}, sampler)
    text = generate_latest(registry).decode()
    line = next(line for line in text.splitlines() if line.startswith("orfeas_device_utilization{"))
    assert float(line.rsplit(" ", 1)[1]) == pytest.approx(sampler.latest().utilization)
