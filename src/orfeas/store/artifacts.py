"""Files that belong to jobs: the uploaded input and the results.

`ArtifactStorage` is what the service and the API need from wherever those files live; `LocalArtifactStore` keeps
them in a directory, one machine's disk or a directory every machine of a cluster mounts (NFS-style). An object
store (S3 and the like) implements the same methods next:

- `save_input` / `load_input`: the uploaded image, written durably before its job is queued.
- `write_results`: a context manager that yields an empty local folder; the worker writes the job's files there
  and they are published together when the block ends without an exception (an object store uploads them then),
  and thrown away when it raises. Writing the same job's results again replaces the files of the same names.
- `save_result`: one more file among a finished job's results (the preview rendered on first request).
- `result_file`: a local file to read or serve a result from (an object store downloads it into a local cache, or
  the API redirects to a signed URL instead); None when it does not exist and for unknown or unsafe names.
- `delete`: everything of a job (retention, a lost idempotency race); missing files are fine.
- `job_ids_stored_before`: the jobs that have files here, none written since a cutoff; with the job table it finds
  the files no job row owns (a submission that stored its input and then failed or crashed before inserting its
  row, retention interrupted between deleting the row and the files), which the worker's maintenance deletes.

Job ids are 32 lower-case hex digits and result names have no separators or leading dot; any other value is
refused, so no request can reach outside a job's files.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime
from pathlib import Path
from typing import Protocol

from orfeas.files import sync_directory, sync_file, write_atomically
from orfeas.store.schema import JOB_ID_PATTERN

# Names a caller may ask for inside a job's folder: no separators, no leading dot.
_SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
# A job's entry in inputs/ or results/: the job id, or a temporary ".<id>.<random>.tmp" an interrupted write left.
_JOB_ENTRY = re.compile(rf"({JOB_ID_PATTERN.pattern})|\.({JOB_ID_PATTERN.pattern})\.[0-9a-f]+\.tmp")


class ArtifactStorage(Protocol):
    """Where the inputs and results of jobs are kept; see the module docstring for the contract of each method."""

    def save_input(self, job_id: str, data: bytes) -> None: ...

    def load_input(self, job_id: str) -> bytes: ...

    def write_results(self, job_id: str) -> AbstractContextManager[Path]: ...

    def save_result(self, job_id: str, name: str, data: bytes) -> None: ...

    def result_file(self, job_id: str, name: str) -> Path | None: ...

    def delete(self, job_id: str) -> None: ...

    def job_ids_stored_before(self, cutoff: datetime) -> list[str]: ...


class LocalArtifactStore:
    """Job files in a directory: `inputs/<job id>` and `results/<job id>/<name>`, each file written durably.

    Every file is written to a temporary name, synced and renamed into place, so a reader (another machine on the
    shared directory included) sees a whole file or none, and a crash leaves no half-written result behind.
    """

    def __init__(self, root: Path):
        self.root = Path(root)
        (self.root / "inputs").mkdir(parents=True, exist_ok=True)
        (self.root / "results").mkdir(parents=True, exist_ok=True)

    def save_input(self, job_id: str, data: bytes) -> None:
        """Store an uploaded image durably (written, synced, then renamed into place)."""
        write_atomically(self._input_path(job_id), data)

    def load_input(self, job_id: str) -> bytes:
        return self._input_path(job_id).read_bytes()

    @contextmanager
    def write_results(self, job_id: str) -> Iterator[Path]:
        """A staging folder next to the job's results; on a clean exit its files are synced and renamed in."""
        staging = self.root / "results" / f".{_checked_id(job_id)}.{secrets.token_hex(4)}.tmp"
        staging.mkdir()
        try:
            yield staging
            target = self.result_dir(job_id)
            for path in sorted(staging.iterdir()):
                if path.name.startswith("."):  # a writer's own temporary file
                    continue
                if not path.is_file():
                    raise ValueError(f"results are a flat folder of files; {path.name} is not a file")
                sync_file(path)
                os.replace(path, target / path.name)
            sync_directory(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def save_result(self, job_id: str, name: str, data: bytes) -> None:
        """Add one file to the job's results (durably, replacing a file of that name)."""
        if not _SAFE_NAME.fullmatch(name):
            raise ValueError(f"not a result file name: {name!r}")
        write_atomically(self.result_dir(job_id) / name, data)

    def result_file(self, job_id: str, name: str) -> Path | None:
        """Path of a result file if it exists; None for unknown or unsafe names."""
        if not _SAFE_NAME.fullmatch(name) or not JOB_ID_PATTERN.fullmatch(job_id):
            return None
        path = self.root / "results" / job_id / name
        return path if path.is_file() else None

    def delete(self, job_id: str) -> None:
        """Remove the job's input and results, and what an interrupted write left (missing files are fine)."""
        self._input_path(job_id).unlink(missing_ok=True)
        for partial in (self.root / "inputs").glob(f".{job_id}.*.tmp"):
            partial.unlink(missing_ok=True)
        results = self.root / "results"
        shutil.rmtree(results / job_id, ignore_errors=True)
        for staging in results.glob(f".{job_id}.*.tmp"):
            shutil.rmtree(staging, ignore_errors=True)

    def job_ids_stored_before(self, cutoff: datetime) -> list[str]:
        """Ids of the jobs with an input, results or a temporary left here, none of them modified at or after
        `cutoff` (timezone-aware), sorted. A results folder's time moves whenever a file is published into it."""
        if cutoff.tzinfo is None:
            raise ValueError("cutoff must be timezone-aware")
        newest: dict[str, float] = {}
        for folder in (self.root / "inputs", self.root / "results"):
            with os.scandir(folder) as entries:
                for entry in entries:
                    match = _JOB_ENTRY.fullmatch(entry.name)
                    if match is None:
                        continue
                    try:
                        modified = entry.stat(follow_symlinks=False).st_mtime
                    except FileNotFoundError:  # deleted meanwhile (retention in another process)
                        continue
                    job_id = match.group(1) or match.group(2)
                    newest[job_id] = max(newest.get(job_id, modified), modified)
        limit = cutoff.timestamp()
        return sorted(job_id for job_id, modified in newest.items() if modified < limit)

    def result_dir(self, job_id: str) -> Path:
        """The job's result folder (created); local to this class, not part of ArtifactStorage."""
        path = self.root / "results" / _checked_id(job_id)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _input_path(self, job_id: str) -> Path:
        return self.root / "inputs" / _checked_id(job_id)


def _checked_id(job_id: str) -> str:
    if not JOB_ID_PATTERN.fullmatch(job_id):
        raise ValueError(f"not a job id: {job_id!r}")
    return job_id
