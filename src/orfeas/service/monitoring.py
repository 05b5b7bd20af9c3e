"""Monitoring from stored job profiles and device readings: summary, bottlenecks, advice and utilization trend.

Everything but `UtilizationSampler` is a pure function of its arguments, so the numbers come from what the store
holds and survive restarts; the sampler only keeps the recent device history in memory.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from orfeas.service.optimizer import BatchPlan, MemoryReading, MemorySource, format_bytes

logger = logging.getLogger(__name__)

# A stage whose share of all pipeline time is at least this is a bottleneck of "medium" severity...
BOTTLENECK_MEDIUM = 0.25
# ...and at least this, "high".
BOTTLENECK_HIGH = 0.5
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

# What to do when a stage dominates; the key is the stage name the pipeline's profile uses.
STAGE_ADVICE = {
    "image_loading": "send smaller images (fewer pixels to decode and resize)",
    "background_removal": "send images with a transparent background: their alpha is used instead of segmentation",
    "shape_generation": "lower the number of steps or the resolution, or use hierarchical (FlashVDM) decoding",
    "mesh_extraction": "lower the resolution",
    "mesh_cleanup": "lower --faces or the resolution",
    "texturing": "turn texture off to get vertex colours instead",
    "export": "request fewer formats",
}
SEVERITY_ORDER = {"high": 0, "medium": 1, "low": 2, "info": 3}


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0-100) with linear interpolation between ranks, rounded to 4 places; None if empty."""
    return round(float(np.percentile(values, q)), 4) if values else None


def performance_summary(profiles: list[dict]) -> dict:
    """Durations, per-stage breakdown, slowest stage and bottlenecks over finished jobs' profiles.

    A stage a job did not run counts as 0 s for that job, so the stage averages add up to `avg_duration` and a
    stage's share is its part of all pipeline time. Bottlenecks are the stages with share ≥ 0.25 ("medium"),
    ≥ 0.5 being "high", largest first.
    """
    totals = [_profile_total(profile) for profile in profiles]
    stage_names = list(dict.fromkeys(name for profile in profiles for name in profile.get("stages", {})))
    grand_total = sum(totals)
    breakdown = {}
    for name in stage_names:
        seconds = [float(profile.get("stages", {}).get(name, 0.0)) for profile in profiles]
        breakdown[name] = {
            "avg_seconds": round(sum(seconds) / len(seconds), 4),
            "share": round(sum(seconds) / grand_total, 4) if grand_total else 0.0,
            "p95_seconds": percentile(seconds, 95),
        }
    bottlenecks = [
        {"stage": name, "share": stats["share"], "severity": bottleneck_severity(stats["share"])}
        for name, stats in sorted(breakdown.items(), key=lambda item: -item[1]["share"])
        if bottleneck_severity(stats["share"]) is not None
    ]
    return {
        "total_pipelines": len(profiles),
        "avg_duration": round(grand_total / len(totals), 4) if totals else None,
        "p50_duration": percentile(totals, 50),
        "p95_duration": percentile(totals, 95),
        "stage_breakdown": breakdown,
        "slowest_stage": max(breakdown, key=lambda name: breakdown[name]["share"]) if breakdown else None,
        "bottlenecks": bottlenecks,
    }


def _profile_total(profile: dict) -> float:
    total = profile.get("total")
    return float(total) if total is not None else float(sum(profile.get("stages", {}).values()))


def bottleneck_severity(share: float) -> str | None:
    """Severity of a stage taking `share` of all time: "high" from 0.5, "medium" from 0.25, else None."""
    if share >= BOTTLENECK_HIGH:
        return "high"
    if share >= BOTTLENECK_MEDIUM:
        return "medium"
    return None


def recommendations(
    summary: dict, reading: MemoryReading | None, plan: BatchPlan | None, utilization_trend: dict | None
) -> list[dict]:
    """Advice, each {message, reason, severity}, from whatever data is given; most severe first.

    Each rule speaks only when its data supports it; missing inputs (None) silence the rules that need them.
    """
    advice = [
        *no_jobs_yet(summary),
        *stage_bottlenecks(summary),
        *memory_nearly_full(reading),
        *memory_under_used(reading, plan),
        *compute_under_used(reading, plan, utilization_trend),
    ]
    return sorted(advice, key=lambda item: SEVERITY_ORDER[item["severity"]])


def _advice(message: str, reason: str, severity: str) -> dict:
    return {"message": message, "reason": reason, "severity": severity}


def no_jobs_yet(summary: dict) -> list[dict]:
    """Say that there is nothing to analyse before the first job finishes."""
    if summary.get("total_pipelines"):
        return []
    return [_advice("no finished jobs yet: timings appear after the first job", "0 finished pipelines", "info")]


