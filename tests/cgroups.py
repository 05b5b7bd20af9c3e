"""Real memory cgroups for tests: made under /sys/fs/cgroup with a limit, removed afterwards, skipped where the test
cannot make one (not root, not Linux, no writable cgroup filesystem with the memory controller)."""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from orfeas.service.batch_sizing import CGROUP_ROOT, PROC_SELF_CGROUP


@contextmanager
def memory_cgroup(limit: int) -> Iterator[Path]:
    """A new cgroup limited to `limit` bytes of memory (v2 `memory.max`, else v1 `memory.limit_in_bytes`); its
    directory, where a process joins by writing its pid to `cgroup.procs`. Removed when the block ends (after the
    processes in it have exited)."""
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        pytest.skip("making a cgroup needs root on Linux")
    name = f"orfeas-test-{uuid.uuid4().hex[:8]}"
    reasons = []
    for directory, limit_file in memory_cgroup_candidates(name):
        try:
            directory.mkdir()
        except OSError as exc:
            reasons.append(f"{directory}: {exc}")
            continue
        try:
            (directory / limit_file).write_text(str(limit))
        except OSError as exc:
            reasons.append(f"{directory / limit_file}: {exc}")
            directory.rmdir()
            continue
        try:
            yield directory
        finally:
            remove_cgroup(directory)
        return
    pytest.skip(f"no writable memory cgroup: {reasons or 'no cgroup filesystem with the memory controller'}")


def memory_cgroup_candidates(name: str) -> list[tuple[Path, str]]:
    """Where a test cgroup with a memory limit could go: (directory, limit file), cgroup v2 first.

    v2 at the root of the hierarchy (a cgroup with processes cannot hand controllers to children); v1 inside our own
    memory cgroup, so the test's processes stay within what already accounts for them.
    """
    candidates = []
    for mount in (CGROUP_ROOT, CGROUP_ROOT / "unified"):
        control = mount / "cgroup.subtree_control"
        if control.is_file() and "memory" in control.read_text().split():
            candidates.append((mount / name, "memory.max"))
            break
    v1 = CGROUP_ROOT / "memory"
    own = own_memory_cgroup_v1()
    if (v1 / "cgroup.procs").is_file() and own is not None:
        parent = v1 / own.lstrip("/")
        candidates.append(((parent if parent.is_dir() else v1) / name, "memory.limit_in_bytes"))
    return candidates


def own_memory_cgroup_v1() -> str | None:
    """This process's cgroup path in the v1 memory hierarchy, from /proc/self/cgroup; None without one."""
    for line in PROC_SELF_CGROUP.read_text().splitlines():
        _hierarchy, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            return path
    return None


def remove_cgroup(directory: Path) -> None:
    """rmdir, retried briefly: the kernel lets go of a cgroup a moment after its last process exits."""
    for _ in range(50):
        try:
            directory.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.1)
    directory.rmdir()
