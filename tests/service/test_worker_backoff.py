"""The worker's wait after failures in a row: exponential, bounded, jittered."""

from __future__ import annotations

import random

import pytest
import sqlalchemy as sa

from orfeas.service.worker import BACKOFF_FIRST_SECONDS, BACKOFF_MAX_SECONDS, backoff_seconds
from orfeas.store.db import is_database_outage


@pytest.mark.parametrize("failures", [1, 2, 3, 5, 8, 50])
def test_the_wait_doubles_up_to_the_bound_with_jitter_of_half_a_step(failures):
    step = min(BACKOFF_MAX_SECONDS, BACKOFF_FIRST_SECONDS * 2 ** (failures - 1))
    waits = [backoff_seconds(failures, random.Random(seed)) for seed in range(200)]
    assert all(step / 2 <= wait <= step for wait in waits)
    assert max(waits) - min(waits) > step / 4  # jittered: workers cut off together come back apart


def test_the_wait_is_bounded_however_long_the_outage():
    assert max(backoff_seconds(1000, random.Random(seed)) for seed in range(100)) <= BACKOFF_MAX_SECONDS


def test_outages_are_told_apart_from_bad_statements():
    refused = sa.exc.OperationalError("connect", {}, Exception("connection refused"))
    cut = sa.exc.DBAPIError("SELECT 1", {}, Exception("server closed the connection"), connection_invalidated=True)
    assert is_database_outage(refused) and is_database_outage(cut)
    assert not is_database_outage(sa.exc.IntegrityError("INSERT", {}, Exception("duplicate key")))
    assert not is_database_outage(sa.exc.ProgrammingError("SELECT", {}, Exception("no such column")))
    assert not is_database_outage(ValueError("not a database error"))
