"""Batch sizing: the pure rule, the memory probe on this machine and with stand-in GPU libraries, the optimizer."""

from __future__ import annotations

import logging
import sys
import types

import pytest

from orfeas.service.optimizer import (
    MemoryProbe,
    MemoryReading,
    ResourceOptimizer,
    format_bytes,
    plan_batch,
)

GIB = 2**30


class FakeProbe:
    """Returns readings from a list, repeating the last one."""

    def __init__(self, *readings: MemoryReading) -> None:
        self.readings = list(readings)

    def read(self) -> MemoryReading:
        return self.readings.pop(0) if len(self.readings) > 1 else self.readings[0]


def gpu_reading(total: int = 24 * GIB, used: int = 4 * GIB, utilization: float | None = 0.3) -> MemoryReading:
    return MemoryReading("cuda:0", "Test GPU", total, total - used, used, utilization)


def test_memory_bound_batch_states_the_numbers() -> None:
    # budget = 0.85 × 24 GiB − 4 GiB = 16.4 GiB; / 3 GiB = 5
    plan = plan_batch(20 * GIB, 4 * GIB, 24 * GIB, 3 * GIB, queue_length=12, max_batch=8)
    assert plan.size == 5
    assert plan.limited_by == "memory"
    assert plan.fits_in_memory == 5
    assert "16.4 GiB" in plan.reason and "3.0 GiB per image = 5" in plan.reason and "queue has 12" in plan.reason


def test_short_memory_still_runs_one_job_and_says_so() -> None:
    plan = plan_batch(1 * GIB, 20 * GIB, 24 * GIB, 3 * GIB, queue_length=4)
    assert plan.size == 1
    assert plan.fits_in_memory == 0
    assert "lone job always runs" in plan.reason


def test_queue_smaller_than_memory_allows() -> None:
    plan = plan_batch(80 * GIB, 0, 80 * GIB, 1 * GIB, queue_length=3)
    assert plan.size == 3
    assert plan.limited_by == "queue"
    assert plan.fits_in_memory == 68


def test_empty_queue_plans_one() -> None:
    assert plan_batch(80 * GIB, 0, 80 * GIB, 1 * GIB, queue_length=0).size == 1


def test_max_batch_caps_the_size() -> None:
    plan = plan_batch(80 * GIB, 0, 80 * GIB, 1 * GIB, queue_length=100, max_batch=8)
    assert plan.size == 8
    assert plan.limited_by == "max_batch"
    assert "capped at max_batch" in plan.reason


@pytest.mark.parametrize("used", [0, 7, 13])
def test_target_is_respected_exactly_at_the_boundary(used: int) -> None:
    # total 1000 B at target 0.85 allows 850 B in use; 10 B per image
    fits = (850 - used) // 10
    plan = plan_batch(1000 - used, used, 1000, 10, queue_length=1000, max_batch=1000)
    assert plan.size == fits
    assert used + plan.size * 10 <= 850 < used + (plan.size + 1) * 10


def test_exact_fit_at_the_target_is_allowed() -> None:
    # 3 images × 250 B + 100 B used = 850 B = 0.85 × 1000 B exactly
    assert plan_batch(900, 100, 1000, 250, queue_length=10).size == 3
    assert plan_batch(900, 101, 1000, 250, queue_length=10).size == 2


def test_free_memory_bounds_the_batch_below_the_target() -> None:
    # the target leaves 85 B but only 40 B are free (another process holds memory the reading counts as used)
    plan = plan_batch(40, 0, 100, 10, queue_length=10)
    assert plan.size == 4


def test_unknown_per_image_memory_does_not_limit() -> None:
    plan = plan_batch(GIB, 0, GIB, 0, queue_length=50, max_batch=16)
    assert plan.size == 16
    assert "unknown" in plan.reason


@pytest.mark.parametrize(
    "kwargs",
    [{"target_utilization": 0.0}, {"target_utilization": 1.5}, {"max_batch": 0}, {"per_image_bytes": -1}],
)
def test_invalid_inputs_raise(kwargs: dict) -> None:
    args = {"free_bytes": GIB, "used_bytes": 0, "total_bytes": GIB, "per_image_bytes": 1, "queue_length": 1}
    with pytest.raises(ValueError):
        plan_batch(**{**args, **kwargs})


