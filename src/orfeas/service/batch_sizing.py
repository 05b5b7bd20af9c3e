"""Batch sizing from device memory: read what is free, then fit as many images as the memory target allows.

`plan_batch` is the rule (a pure function); `MemoryProbe` reads the device (CUDA through torch, else NVML, else
host RAM); `BatchSizer` joins them for the worker and remembers its last plan for the status endpoint.
torch and pynvml are optional: they are imported when a reading is taken and skipped when missing.

Host RAM is read as the smaller of what the machine has free and what the process's cgroup allows (v2 `memory.max`,
v1 `memory.limit_in_bytes`, on its own cgroup and every ancestor): in a container with a memory limit psutil reports
the host's RAM, and the kernel's OOM killer ends a batch sized from it with a SIGKILL the worker never sees.
"""

from __future__ import annotations

import logging
import platform
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import psutil

logger = logging.getLogger(__name__)

_DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_SELF_CGROUP = Path("/proc/self/cgroup")
# cgroup v1 writes "no limit" as the largest page-aligned 64-bit count; any limit this large is none.
_NO_CGROUP_LIMIT = 2**62


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

    def __init__(
        self, device: str = "auto", cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_SELF_CGROUP
    ) -> None:
        if not _DEVICE_PATTERN.match(device):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda:N', got {device!r}")
        self.device = device
        self.index = int(device.split(":")[1]) if ":" in device else 0
        self.cgroup_root = Path(cgroup_root)
        self.proc_cgroup = Path(proc_cgroup)
        self._cpu_name: str | None = None

    def read(self) -> MemoryReading:
        if self.device != "cpu":
            # "auto" asks torch only once something else imported it: importing it to read memory would cost a
            # weight-free server's processes a second of CPU and hundreds of MiB each
            use_torch = self.device != "auto" or "torch" in sys.modules
            reading = (read_torch_cuda(self.index) if use_torch else None) or read_nvml(self.index)
            if reading is not None:
                return reading
        if self._cpu_name is None:
            self._cpu_name = cpu_model_name()
        return read_host_memory(self._cpu_name, self.cgroup_root, self.proc_cgroup)


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


def read_host_memory(
    name: str = "CPU", cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_SELF_CGROUP
) -> MemoryReading:
    """Host RAM (available counts as free) within the process's cgroup memory limit, and CPU load since the
    previous call: total = min(RAM, limit), free = min(RAM available, limit − usage)."""
    memory = psutil.virtual_memory()
    total, free = int(memory.total), int(memory.available)
    cgroup = read_cgroup_memory(cgroup_root, proc_cgroup)
    if cgroup is not None:
        total, free = min(total, cgroup.limit_bytes), min(free, cgroup.available_bytes)
    # interval=None compares with the previous call; the first call in a process reads 0.
    utilization = psutil.cpu_percent(interval=None) / 100
    return MemoryReading("cpu", name, total, free, total - free, utilization)


@dataclass(frozen=True)
class CgroupMemory:
    """The tightest memory limit among a process's cgroup and its ancestors: the limit, what is charged against
    it (less the inactive file cache, which the kernel reclaims before it kills), and where it was read."""

    limit_bytes: int
    usage_bytes: int
    path: Path

    @property
    def available_bytes(self) -> int:
        return max(self.limit_bytes - self.usage_bytes, 0)


def read_cgroup_memory(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_SELF_CGROUP) -> CgroupMemory | None:
    """The memory limit that leaves this process the least room, from cgroup v2 and v1 under `root`; None when no
    cgroup sets one (or none can be read: not Linux, no cgroup filesystem)."""
    try:
        membership = Path(proc_cgroup).read_text()
    except OSError:
        return None
    readings = [
        reading
        for directory, files in _memory_cgroup_dirs(Path(root), membership)
        for reading in [_read_cgroup_dir(directory, files)]
        if reading is not None
    ]
    return min(readings, key=lambda reading: reading.available_bytes, default=None)


@dataclass(frozen=True)
class _CgroupFiles:
    limit: str
    usage: str
    inactive_file: str  # the key in memory.stat


_V2_FILES = _CgroupFiles("memory.max", "memory.current", "inactive_file")
_V1_FILES = _CgroupFiles("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")


def _memory_cgroup_dirs(root: Path, membership: str) -> list[tuple[Path, _CgroupFiles]]:
    """The directories of the process's memory cgroups, its own first, then each ancestor up to the mount.

    /proc/self/cgroup lines read "0::/path" (v2) or "N:memory,...:/path" (v1). v2 is mounted at `root` itself, or
    at `root`/unified beside v1 controllers (hybrid); v1's memory controller at `root`/memory. A container without
    a cgroup namespace lists its cgroup's path from the host's root, but has its own cgroup mounted as the root;
    then the path does not exist below the mount, and the mount itself is the process's cgroup.
    """
    dirs: list[tuple[Path, _CgroupFiles]] = []
    for line in membership.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "":
            mounts, files = [root, root / "unified"], _V2_FILES
        elif "memory" in controllers.split(","):
            mounts, files = [root / "memory"], _V1_FILES
        else:
            continue
        for mount in mounts:
            if not (mount / "cgroup.procs").is_file():
                continue
            own = mount / path.strip().lstrip("/")
            directory = own if own.is_dir() and own.resolve().is_relative_to(mount.resolve()) else mount
            while True:
                dirs.append((directory, files))
                if directory == mount:
                    break
                directory = directory.parent
            break
    return dirs


def _read_cgroup_dir(directory: Path, files: _CgroupFiles) -> CgroupMemory | None:
    """The limit and usage in one cgroup directory; None without a limit ("max", or v1's near-2**63 "none")."""
    try:
        limit_text = (directory / files.limit).read_text().strip()
        usage = int((directory / files.usage).read_text().strip())
    except (OSError, ValueError):
        return None
    if limit_text == "max" or not limit_text.isdigit() or int(limit_text) >= _NO_CGROUP_LIMIT:
        return None
    return CgroupMemory(int(limit_text), max(usage - _memory_stat(directory, files.inactive_file), 0), directory)


def _memory_stat(directory: Path, key: str) -> int:
    """One value of the cgroup's memory.stat (bytes), 0 when missing."""
    try:
        for line in (directory / "memory.stat").read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key and value.strip().isdigit():
                return int(value)
    except OSError:
        pass
    return 0


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


class BatchSizer:
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
