"""Monitoring from stored job profiles and device readings: summary, bottlenecks, advice and utilization trend.

Everything but `UtilizationSampler` is a pure function of its arguments, so the numbers come from what the store
holds and survive restarts; the sampler only keeps the recent device history in memory.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, TypedDict

import numpy as np

from orfeas.pipeline.stages import Stage
from orfeas.service.batch_sizing import BatchPlan, MemoryReading, MemorySource, format_bytes

logger = logging.getLogger(__name__)

# A stage whose share of all pipeline time is at least this is a bottleneck of "medium" severity...
BOTTLENECK_MEDIUM = 0.25
# ...and at least this, "high"...
BOTTLENECK_HIGH = 0.5
# ...provided it averages at least this many seconds per job: in a job of a second or two no stage is worth a
# change of settings, whatever its share.
BOTTLENECK_MIN_SECONDS = 1.0
# GPU memory below this share in use means batches could be larger.
UNDER_USED_MEMORY = 0.5
# Device memory above this share in use risks out-of-memory failures.
NEARLY_FULL_MEMORY = 0.95
# Mean GPU utilization below this, while jobs wait, means batches could be larger.
UNDER_USED_COMPUTE = 0.5
# The compute advice needs at least this many utilization samples.
MIN_TREND_SAMPLES = 10
# The trend is "rising" or "falling" when the fitted line changes by at least this much utilization (0-1) across
# the sampled window; smaller changes are "steady".
TREND_CHANGE = 0.05

# What to do when a stage dominates, worded for the studio's form ("page") and for `orfeas generate` ("cli");
# every stage the pipeline times has an entry.
STAGE_ADVICE: dict[Stage, dict[str, str]] = {
    Stage.IMAGE_LOADING: {
        "page": "send smaller images (fewer pixels to decode and resize)",
        "cli": "send smaller images (fewer pixels to decode and resize)",
    },
    Stage.BACKGROUND_REMOVAL: {
        "page": "send images with a transparent background: their alpha is used instead of segmentation",
        "cli": "send images with a transparent background: their alpha is used instead of segmentation",
    },
    Stage.SHAPE_GENERATION: {
        "page": "lower Resolution, or the generator's steps; on the server, hierarchical or FlashVDM decoding"
        " (ORFEAS_HUNYUAN_DECODER)",
        "cli": "lower --resolution or -O steps=N; hierarchical or FlashVDM decoding with ORFEAS_HUNYUAN_DECODER",
    },
    Stage.MESH_EXTRACTION: {"page": "lower Resolution", "cli": "lower --resolution"},
    Stage.MESH_CLEANUP: {"page": "lower Faces or Resolution", "cli": "lower --faces or --resolution"},
    Stage.TEXTURING: {
        "page": "untick Texture to get vertex colours instead",
        "cli": "pass --no-texture to get vertex colours instead",
    },
    Stage.EXPORT: {"page": "tick fewer Formats", "cli": "ask for fewer formats (--format)"},
}
Severity = Literal["high", "medium", "low", "info"]
SEVERITY_ORDER: dict[Severity, int] = {"high": 0, "medium": 1, "low": 2, "info": 3}


# What the functions below return; the API's response models (api/schemas.py) list the same fields.
class StageStats(TypedDict):
    avg_seconds: float
    share: float
    p95_seconds: float | None


class Bottleneck(TypedDict):
    stage: str
    label: str
    share: float
    severity: Literal["high", "medium"]


class PerformanceSummary(TypedDict):
    total_pipelines: int
    avg_duration: float | None
    p50_duration: float | None
    p95_duration: float | None
    stage_breakdown: dict[str, StageStats]
    slowest_stage: str | None
    bottlenecks: list[Bottleneck]


class Advice(TypedDict):
    message: str
    cli: str
    reason: str
    severity: Severity


class UtilizationTrend(TypedDict):
    samples: int
    window_seconds: float
    mean_utilization: float | None
    last_utilization: float | None
    direction: Literal["rising", "falling", "steady"]
    slope_per_minute: float
    memory_used_mean: int | None


class DeviceMemory(TypedDict):
    total: int
    used: int
    free: int
    used_fraction: float


class DeviceStatus(TypedDict):
    gpu: bool
    device: str
    name: str
    memory: DeviceMemory
    utilization: float | None
    trend: UtilizationTrend
    batch_size: int | None
    batch_reason: str | None
    note: str | None


def stage_label(stage: str) -> str:
    """A stage name as people read it: "shape_generation" → "shape generation"."""
    return stage.replace("_", " ")


def plural(count: int, noun: str) -> str:
    """ "1 job", "2 jobs"."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100) with linear interpolation between ranks, rounded to 4 places; None if empty."""
    return round(float(np.percentile(values, q)), 4) if values else None


