"""Writing files so that a reader (another process, another machine on a shared folder) sees a whole file or
none, and a crash or power loss leaves no half-written one: the one home of that for the pipeline and the store."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def write_atomically(path: Path, data: bytes) -> None:
    """Write `data` to a temporary name beside `path`, sync it, rename it into place and sync the folder."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    sync_directory(path.parent)


def write_files_atomically(out_dir: Path, files: dict[str, bytes]) -> list[Path]:
    """Write ``{name: bytes}`` into out_dir so that either all files appear or none do; return their paths.

    Each file goes to a hidden temporary name first and is moved into place once all are written and synced. The
    first file is moved last, so the main file never appears without its companions.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    temporaries: list[Path] = []
    placed: list[Path] = []
    try:
        for name, data in files.items():
            temporary = out_dir / f".{name}.{secrets.token_hex(4)}.tmp"
            temporaries.append(temporary)
            with open(temporary, "xb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
        for name, temporary in reversed(list(zip(files, temporaries, strict=True))):
            os.replace(temporary, out_dir / name)
            placed.append(out_dir / name)
    except BaseException:
        for path in temporaries + placed:
            path.unlink(missing_ok=True)
        raise
    sync_directory(out_dir)
    return [out_dir / name for name in files]


def sync_file(path: Path) -> None:
    """Flush a file someone else wrote to stable storage."""
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def sync_directory(path: Path) -> None:
    """Make renames into `path` durable (a no-op where directories cannot be opened, as on Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
