"""Batch sizing from device memory: read what is free, then fit as many images as the memory target allows.

`plan_batch` is the rule (a pure function); `MemoryProbe` reads the device (CUDA through torch, else NVML, else
host RAM); `ResourceOptimizer` joins them for the worker and remembers its last plan for the status endpoint.
torch and pynvml are optional: they are imported when a reading is taken and skipped when missing.
"""

from __future__ import annotations

import logging
import platform
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import psutil

logger = logging.getLogger(__name__)

_DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


@dataclass(frozen=True)
class MemoryReading:
    """One reading of a device's memory (bytes) and how busy it is (0-1, None when unknown)."""

    device: str
    name: str
    total_bytes: int
    free_bytes: int
    used_bytes: int
    utilization: float | None

    @property
    def is_gpu(self) -> bool:
        return self.device != "cpu"

    @property
    def used_fraction(self) -> float:
        return self.used_bytes / self.total_bytes if self.total_bytes else 0.0


class MemorySource(Protocol):
    """Anything that gives a memory reading: `MemoryProbe`, or a fake in tests."""

    def read(self) -> MemoryReading: ...


class MemoryProbe:
    """Reads memory of the chosen device: "auto" (first GPU if any, else CPU), "cpu", or "cuda:N".

    A GPU that cannot be read (no torch, no pynvml, no driver) gives a CPU reading instead, so callers always get
    one; `reading.device` says which it is.
    """

    def __init__(self, device: str = "auto") -> None:
        if not _DEVICE_PATTERN.match(device):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda:N', got {device!r}")
        self.device = device
        self.index = int(device.split(":")[1]) if ":" in device else 0
        self._cpu_name: str | None = None

    def read(self) -> MemoryReading:
        if self.device != "cpu":
            reading = read_torch_cuda(self.index) or read_nvml(self.index)
            if reading is not None:
                return reading
        if self._cpu_name is None:
            self._cpu_name = cpu_model_name()
        return read_host_memory(self._cpu_name)


def read_torch_cuda(index: int) -> MemoryReading | None:
    """Memory of CUDA device `index` through torch, or None when torch or the device is missing."""
    try:
        import torch

        if not torch.cuda.is_available() or index >= torch.cuda.device_count():
            return None
        free, total = torch.cuda.mem_get_info(index)
        name = torch.cuda.get_device_name(index)
    except ImportError:
        return None
    except Exception as exc:  # driver errors come in many types (RuntimeError, AssertionError, CUDA errors)
        logger.debug("torch could not read cuda:%d: %s", index, exc)
        return None
    return MemoryReading(f"cuda:{index}", name, int(total), int(free), int(total - free), _torch_utilization(index))


def _torch_utilization(index: int) -> float | None:
    # torch.cuda.utilization asks NVML, which may be missing even when CUDA works.
    try:
        import torch

        return torch.cuda.utilization(index) / 100
    except Exception:
        return None


def read_nvml(index: int) -> MemoryReading | None:
    """Memory and utilization of GPU `index` through NVML (pynvml), or None when pynvml or the device is missing."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except ImportError:
        return None
    except Exception as exc:
        logger.debug("NVML is not available: %s", exc)
        return None
    try:
        if index >= pynvml.nvmlDeviceGetCount():
            return None
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
        name = pynvml.nvmlDeviceGetName(handle)
        utilization = pynvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100
    except Exception as exc:
        logger.debug("NVML could not read device %d: %s", index, exc)
        return None
    finally:
        pynvml.nvmlShutdown()
    name = name.decode() if isinstance(name, bytes) else str(name)
    return MemoryReading(f"cuda:{index}", name, int(memory.total), int(memory.free), int(memory.used), utilization)


def read_host_memory(name: str = "CPU") -> MemoryReading:
    """Host RAM (available counts as free) and CPU load since the previous call."""
    memory = psutil.virtual_memory()
    # interval=None compares with the previous call; the first call in a process reads 0.
    utilization = psutil.cpu_percent(interval=None) / 100
    return MemoryReading(
        "cpu", name, int(memory.total), int(memory.available), int(memory.total - memory.available), utilization
    )


def cpu_model_name() -> str:
    """The CPU's model name from /proc/cpuinfo or the platform, else "CPU"."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "CPU"