def performance_summary(profiles: Sequence[Mapping[str, Any]]) -> PerformanceSummary:
    """Durations, per-stage breakdown, slowest stage and bottlenecks over finished jobs' stored profiles.

    A stage a job did not run counts as 0 s for that job, so the stage averages add up to `avg_duration` and a
    stage's share is its part of all pipeline time. Bottlenecks are the stages that average at least
    BOTTLENECK_MIN_SECONDS per job with a share ≥ 0.25 ("medium"), ≥ 0.5 being "high", largest first.
    """
    totals = [_profile_total(profile) for profile in profiles]
    stage_names = list(dict.fromkeys(name for profile in profiles for name in profile.get("stages", {})))
    grand_total = sum(totals)
    breakdown: dict[str, StageStats] = {}
    for name in stage_names:
        seconds = [float(profile.get("stages", {}).get(name, 0.0)) for profile in profiles]
        breakdown[name] = {
            "avg_seconds": round(sum(seconds) / len(seconds), 4),
            "share": round(sum(seconds) / grand_total, 4) if grand_total else 0.0,
            "p95_seconds": percentile(seconds, 95),
        }
    bottlenecks: list[Bottleneck] = []
    for name, stats in sorted(breakdown.items(), key=lambda item: -item[1]["share"]):
        severity = bottleneck_severity(stats["share"], stats["avg_seconds"])
        if severity is not None:
            bottlenecks.append(
                {"stage": name, "label": stage_label(name), "share": stats["share"], "severity": severity}
            )
    return {
        "total_pipelines": len(profiles),
        "avg_duration": round(grand_total / len(totals), 4) if totals else None,
        "p50_duration": percentile(totals, 50),
        "p95_duration": percentile(totals, 95),
        "stage_breakdown": breakdown,
        "slowest_stage": max(breakdown, key=lambda name: breakdown[name]["share"]) if breakdown else None,
        "bottlenecks": bottlenecks,
    }


def _profile_total(profile: Mapping[str, Any]) -> float:
    total = profile.get("total")
    return float(total) if total is not None else float(sum(profile.get("stages", {}).values()))


def bottleneck_severity(share: float, avg_seconds: float) -> Literal["high", "medium"] | None:
    """Severity of a stage taking `share` of all time and `avg_seconds` per job: None under
    BOTTLENECK_MIN_SECONDS, else "high" from a share of 0.5, "medium" from 0.25, else None."""
    if avg_seconds < BOTTLENECK_MIN_SECONDS:
        return None
    if share >= BOTTLENECK_HIGH:
        return "high"
    if share >= BOTTLENECK_MEDIUM:
        return "medium"
    return None


def recommendations(
    summary: PerformanceSummary,
    reading: MemoryReading | None,
    plan: BatchPlan | None,
    utilization_trend: UtilizationTrend | None,
) -> list[Advice]:
    """Advice, each {message, cli, reason, severity}, from whatever data is given; most severe first.

    `message` names the studio's form fields, `cli` the `orfeas generate` options. Each rule speaks only when its
    data supports it; missing inputs (None) silence the rules that need them.
    """
    advice = [
        *no_jobs_yet(summary),
        *no_bottleneck(summary),
        *stage_bottlenecks(summary),
        *memory_nearly_full(reading),
        *memory_under_used(reading, plan),
        *compute_under_used(reading, plan, utilization_trend),
    ]
    return sorted(advice, key=lambda item: SEVERITY_ORDER[item["severity"]])


def _advice(message: str, reason: str, severity: Severity, cli: str | None = None) -> Advice:
    return {"message": message, "cli": cli or message, "reason": reason, "severity": severity}


def no_jobs_yet(summary: PerformanceSummary) -> list[Advice]:
    """Say that there is nothing to analyse before the first job finishes."""
    if summary.get("total_pipelines"):
        return []
    return [_advice("no finished jobs yet: timings appear after the first job", "no finished jobs", "info")]


def no_bottleneck(summary: PerformanceSummary) -> list[Advice]:
    """Once jobs have finished and no stage is a bottleneck, say so and name the slowest stage's time."""
    slowest = summary.get("slowest_stage")
    if not summary.get("total_pipelines") or summary.get("bottlenecks") or slowest is None:
        return []
    stats = summary["stage_breakdown"][slowest]
    return [
        _advice(
            "no stage needs a change of settings",
            f"the slowest stage, {stage_label(slowest)}, averages {stats['avg_seconds']:.2f} s of"
            f" {summary['avg_duration']:.2f} s per job over {plural(summary['total_pipelines'], 'job')}",
            "info",
        )
    ]


