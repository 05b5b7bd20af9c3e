"""Errors that callers can act on; the CLI and the API map each to a message and an exit or status code."""


class OrfeasError(Exception):
    """Base class of every error ORFEAS raises on purpose."""


class InvalidImage(OrfeasError):
    """The input is not an image we can use (wrong format, truncated, too large, empty...)."""


class InvalidOptions(OrfeasError):
    """Generation options are out of range or inconsistent."""


class IdempotencyConflict(InvalidOptions):
    """An Idempotency-Key already used for a different request (other images or options)."""


class WeightsMissing(InvalidOptions):
    """A model chosen for a job whose weights are not on this machine (the message names files and folders)."""


class FormatNotAvailable(OrfeasError):
    """A finished job has no result in the asked-for format (it was not asked for, or the job has no result)."""


class GeneratorUnavailable(OrfeasError):
    """The requested generator is unknown or cannot run on this machine (missing extra, missing weights)."""


class StorageUnavailable(OrfeasError):
    """The data directory cannot take more files now (disk full, quota, read-only); nothing was stored."""

    retry_after = 30


class Stopped(OrfeasError):
    """Generation was stopped before it finished because nobody wants its result any more (every job canceled)."""
