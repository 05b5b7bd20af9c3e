"""Shared fixtures."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import sqlalchemy as sa

from orfeas.pipeline.background import Cutout
from orfeas.store.db import create_db_engine
from orfeas.store.migrate import init_db
from tests.fakes import Clock
from tests.synthetic import cutout_from_mask, disc_mask


@pytest.fixture
def disc_cutout() -> Cutout:
    return cutout_from_mask(disc_mask())


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


POSTGRES_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres connect_timeout=3"


@pytest.fixture(scope="session")
def postgres_reachable() -> None:
    """Skip where no PostgreSQL answers at 127.0.0.1:5432 (fail instead when ORFEAS_REQUIRE_POSTGRES is set, as on
    CI, so a broken database set-up cannot pass as skipped tests)."""
    try:
        import psycopg

        psycopg.connect(POSTGRES_ADMIN).close()
    except Exception as exc:
        reason = f"PostgreSQL is not reachable at 127.0.0.1:5432: {exc}"
        if os.environ.get("ORFEAS_REQUIRE_POSTGRES"):
            pytest.fail(reason)
        pytest.skip(reason)


@contextmanager
def throwaway_database(prefix: str = "orfeas_") -> Iterator[str]:
    """A new PostgreSQL database (`<prefix><random>`) on the local server, dropped afterwards; its URL."""
    import psycopg

    name = f"{prefix}{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def postgres_url(postgres_reachable) -> Iterator[str]:
    """A throwaway PostgreSQL database (`orfeas_<random>`) for one test, dropped afterwards; its URL."""
    with throwaway_database() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path) -> Iterator[str]:
    """A fresh, empty database: a new SQLite file, or a new schema on the local PostgreSQL dropped afterwards (the
    PostgreSQL half skips where no server answers, and fails instead under ORFEAS_REQUIRE_POSTGRES, as on CI)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'orfeas.db'}"
        return
    request.getfixturevalue("postgres_reachable")
    import psycopg

    schema = f"orfeas_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA {schema}")
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/postgres?options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as admin:
            admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


@pytest.fixture
def engine(db_url: str) -> Iterator[sa.Engine]:
    """`db_url`'s database (SQLite, then PostgreSQL) with the schema migrated in."""
    engine = create_db_engine(db_url)
    init_db(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def clock() -> Clock:
    """A clock the test moves by hand."""
    return Clock()