def stage_bottlenecks(summary: PerformanceSummary) -> list[Advice]:
    """For each bottleneck stage, the setting that shortens it."""
    advice = []
    for bottleneck in summary.get("bottlenecks", []):
        stage = bottleneck["stage"]
        remedy = stage_advice(stage)
        if remedy is None:
            continue
        stats = summary["stage_breakdown"][stage]
        share = f"{stage_label(stage).capitalize()} is {bottleneck['share']:.0%} of the time"
        advice.append(
            _advice(
                f"{share}: {remedy['page']}",
                f"{stage_label(stage)} averages {stats['avg_seconds']:.2f} s of {summary['avg_duration']:.2f} s per"
                f" job over {plural(summary['total_pipelines'], 'job')}",
                bottleneck["severity"],
                cli=f"{share}: {remedy['cli']}",
            )
        )
    return advice


def stage_advice(stage: str) -> dict[str, str] | None:
    """STAGE_ADVICE for a stored profile's stage name; None for a name that is no Stage (an older profile's)."""
    try:
        return STAGE_ADVICE[Stage(stage)]
    except ValueError:
        return None


def memory_nearly_full(reading: MemoryReading | None) -> list[Advice]:
    """Warn when the device is close to running out of memory."""
    if reading is None or reading.used_fraction <= NEARLY_FULL_MEMORY:
        return []
    kind = "GPU" if reading.is_gpu else "RAM"
    return [
        _advice(
            f"{kind} memory nearly full ({reading.used_fraction:.0%}): lower Resolution, or the server's"
            " ORFEAS_MAX_BATCH",
            f"{format_bytes(reading.used_bytes)} of {format_bytes(reading.total_bytes)} used on {reading.device}",
            "high",
            cli=f"{kind} memory nearly full ({reading.used_fraction:.0%}): lower --resolution, or the server's"
            " ORFEAS_MAX_BATCH",
        )
    ]


def memory_under_used(reading: MemoryReading | None, plan: BatchPlan | None) -> list[Advice]:
    """On a GPU with most memory idle, say which bound kept the batch small."""
    if reading is None or not reading.is_gpu or reading.used_fraction >= UNDER_USED_MEMORY:
        return []
    if plan is None:
        action = "raise the batch size (ORFEAS_MAX_BATCH)"
    elif plan.limited_by == "max_batch":
        action = f"raise ORFEAS_MAX_BATCH above {plan.max_batch} (memory fits {plan.fits_in_memory} images)"
    elif plan.limited_by == "queue":
        action = f"submit jobs together: the last batch was limited by the queue ({plan.queue_length} waiting)"
    else:
        # memory-bound yet mostly free: the per-image estimate is what holds the batch back
        action = f"check the per-image memory estimate ({format_bytes(plan.per_image_bytes)}): it limits the batch"
    reason = f"{format_bytes(reading.used_bytes)} of {format_bytes(reading.total_bytes)} used on {reading.device}"
    if plan is not None:
        reason += f"; last plan: {plan.reason}"
    return [_advice(f"GPU under-used ({reading.used_fraction:.0%} of memory): {action}", reason, "medium")]


def compute_under_used(
    reading: MemoryReading | None, plan: BatchPlan | None, trend: UtilizationTrend | None
) -> list[Advice]:
    """On a GPU that was mostly idle while more jobs waited than the batch took, advise larger batches."""
    if reading is None or not reading.is_gpu or plan is None or trend is None:
        return []
    mean = trend.get("mean_utilization")
    if trend.get("samples", 0) < MIN_TREND_SAMPLES or mean is None or mean >= UNDER_USED_COMPUTE:
        return []
    if plan.queue_length <= plan.size:
        return []  # idle for lack of work: nothing to change on the service
    return [
        _advice(
            f"GPU busy {mean:.0%} of the time while jobs wait: raise ORFEAS_MAX_BATCH or the memory target"
            " (ORFEAS_TARGET_UTILIZATION)",
            f"mean utilization {mean:.0%} over {trend['window_seconds']:.0f} s; last batch took {plan.size}"
            f" of {plan.queue_length} waiting ({plan.limited_by} bound)",
            "medium",
        )
    ]


@dataclass(frozen=True)
class UtilizationSample:
    timestamp: float
    utilization: float | None
    used_bytes: int


