"""Files that belong to jobs: the uploaded input and the results, one folder per job under the data directory."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

# Names a caller may ask for inside a job's folder: no separators, no leading dot.
_SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_JOB_ID = re.compile(r"[0-9a-f]{32}")


class ArtifactStore:
    """Job files on a local (or shared, NFS-style) directory."""

    def __init__(self, root: Path):
        self.root = Path(root)
        (self.root / "inputs").mkdir(parents=True, exist_ok=True)
        (self.root / "results").mkdir(parents=True, exist_ok=True)

    def save_input(self, job_id: str, data: bytes) -> None:
        """Store an uploaded image durably (written, synced, then renamed into place)."""
        path = self._input_path(job_id)
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)

    def load_input(self, job_id: str) -> bytes:
        return self._input_path(job_id).read_bytes()

    def result_dir(self, job_id: str) -> Path:
        """The job's result folder (created)."""
        path = self.root / "results" / _checked_id(job_id)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def result_file(self, job_id: str, name: str) -> Path | None:
        """Path of a result file if it exists; None for unknown or unsafe names."""
        if not _SAFE_NAME.fullmatch(name) or not _JOB_ID.fullmatch(job_id):
            return None
        path = self.root / "results" / job_id / name
        return path if path.is_file() else None

    def delete(self, job_id: str) -> None:
        """Remove the job's input and results (missing files are fine)."""
        self._input_path(job_id).unlink(missing_ok=True)
        shutil.rmtree(self.root / "results" / _checked_id(job_id), ignore_errors=True)

    def _input_path(self, job_id: str) -> Path:
        return self.root / "inputs" / _checked_id(job_id)


def _checked_id(job_id: str) -> str:
    if not _JOB_ID.fullmatch(job_id):
        raise ValueError(f"not a job id: {job_id!r}")
    return job_id