def stage_bottlenecks(summary: dict) -> list[dict]:
    """For each bottleneck stage, the setting that shortens it."""
    advice = []
    for bottleneck in summary.get("bottlenecks", []):
        stage = bottleneck["stage"]
        if stage not in STAGE_ADVICE:
            continue
        stats = summary["stage_breakdown"][stage]
        advice.append(
            _advice(
                f"{stage} is {bottleneck['share']:.0%} of time: {STAGE_ADVICE[stage]}",
                f"{stage} averages {stats['avg_seconds']:.2f} s of {summary['avg_duration']:.2f} s per job"
                f" over {summary['total_pipelines']} jobs",
                bottleneck["severity"],
            )
        )
    return advice


def memory_nearly_full(reading: MemoryReading | None) -> list[dict]:
    """Warn when the device is close to running out of memory."""
    if reading is None or reading.used_fraction <= NEARLY_FULL_MEMORY:
        return []
    kind = "GPU" if reading.is_gpu else "RAM"
    return [
        _advice(
            f"{kind} memory nearly full ({reading.used_fraction:.0%}): lower max_batch or the resolution",
            f"{format_bytes(reading.used_bytes)} of {format_bytes(reading.total_bytes)} used on {reading.device}",
            "high",
        )
    ]


def memory_under_used(reading: MemoryReading | None, plan: BatchPlan | None) -> list[dict]:
    """On a GPU with most memory idle, say which bound kept the batch small."""
    if reading is None or not reading.is_gpu or reading.used_fraction >= UNDER_USED_MEMORY:
        return []
    if plan is None:
        action = "raise the batch size (max_batch)"
    elif plan.limited_by == "max_batch":
        action = f"raise max_batch above {plan.max_batch} (memory fits {plan.fits_in_memory} images)"
    elif plan.limited_by == "queue":
        action = f"submit jobs together: the last batch was limited by the queue ({plan.queue_length} waiting)"
    else:
        # memory-bound yet mostly free: the per-image estimate is what holds the batch back
        action = f"check the per-image memory estimate ({format_bytes(plan.per_image_bytes)}): it limits the batch"
    reason = f"{format_bytes(reading.used_bytes)} of {format_bytes(reading.total_bytes)} used on {reading.device}"
    if plan is not None:
        reason += f"; last plan: {plan.reason}"
    return [_advice(f"GPU under-used ({reading.used_fraction:.0%} of memory): {action}", reason, "medium")]


def compute_under_used(reading: MemoryReading | None, plan: BatchPlan | None, trend: dict | None) -> list[dict]:
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
            f"GPU busy {mean:.0%} of the time while jobs wait: raise max_batch or the memory target",
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
    """The last `capacity` readings of a device, taken on demand or every `interval_s` on a daemon thread."""

    def __init__(self, probe: MemorySource, capacity: int = 120, clock: Callable[[], float] = time.monotonic) -> None:
        self.probe = probe
        self.clock = clock
        self._samples: deque[UtilizationSample] = deque(maxlen=capacity)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample(self) -> UtilizationSample:
        """Read the probe once and keep the result."""
        reading = self.probe.read()
        return self.record(self.clock(), reading.utilization, reading.used_bytes)

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
        while True:
            try:
                self.sample()
            except Exception:
                logger.exception("utilization sample failed")
            if self._stop.wait(interval_s):
                return

    def trend(self) -> dict:
        """Mean, last value and direction of utilization over the kept samples, and mean memory in use.

        The direction comes from a least-squares line through (time, utilization): "rising" or "falling" when the
        line changes by at least TREND_CHANGE across the window, else "steady" (also with fewer than 2 samples).
        """
        with self._lock:
            samples = list(self._samples)
        return utilization_trend(samples)


def utilization_trend(samples: list[UtilizationSample]) -> dict:
    """See `UtilizationSampler.trend`; samples without a utilization value count only towards memory."""
    timed = [(s.timestamp, s.utilization) for s in samples if s.utilization is not None]
    window = samples[-1].timestamp - samples[0].timestamp if samples else 0.0
    slope = _slope(timed)
    change = slope * (timed[-1][0] - timed[0][0]) if timed else 0.0
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


def _slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of y over x; 0 with fewer than 2 points or no spread in x."""
    if len(points) < 2:
        return 0.0
    x = np.array([p[0] for p in points], dtype=float)
    y = np.array([p[1] for p in points], dtype=float)
    dx = x - x.mean()
    spread = float(dx @ dx)
    return float(dx @ (y - y.mean()) / spread) if spread else 0.0


def device_status(reading: MemoryReading, plan: BatchPlan | None, trend: dict) -> dict:
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