@dataclass(frozen=True)
class BatchPlan:
    """A chosen batch size, the sentence that explains it, and the numbers it came from.

    `fits_in_memory` is how many images the memory budget holds (may be 0 or more than `size`); `limited_by` names
    the bound that set the size: "memory", "queue" or "max_batch".
    """

    size: int
    reason: str
    free_bytes: int
    used_bytes: int
    total_bytes: int
    per_image_bytes: int
    queue_length: int
    target: float
    max_batch: int
    fits_in_memory: int
    limited_by: str


def plan_batch(
    free_bytes: int,
    used_bytes: int,
    total_bytes: int,
    per_image_bytes: int,
    queue_length: int,
    target_utilization: float = 0.85,
    max_batch: int = 16,
) -> BatchPlan:
    """The largest n with used + n × per_image ≤ target × total and n × per_image ≤ free, within the queue and cap.

    The result is at least 1: a lone job always runs, even when memory looks short (the reason says so). A
    per-image estimate of 0 means unknown, and memory then does not limit the batch.
    """
    if not 0 < target_utilization <= 1:
        raise ValueError(f"target_utilization must be in (0, 1], got {target_utilization}")
    if max_batch < 1:
        raise ValueError(f"max_batch must be at least 1, got {max_batch}")
    if per_image_bytes < 0:
        raise ValueError(f"per_image_bytes must not be negative, got {per_image_bytes}")

    # Rounded to the byte so that a batch that lands exactly on the target is allowed despite float error.
    budget = min(round(target_utilization * total_bytes) - used_bytes, free_bytes)
    waiting = max(queue_length, 1)
    if per_image_bytes == 0:
        fits = max_batch
        memory_part = "per-image memory unknown, so memory does not limit the batch"
    else:
        fits = max(budget // per_image_bytes, 0)
        memory_part = (
            f"budget {format_bytes(budget)} ({target_utilization:.2f} target × {format_bytes(total_bytes)} total"
            f" − {format_bytes(used_bytes)} used, at most {format_bytes(free_bytes)} free)"
            f" / {format_bytes(per_image_bytes)} per image = {fits}"
        )

    size = max(min(fits, waiting, max_batch), 1)
    if fits < 1:
        limited_by, outcome = "memory", "memory is short, but a lone job always runs: batch of 1"
    elif size == fits and fits <= min(waiting, max_batch):
        limited_by, outcome = "memory", f"batch of {size}"
    elif size == waiting and waiting <= max_batch:
        limited_by, outcome = "queue", f"batch of {size}"
    else:
        limited_by, outcome = "max_batch", f"capped at max_batch {max_batch}: batch of {size}"
    reason = f"{memory_part}; queue has {queue_length}; {outcome}"
    return BatchPlan(
        size=size,
        reason=reason,
        free_bytes=free_bytes,
        used_bytes=used_bytes,
        total_bytes=total_bytes,
        per_image_bytes=per_image_bytes,
        queue_length=queue_length,
        target=target_utilization,
        max_batch=max_batch,
        fits_in_memory=fits,
        limited_by=limited_by,
    )


def format_bytes(count: float) -> str:
    """Bytes in the largest binary unit that keeps the number at least 1: "3.1 GiB", "512 B"."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(count) >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count:.0f} B"


class ResourceOptimizer:
    """Sizes each batch from a fresh memory reading; keeps the last plan for the status endpoint."""

    def __init__(self, probe: MemorySource, target_utilization: float = 0.85, max_batch: int = 16) -> None:
        self.probe = probe
        self.target_utilization = target_utilization
        self.max_batch = max_batch
        self.last_plan: BatchPlan | None = None

    def plan(self, per_image_bytes: int, queue_length: int) -> BatchPlan:
        """Read the device and choose how many of the `queue_length` waiting jobs to run together."""
        reading = self.probe.read()
        plan = plan_batch(
            reading.free_bytes,
            reading.used_bytes,
            reading.total_bytes,
            per_image_bytes,
            queue_length,
            self.target_utilization,
            self.max_batch,
        )
        logger.info(
            "batch of %d on %s: %s",
            plan.size,
            reading.device,
            plan.reason,
            extra={
                "batch_size": plan.size,
                "per_image_bytes": per_image_bytes,
                "free_bytes": reading.free_bytes,
                "queue_length": queue_length,
                "device": reading.device,
            },
        )
        self.last_plan = plan
        return plan