class UtilizationSampler:
    """The last `capacity` readings of a device, taken on demand or every `interval_s` on a daemon thread.

    The sampler owns the utilization counter: a CPU reading (`psutil.cpu_percent(interval=None)`) is the share
    busy since the same thread's previous call, so a request thread reading the probe itself gets 0 on its first
    call and an average over minutes later. Requests read `latest()`, the sampler thread's last reading, instead.
    """

    def __init__(self, probe: MemorySource, capacity: int = 120, clock: Callable[[], float] = time.monotonic) -> None:
        self.probe = probe
        self.clock = clock
        self._samples: deque[UtilizationSample] = deque(maxlen=capacity)
        self._latest: MemoryReading | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample(self) -> UtilizationSample:
        """Read the probe once and keep the result."""
        reading = self.probe.read()
        with self._lock:
            self._latest = reading
        return self.record(self.clock(), reading.utilization, reading.used_bytes)

    def read(self) -> MemoryReading:
        """The sampler as a MemorySource (what the Prometheus collector takes): its latest reading, or before its
        first one a reading of the probe itself."""
        with self._lock:
            latest = self._latest
        return latest if latest is not None else self.probe.read()

    def latest(self) -> MemoryReading:
        """The last reading the sampler took; before its first one, a memory reading with utilization unknown."""
        with self._lock:
            latest = self._latest
        return latest if latest is not None else replace(self.probe.read(), utilization=None)

    def record(self, timestamp: float, utilization: float | None, used_bytes: int) -> UtilizationSample:
        """Keep a sample taken elsewhere (also how tests feed known series)."""
        sample = UtilizationSample(timestamp, utilization, used_bytes)
        with self._lock:
            self._samples.append(sample)
        return sample

    def start(self, interval_s: float = 1.0) -> None:
        """Sample every `interval_s` seconds on a daemon thread until `stop`; does nothing if already running."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, args=(interval_s,), name="utilization-sampler", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self, interval_s: float) -> None:
        try:
            self.probe.read()  # starts this thread's CPU counter: its first value covers no time at all
        except Exception:
            logger.exception("utilization sample failed")
        while True:
            if self._stop.wait(interval_s):
                return
            try:
                self.sample()
            except Exception:
                logger.exception("utilization sample failed")

    def trend(self) -> UtilizationTrend:
        """Mean, last value and direction of utilization over the kept samples, and mean memory in use.

        The direction comes from a least-squares line through (time, utilization): "rising" or "falling" when the
        line changes by at least TREND_CHANGE across the window, else "steady" (also with fewer than 2 samples).
        """
        with self._lock:
            samples = list(self._samples)
        return utilization_trend(samples)


def utilization_trend(samples: Sequence[UtilizationSample]) -> UtilizationTrend:
    """See `UtilizationSampler.trend`; samples without a utilization value count only towards memory."""
    timed = [(s.timestamp, s.utilization) for s in samples if s.utilization is not None]
    window = samples[-1].timestamp - samples[0].timestamp if samples else 0.0
    slope = _slope(timed)
    change = slope * (timed[-1][0] - timed[0][0]) if timed else 0.0
    direction: Literal["rising", "falling", "steady"]
    if change >= TREND_CHANGE:
        direction = "rising"
    elif change <= -TREND_CHANGE:
        direction = "falling"
    else:
        direction = "steady"
    return {
        "samples": len(samples),
        "window_seconds": round(window, 3),
        "mean_utilization": round(sum(u for _, u in timed) / len(timed), 4) if timed else None,
        "last_utilization": timed[-1][1] if timed else None,
        "direction": direction,
        "slope_per_minute": round(slope * 60, 4),
        "memory_used_mean": round(sum(s.used_bytes for s in samples) / len(samples)) if samples else None,
    }


def _slope(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of y over x; 0 with fewer than 2 points or no spread in x."""
    if len(points) < 2:
        return 0.0
    x = np.array([p[0] for p in points], dtype=float)
    y = np.array([p[1] for p in points], dtype=float)
    dx = x - x.mean()
    spread = float(dx @ dx)
    return float(dx @ (y - y.mean()) / spread) if spread else 0.0


def device_status(reading: MemoryReading, plan: BatchPlan | None, trend: UtilizationTrend) -> DeviceStatus:
    """What `GET /api/gpu/status` returns: the device, its memory, utilization and trend, and the batch size."""
    return {
        "gpu": reading.is_gpu,
        "device": reading.device,
        "name": reading.name,
        "memory": {
            "total": reading.total_bytes,
            "used": reading.used_bytes,
            "free": reading.free_bytes,
            "used_fraction": round(reading.used_fraction, 4),
        },
        "utilization": reading.utilization,
        "trend": trend,
        "batch_size": plan.size if plan else None,
        "batch_reason": plan.reason if plan else None,
        "note": None if reading.is_gpu else "no GPU found: CPU and RAM reported",
    }
