"""Batch sizing: the pure rule, the memory probe on this machine, with stand-in GPU libraries, with stand-in cgroup
files and inside a real cgroup with a memory limit, and the batch sizer."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from orfeas.service.batch_sizing import (
    BatchSizer,
    MemoryProbe,
    MemoryReading,
    format_bytes,
    plan_batch,
    read_cgroup_memory,
    read_host_memory,
)
from tests.cgroups import memory_cgroup
from tests.fakes import FakeProbe
from tests.synthetic import REPO

GIB = 2**30
MIB = 2**20
V1_NO_LIMIT = "9223372036854771712"  # what cgroup v1 reports for a cgroup without a limit


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


def test_batch_sizer_plans_from_the_probe_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    sizer = BatchSizer(FakeProbe(gpu_reading()), target_utilization=0.85, max_batch=16)
    assert sizer.last_plan is None
    with caplog.at_level(logging.INFO, logger="orfeas.service.batch_sizing"):
        plan = sizer.plan(per_image_bytes=3 * GIB, queue_length=12)
    assert plan.size == 5
    assert sizer.last_plan is plan
    record = caplog.records[-1]
    assert record.batch_size == 5
    assert record.per_image_bytes == 3 * GIB
    assert record.free_bytes == 20 * GIB
    assert plan.reason in record.getMessage()


def test_batch_sizer_follows_memory_as_it_changes() -> None:
    sizer = BatchSizer(FakeProbe(gpu_reading(used=2 * GIB), gpu_reading(used=18 * GIB)), max_batch=16)
    assert sizer.plan(2 * GIB, 16).size == 9
    assert sizer.plan(2 * GIB, 16).size == 1


def write_files(directory: Path, files: dict[str, str]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text)


def cgroup_v2(root: Path, path: str, limit: str, current: int, inactive_file: int = 0) -> None:
    write_files(root, {"cgroup.procs": "", "cgroup.controllers": "cpu memory"})
    write_files(
        root / path,
        {
            "cgroup.procs": "",
            "memory.max": f"{limit}\n",
            "memory.current": f"{current}\n",
            "memory.stat": f"anon {current}\nfile 0\ninactive_file {inactive_file}\nactive_file 0\n",
        },
    )


def cgroup_v1(root: Path, path: str, limit: str, usage: int, inactive_file: int = 0) -> None:
    write_files(
        root / "memory", {"cgroup.procs": "", "memory.limit_in_bytes": V1_NO_LIMIT, "memory.usage_in_bytes": "0"}
    )
    write_files(
        root / "memory" / path,
        {
            "cgroup.procs": "",
            "memory.limit_in_bytes": f"{limit}\n",
            "memory.usage_in_bytes": f"{usage}\n",
            "memory.stat": f"cache 0\ninactive_file 7\ntotal_inactive_file {inactive_file}\n",
        },
    )


def membership(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "proc_self_cgroup"
    path.write_text(text)
    return path


def test_cgroup_v2_limit_bounds_host_memory(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    cgroup_v2(root, "app.slice/orfeas.service", str(GIB), current=512 * MIB, inactive_file=100 * MIB)
    proc = membership(tmp_path, "0::/app.slice/orfeas.service\n")

    limit = read_cgroup_memory(root, proc)
    assert (limit.limit_bytes, limit.usage_bytes) == (GIB, 412 * MIB)  # inactive file cache is reclaimable
    assert limit.available_bytes == 612 * MIB
    reading = read_host_memory("CPU", root, proc)
    host = psutil.virtual_memory()
    assert reading.total_bytes == min(host.total, GIB)
    assert reading.free_bytes <= 612 * MIB
    assert reading.used_bytes == reading.total_bytes - reading.free_bytes


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_no_cgroup_limit_leaves_host_memory_as_it_is(tmp_path: Path, version: str) -> None:
    root = tmp_path / "cgroup"
    if version == "v2":
        cgroup_v2(root, "a", "max", current=GIB)
        proc = membership(tmp_path, "0::/a\n")
    else:
        cgroup_v1(root, "a", V1_NO_LIMIT, usage=GIB)
        proc = membership(tmp_path, "5:memory:/a\n0::/\n")
    assert read_cgroup_memory(root, proc) is None
    assert read_host_memory("CPU", root, proc).total_bytes == psutil.virtual_memory().total


def test_a_parent_cgroups_tighter_limit_wins(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    cgroup_v2(root, "outer", str(512 * MIB), current=100 * MIB)
    cgroup_v2(root, "outer/inner", str(4 * GIB), current=50 * MIB)
    limit = read_cgroup_memory(root, membership(tmp_path, "0::/outer/inner\n"))
    assert (limit.limit_bytes, limit.usage_bytes, limit.path) == (512 * MIB, 100 * MIB, root / "outer")


def test_cgroup_v1_limit_bounds_host_memory(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    cgroup_v1(root, "docker/abc", str(2 * GIB), usage=GIB, inactive_file=GIB // 4)
    # hybrid layout: memory on v1, an empty v2 hierarchy beside it
    write_files(root / "unified", {"cgroup.procs": "", "cgroup.controllers": ""})
    proc = membership(tmp_path, "9:cpu,cpuacct:/docker/abc\n4:memory:/docker/abc\n0::/docker/abc\n")
    limit = read_cgroup_memory(root, proc)
    assert (limit.limit_bytes, limit.usage_bytes) == (2 * GIB, 3 * GIB // 4)
    assert read_host_memory("CPU", root, proc).total_bytes == min(psutil.virtual_memory().total, 2 * GIB)


def test_a_container_sees_its_own_cgroup_at_the_mount(tmp_path: Path) -> None:
    # without a cgroup namespace the listed path is the host's, while the container's cgroup is the mount itself
    root = tmp_path / "cgroup"
    write_files(
        root / "memory",
        {"cgroup.procs": "", "memory.limit_in_bytes": str(GIB), "memory.usage_in_bytes": str(GIB // 2)},
    )
    limit = read_cgroup_memory(root, membership(tmp_path, "4:memory:/docker/0123abcd\n"))
    assert (limit.limit_bytes, limit.path) == (GIB, root / "memory")


def test_missing_or_unreadable_cgroup_files_give_no_limit(tmp_path: Path) -> None:
    assert read_cgroup_memory(tmp_path, tmp_path / "no_such_file") is None
    assert read_cgroup_memory(tmp_path / "nothing", membership(tmp_path, "0::/a\n")) is None
    root = tmp_path / "cgroup"
    cgroup_v2(root, "a", "not a number", current=1)
    assert read_cgroup_memory(root, membership(tmp_path, "0::/a\n")) is None


def test_the_batch_shrinks_to_what_the_cgroup_limit_allows(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    cgroup_v2(root, "worker", str(GIB), current=256 * MIB)
    probe = MemoryProbe("cpu", cgroup_root=root, proc_cgroup=membership(tmp_path, "0::/worker\n"))
    plan = BatchSizer(probe, max_batch=64).plan(per_image_bytes=64 * MIB, queue_length=64)
    # budget = min(0.85 × 1 GiB − 256 MiB, 768 MiB free) = 614.4 MiB; / 64 MiB = 9
    assert plan.size == 9 and plan.limited_by == "memory"
    assert "1.0 GiB total" in plan.reason
    host = BatchSizer(MemoryProbe("cpu", cgroup_root=tmp_path / "none"), max_batch=64).plan(64 * MIB, 64)
    if psutil.virtual_memory().available > 2 * GIB:
        assert host.size > plan.size


# Run inside the test's cgroup: waits until it has been moved there, then reports what the probe and batch sizer see.
PROBE_IN_CGROUP = """
import json, sys
from orfeas.service.batch_sizing import BatchSizer, MemoryProbe
sys.stdin.readline()
probe = MemoryProbe("cpu")
reading = probe.read()
plan = BatchSizer(probe, max_batch=64).plan(per_image_bytes=32 * 2**20, queue_length=64)
print(json.dumps({"total": reading.total_bytes, "free": reading.free_bytes, "size": plan.size}))
"""


@pytest.fixture
def limited_cgroup() -> Iterator[tuple[Path, int]]:
    """A real memory cgroup with a 256 MiB limit, made for the test (skipped where it cannot be)."""
    with memory_cgroup(256 * MIB) as directory:
        yield directory, 256 * MIB


def test_a_process_in_a_memory_limited_cgroup_plans_batches_within_the_limit(limited_cgroup) -> None:
    directory, limit = limited_cgroup
    env = {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + str(REPO)}
    child = subprocess.Popen(
        [sys.executable, "-c", PROBE_IN_CGROUP], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        (directory / "cgroup.procs").write_text(str(child.pid))
        output, _ = child.communicate("go\n", timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 0
    seen = json.loads(output)
    assert seen["total"] == limit and seen["free"] <= limit
    # at most 0.85 × 256 MiB / 32 MiB = 6 images, whatever the host has free
    assert 1 <= seen["size"] <= 6
    host = BatchSizer(MemoryProbe("cpu"), max_batch=64).plan(per_image_bytes=32 * MIB, queue_length=64)
    if host.free_bytes > 2 * GIB:
        assert host.size > seen["size"]


def test_auto_probe_leaves_torch_unimported() -> None:
    # a weight-free server never needs torch: its utilization sampler must not import it to read memory
    code = (
        "import sys; from orfeas.service.batch_sizing import MemoryProbe; "
        "MemoryProbe('auto').read(); print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
