"""The worker: claims batches of compatible jobs, runs them through one generator call, stores the results.

Crash safety comes from the store: a claimed job carries a lease that a heartbeat renews; a worker that dies
stops renewing, and `requeue_expired` (run by every worker at start and then by each heartbeat) puts its jobs back,
capped to half the batch that died, so a job that kills workers ends up alone and only it is failed (store/jobs.py).
A job completes only while its lease is ours, so it completes at most once.

When the database cannot be reached (restart, cut connections), the loop backs off exponentially with jitter and
resumes; a finished batch retries its completion for as long as its lease would last, and a job is never failed
because of the database.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import sys
import threading
import time
import uuid
import zipfile
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from orfeas.config import Settings
from orfeas.errors import OrfeasError, Stopped
from orfeas.pipeline.background import BackgroundRemover
from orfeas.pipeline.generate import GenerationResult, generate_batch, save_result
from orfeas.pipeline.generators import GenerationParams, Generator, GeneratorCache
from orfeas.pipeline.learned_remover import create_remover
from orfeas.pipeline.options import GenerateOptions
from orfeas.pipeline.stages import Stage
from orfeas.service.batch_sizing import BatchPlan, BatchSizer
from orfeas.service.jobs import STAGE_PROGRESS, read_input
from orfeas.service.metrics import ServiceMetrics
from orfeas.store.artifacts import ArtifactStorage
from orfeas.store.db import error_summary, is_database_outage
from orfeas.store.jobs import JobRecord, JobStore

logger = logging.getLogger(__name__)
STOP_CHECK_SECONDS = 0.5  # how often a running batch asks whether its jobs were canceled

RESULT_STEM = "model"
MAINTENANCE_SECONDS = 10.0  # how often the loop applies retention (and requeues expired leases, as the heartbeat does)
ORPHAN_SWEEP_SECONDS = 600.0  # how often maintenance looks for job files without a job row (it lists every file)
# Job files without a row are left alone this long: a submission stores its inputs first and inserts the rows after.
ORPHAN_GRACE_SECONDS = 3600.0
BACKOFF_FIRST_SECONDS = 0.2  # first wait after a failed loop iteration; doubles per failure in a row
BACKOFF_MAX_SECONDS = 5.0  # bound, so a worker notices a recovered database within about 5 s


def backoff_seconds(failures: int, rng: random.Random | None = None) -> float:
    """Wait after `failures` failed iterations in a row: exponential, bounded, with "equal jitter" (between half and
    all of the step) so that workers cut off together do not all come back in the same instant."""
    step = min(BACKOFF_MAX_SECONDS, BACKOFF_FIRST_SECONDS * 2 ** max(failures - 1, 0))
    return step * (rng or random).uniform(0.5, 1.0)


def log_database_error(message: str, exc: BaseException, **context: object) -> None:
    """One warning line for a database outage (they come in bursts), a full traceback for anything else."""
    if is_database_outage(exc):
        logger.warning("%s: database unavailable: %s", message, error_summary(exc), extra=context)
    else:
        logger.exception(message, extra=context)


def is_out_of_memory(exc: BaseException) -> bool:
    """MemoryError, or a framework's out-of-memory error (torch.cuda.OutOfMemoryError) by its name."""
    return isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError"


