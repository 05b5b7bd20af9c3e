"""Shared fixtures."""

from __future__ import annotations

import pytest

from orfeas.pipeline.background import Cutout
from tests.synthetic import cutout_from_mask, disc_mask


@pytest.fixture
def disc_cutout() -> Cutout:
    return cutout_from_mask(disc_mask())


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