@pytest.mark.parametrize(
    ("count", "text"), [(512, "512 B"), (2048, "2.0 KiB"), (3 * 2**20, "3.0 MiB"), (int(18.2 * GIB), "18.2 GiB")]
)
def test_format_bytes(count: int, text: str) -> None:
    assert format_bytes(count) == text


def test_probe_reads_this_machine() -> None:
    reading = MemoryProbe("cpu").read()
    assert reading.device == "cpu"
    assert reading.name
    assert reading.total_bytes > 0
    assert 0 <= reading.free_bytes <= reading.total_bytes
    assert reading.used_bytes + reading.free_bytes == reading.total_bytes
    assert reading.utilization is None or 0.0 <= reading.utilization <= 1.0


def test_probe_falls_back_to_cpu_without_gpu_libraries(monkeypatch: pytest.MonkeyPatch) -> None:
    # None in sys.modules makes `import torch` raise ImportError, as on a machine without it
    monkeypatch.setitem(sys.modules, "torch", None)
    monkeypatch.setitem(sys.modules, "pynvml", None)
    assert MemoryProbe("auto").read().device == "cpu"
    assert MemoryProbe("cuda:1").read().device == "cpu"


def test_probe_reads_cuda_through_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    cuda = types.SimpleNamespace(
        is_available=lambda: True,
        device_count=lambda: 2,
        mem_get_info=lambda index: (10 * GIB, 24 * GIB),
        get_device_name=lambda index: f"Fake RTX {index}",
        utilization=lambda index: 40,
    )
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=cuda))
    reading = MemoryProbe("cuda:1").read()
    assert reading == MemoryReading("cuda:1", "Fake RTX 1", 24 * GIB, 10 * GIB, 14 * GIB, 0.4)


def test_probe_survives_a_driver_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> bool:
        raise RuntimeError("CUDA driver initialization failed")

    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=types.SimpleNamespace(is_available=broken)))
    monkeypatch.setitem(sys.modules, "pynvml", None)
    assert MemoryProbe().read().device == "cpu"


def test_probe_reads_nvml_when_torch_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    nvml = types.SimpleNamespace(
        nvmlInit=lambda: calls.append("init"),
        nvmlShutdown=lambda: calls.append("shutdown"),
        nvmlDeviceGetCount=lambda: 1,
        nvmlDeviceGetHandleByIndex=lambda index: index,
        nvmlDeviceGetMemoryInfo=lambda handle: types.SimpleNamespace(total=8 * GIB, free=6 * GIB, used=2 * GIB),
        nvmlDeviceGetName=lambda handle: b"Fake T4",
        nvmlDeviceGetUtilizationRates=lambda handle: types.SimpleNamespace(gpu=25, memory=10),
    )
    monkeypatch.setitem(sys.modules, "torch", None)
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    reading = MemoryProbe().read()
    assert reading == MemoryReading("cuda:0", "Fake T4", 8 * GIB, 6 * GIB, 2 * GIB, 0.25)
    assert calls == ["init", "shutdown"]


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "CUDA:0", ""])
def test_probe_rejects_unknown_devices(device: str) -> None:
    with pytest.raises(ValueError):
        MemoryProbe(device)


def test_optimizer_plans_from_the_probe_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    optimizer = ResourceOptimizer(FakeProbe(gpu_reading()), target_utilization=0.85, max_batch=16)
    assert optimizer.last_plan is None
    with caplog.at_level(logging.INFO, logger="orfeas.service.optimizer"):
        plan = optimizer.plan(per_image_bytes=3 * GIB, queue_length=12)
    assert plan.size == 5
    assert optimizer.last_plan is plan
    record = caplog.records[-1]
    assert record.batch_size == 5
    assert record.per_image_bytes == 3 * GIB
    assert record.free_bytes == 20 * GIB
    assert plan.reason in record.getMessage()


def test_optimizer_follows_memory_as_it_changes() -> None:
    optimizer = ResourceOptimizer(FakeProbe(gpu_reading(used=2 * GIB), gpu_reading(used=18 * GIB)), max_batch=16)
    assert optimizer.plan(2 * GIB, 16).size == 9
    assert optimizer.plan(2 * GIB, 16).size == 1