class ProgressBuffer:
    """Coalesces progress updates: the latest stage of each job, written in one transaction at most every
    `interval` seconds (a batch of fast stages would otherwise cost one database commit per stage per job).

    An update that arrives too soon after a write is written by a timer when the interval is up, so a stage that
    starts just after another and then runs long (the generator's call) is still shown while it runs.
    """

    def __init__(self, store: JobStore, worker_id: str, interval: float = 0.1):
        self.store = store
        self.worker_id = worker_id
        self.interval = interval
        self.pending: dict[str, tuple[int, str]] = {}
        self.last_flush = 0.0
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None

    def record(self, job_id: str, stage: Stage) -> None:
        with self._lock:
            self.pending[job_id] = (STAGE_PROGRESS.get(stage, 0), stage)
            wait = self.interval - (time.monotonic() - self.last_flush)
            if wait > 0:
                if self._timer is None:
                    self._timer = threading.Timer(wait, self._flush_from_timer)
                    self._timer.daemon = True
                    self._timer.start()
                return
        self.flush_quietly()

    def flush(self) -> set[str]:
        """Write what is pending; returns the ids of those jobs the worker still runs."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            updates, self.pending = self.pending, {}
            self.last_flush = time.monotonic()
        return self.store.update_progress_many(self.worker_id, updates) if updates else set()

    def _flush_from_timer(self) -> None:
        try:
            self.flush()
        except Exception as exc:  # a lost progress write must not take the worker down; the next one will land
            log_database_error("progress write failed", exc, worker=self.worker_id)

    def flush_quietly(self) -> set[str] | None:
        """`flush`, logging instead of raising when the database is unreachable (progress is best effort); None
        then, since whose jobs are still ours cannot be asked."""
        try:
            return self.flush()
        except Exception as exc:
            if not is_database_outage(exc):
                raise
            log_database_error("progress write failed", exc, worker=self.worker_id)
            return None


class Worker:
    """One worker loop; `orfeas serve` runs it on a thread, `orfeas worker` (cluster mode) in its own process."""

    def __init__(
        self,
        store: JobStore,
        artifacts: ArtifactStorage,
        settings: Settings,
        batch_sizer: BatchSizer,
        metrics: ServiceMetrics | None = None,
        worker_id: str | None = None,
    ):
        self.store = store
        self.artifacts = artifacts
        self.settings = settings
        self.pipeline_settings = settings.pipeline()
        self.batch_sizer = batch_sizer
        self.metrics = metrics
        # host and pid tell an operator which process holds a lease; the suffix keeps restarted pids apart
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.generators = GeneratorCache(self.pipeline_settings)  # loaded once, kept for the worker's lifetime
        self._remover: BackgroundRemover | None = None  # a learned remover's session, loaded on the first batch
        self._remover_loaded = False
        self.last_beat = time.monotonic()
        self._next_orphan_sweep = 0.0  # monotonic time; the first maintenance sweeps
        self._active: list[str] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()

    def wake(self) -> None:
        """End the idle wait at once (new jobs were queued, or `run`'s stop was set)."""
        self._wake.set()

    def run(self, stop: threading.Event) -> None:
        """Claim and run batches until `stop` is set (call `wake` after setting it, to end an idle wait at once)."""
        logger.info("worker started", extra={"worker": self.worker_id})
        heartbeat = threading.Thread(target=self._heartbeat, args=(stop,), name="orfeas-heartbeat", daemon=True)
        heartbeat.start()
        queue_watch = self.store.queue_watch()
        next_maintenance = 0.0
        failures = 0  # loop iterations in a row that raised
        while not stop.is_set():
            self.last_beat = time.monotonic()
            try:
                if time.monotonic() >= next_maintenance:
                    self.maintain()  # dead workers' jobs come back through the heartbeat, so this can be rare
                    next_maintenance = time.monotonic() + MAINTENANCE_SECONDS
                ran = self.run_once()
            except Exception as exc:  # the loop must survive anything one batch does (database outages included)
                failures += 1
                wait = backoff_seconds(failures)
                log_database_error(f"worker loop error, retrying in {wait:.2f} s", exc, worker=self.worker_id)
                stop.wait(wait)
                continue
            if failures:
                logger.info("worker resumed", extra={"worker": self.worker_id, "after_failures": failures})
                failures = 0
            if not ran:
                # until the next poll, unless this process submits, another one queues jobs, or we are stopped
                queue_watch.wait(self.settings.poll_seconds, interrupt=self._wake)
                self._wake.clear()
        queue_watch.close()
        try:
            self.store.requeue_owned(self.worker_id)
        except Exception as exc:  # the leases then expire and another worker requeues the jobs
            log_database_error("could not requeue this worker's jobs at shutdown", exc, worker=self.worker_id)
        logger.info("worker stopped", extra={"worker": self.worker_id})

    def run_once(self) -> bool:
        """Claim one batch and run it; False when the queue was empty."""
        upcoming = self.store.next_queued()
        if upcoming is None:
            return False
        plan = self.plan_for(upcoming)  # the batch sizer is built with settings.max_batch as its cap
        jobs = self.store.claim_batch(self.worker_id, plan.size, self.settings.lease_seconds)
        if not jobs:
            return False
        logger.info(
            "claimed batch",
            extra={"worker": self.worker_id, "batch_size": len(jobs), "reason": plan.reason},
        )
        if self.metrics:
            self.metrics.observe_batch(len(jobs))
        with self._lock:
            self._active = [job.id for job in jobs]
        try:
            self.run_batch(jobs)
        finally:
            with self._lock:
                self._active = []
        return True

    def plan_for(self, job: JobRecord) -> BatchPlan:
        """Batch size for jobs like `job`, from the generator's memory estimate and free memory."""
        return self.plan_for_options(GenerateOptions.model_validate(job.options), self.store.queue_depth())

    def plan_for_options(self, options: GenerateOptions, queue_length: int) -> BatchPlan:
        generator = self.generator(options.backend)
        params = GenerationParams(
            resolution=options.resolution or generator.default_resolution, options=options.generator_options
        )
        return self.batch_sizer.plan(generator.memory_per_image(params), queue_length)

    def plan_default(self) -> BatchPlan:
        """Batch size the batch sizer would pick for default options with an empty queue."""
        return self.plan_for_options(GenerateOptions(), queue_length=0)

    def is_alive(self) -> bool:
        """True while the heartbeat keeps beating (it runs even during a long batch)."""
        return time.monotonic() - self.last_beat < 3 * self.settings.heartbeat_seconds + 1.0

    def generator(self, name: str) -> Generator:
        return self.generators.get(name)

    def run_batch(self, jobs: list[JobRecord]) -> None:
        """Generate a batch; on out-of-memory split it in halves, on other errors run the jobs one by one."""
        try:
            results, still_ours = self._generate(jobs)
        except Stopped:
            logger.info("batch stopped: every job was canceled", extra={"batch_size": len(jobs)})
            return
        except Exception as exc:
            if is_database_outage(exc):
                raise  # not the jobs' fault: the loop backs off, the leases expire, the jobs run again
            if len(jobs) == 1:
                reason = f"out of memory: {exc}" if is_out_of_memory(exc) else str(exc)
                if not isinstance(exc, OrfeasError) and not is_out_of_memory(exc):
                    logger.exception("job failed", extra={"job": jobs[0].id})
                    reason = f"internal error: {type(exc).__name__}: {exc}"
                self._finish_failed(jobs[0], reason)
                return
            if is_out_of_memory(exc):
                _release_device_memory()
                middle = len(jobs) // 2
                logger.warning("out of memory: splitting the batch", extra={"batch_size": len(jobs), "halves": middle})
                self.run_batch(jobs[:middle])
                self.run_batch(jobs[middle:])
            else:
                logger.warning("batch failed, running its jobs one by one: %s", exc)
                for job in jobs:
                    self.run_batch([job])
            return
        self._store_results(jobs, results, still_ours)

    def maintain(self) -> None:
        """Return expired leases to the queue, delete jobs past retention with their files, and, every
        `ORPHAN_SWEEP_SECONDS`, the files of jobs that have no row."""
        self.requeue_expired()
        cutoff = datetime.now(UTC) - timedelta(hours=self.settings.retention_hours)
        for job_id in self.store.delete_finished_before(cutoff):
            self.artifacts.delete(job_id)
        if time.monotonic() >= self._next_orphan_sweep:
            self.sweep_orphans()
            self._next_orphan_sweep = time.monotonic() + ORPHAN_SWEEP_SECONDS

    def sweep_orphans(self, grace_seconds: float = ORPHAN_GRACE_SECONDS) -> list[str]:
        """Delete the files of jobs without a row, untouched for `grace_seconds` (a submission that failed or died
        between storing its input and inserting its job; retention interrupted between the row and the files);
        returns their ids. A database error propagates before anything is deleted."""
        stored = self.artifacts.job_ids_stored_before(datetime.now(UTC) - timedelta(seconds=grace_seconds))
        known = self.store.existing_ids(stored)
        orphans = [job_id for job_id in stored if job_id not in known]
        for job_id in orphans:
            self.artifacts.delete(job_id)
        if orphans:
            logger.info("deleted the files of jobs without a row", extra={"jobs": len(orphans), "first": orphans[0]})
        return orphans

    def _unwanted_check(self, job_ids: list[str]) -> Callable[[], bool]:
        """A `should_stop` for the pipeline: True once none of the batch's jobs is held any more (all canceled),
        asking the database at most every STOP_CHECK_SECONDS however often the generator asks."""
        checked = [0.0, False]

        def unwanted() -> bool:
            now = time.monotonic()
            if now - checked[0] >= STOP_CHECK_SECONDS:
                checked[0] = now
                try:
                    checked[1] = not self.store.still_owned(self.worker_id, job_ids)
                except Exception:  # an unreachable database is no reason to stop
                    checked[1] = False
            return bool(checked[1])

        return unwanted

    def remover(self) -> BackgroundRemover | None:
        """The learned background remover the settings name (built once), or None for the weight-free one."""
        if not self._remover_loaded:
            self._remover = create_remover(self.pipeline_settings)
            self._remover_loaded = True
        return self._remover

    def _generate(self, jobs: list[JobRecord]) -> tuple[list[GenerationResult], set[str]]:
        """Run the batch; returns the results and the ids of the jobs still ours (not canceled or taken over)."""
        options = [GenerateOptions.model_validate(job.options) for job in jobs]
        images = [read_input(self.artifacts.load_input(job.id)) for job in jobs]
        progress = ProgressBuffer(self.store, self.worker_id)
        results = generate_batch(
            images,
            options,
            self.pipeline_settings,
            self.generator(options[0].backend),
            remover=self.remover(),
            on_stage=lambda index, stage: progress.record(jobs[index].id, stage),
            should_stop=self._unwanted_check([job.id for job in jobs]),
        )
        for job in jobs:
            progress.pending[job.id] = (STAGE_PROGRESS[Stage.EXPORT], Stage.EXPORT)
        still_ours = progress.flush_quietly()
        if still_ours is None:  # cannot ask now: export them all, `complete_many` decides which are still ours
            still_ours = {job.id for job in jobs}
        return results, still_ours

    def _store_results(self, jobs: list[JobRecord], results: list[GenerationResult], still_ours: set[str]) -> None:
        """Write the files of the jobs still ours, then mark them all succeeded in one transaction."""
        outcomes = []
        for job, result in zip(jobs, results, strict=True):
            if job.id not in still_ours:
                logger.info("job canceled or taken over before export", extra={"job": job.id})
                continue
            with self.artifacts.write_results(job.id) as folder:  # published together when the block ends
                save_result(result, folder, RESULT_STEM)
                files = _result_files(folder, result.options.formats)
            report = result.report()
            summary = {key: report[key] for key in ("generator", "vertices", "faces", "watertight", "batch_size")}
            outcomes.append((job.id, {**summary, "files": files}, report["profile"]))
        completed = self._complete_with_retries(outcomes)
        if self.metrics:
            for job_id, _result, profile in outcomes:
                if job_id in completed:
                    self.metrics.observe_profile(profile)
                    self.metrics.job_finished("succeeded")

    def _complete_with_retries(self, outcomes: list[tuple[str, dict[str, Any], dict[str, Any]]]) -> set[str]:
        """`complete_many`, retried with backoff while the database is unreachable, for up to one lease time: the
        results are on disk, and a completion that lands within the lease saves running the batch again. Safe to
        repeat: a job completes only while it runs under our lease, so a retry after a lost reply finds it done."""
        deadline = time.monotonic() + self.settings.lease_seconds
        failures = 0
        while True:
            try:
                return self.store.complete_many(self.worker_id, outcomes)
            except Exception as exc:
                failures += 1
                wait = backoff_seconds(failures)
                if not is_database_outage(exc) or time.monotonic() + wait > deadline:
                    raise
                log_database_error(f"completion failed, retrying in {wait:.2f} s", exc, worker=self.worker_id)
                time.sleep(wait)

    def _finish_failed(self, job: JobRecord, reason: str) -> None:
        logger.warning("job failed", extra={"job": job.id, "reason": reason})
        if self.store.fail(job.id, self.worker_id, reason) and self.metrics:
            self.metrics.job_finished("failed")

    def requeue_expired(self) -> None:
        """Return the jobs of workers whose leases ran out (they died or hung) to the queue."""
        requeued, failed = self.store.requeue_expired(self.settings.max_attempts)
        if requeued or failed:
            logger.warning("expired leases", extra={"requeued": requeued, "failed": failed})

    def _heartbeat(self, stop: threading.Event) -> None:
        """Renew this worker's leases and, at the same pace, take over the jobs of dead workers: this thread runs
        while a batch is in hand, so a dead worker's jobs come back one heartbeat after their lease ends even when
        every other worker is busy."""
        while not stop.wait(self.settings.heartbeat_seconds):
            self.last_beat = time.monotonic()
            with self._lock:
                active = list(self._active)
            try:
                if active:
                    self.store.renew_leases(self.worker_id, active, self.settings.lease_seconds)
                self.requeue_expired()
            except Exception as exc:
                log_database_error("heartbeat failed (lease renewal or takeover)", exc, worker=self.worker_id)


def _result_files(folder: Path, formats: tuple[str, ...]) -> dict[str, str]:
    """{format: file name} of a job's downloads; OBJ travels as a zip with its MTL and texture."""
    files = {}
    for fmt in formats:
        if fmt == "obj":
            archive = folder / f"{RESULT_STEM}.obj.zip"
            with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as bundle:
                for part in sorted(folder.glob(f"{RESULT_STEM}.obj")) + sorted(folder.glob(f"{RESULT_STEM}*.mtl")):
                    bundle.write(part, part.name)
                for part in sorted(folder.glob(f"{RESULT_STEM}_texture*.png")):
                    bundle.write(part, part.name)
            files[fmt] = archive.name
        else:
            files[fmt] = f"{RESULT_STEM}.{fmt}"
    return files


def _release_device_memory() -> None:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
