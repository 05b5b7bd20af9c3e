"""How long the worker's claim takes with a long-running service's table: 2,880 rows, 384 queued, batches of 8.

    .venv/bin/python bench/claim_bench.py [--postgres]

Prints the median and worst of 30 claims on SQLite (and on the local PostgreSQL with --postgres, in a throwaway
schema). Moved out of the test suite, which asserts behaviour, not speed.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import sqlalchemy as sa

from orfeas.store import JobStore, NewJob, create_db_engine, init_db, new_job_id
from orfeas.store.db import sqlite_url
from orfeas.store.schema import jobs


def claim_timings(url: str) -> list[float]:
    engine = create_db_engine(url)
    init_db(engine)
    store = JobStore(engine)
    for chunk in range(30):
        key = f"key-{chunk % 10}"
        new = [NewJob(id=new_job_id(), options={"n": i}, batch_key=key, input_name=f"{i}.png") for i in range(96)]
        store.create_jobs(new, owner="user:bench")
    with engine.begin() as conn:  # most rows of a long-running service are finished jobs
        finished = sa.select(jobs.c.id).order_by(jobs.c.created_at).limit(26 * 96).scalar_subquery()
        conn.execute(sa.update(jobs).where(jobs.c.id.in_(finished)).values(status="succeeded"))
    timings = []
    for _ in range(30):
        started = time.perf_counter()
        assert len(store.claim_batch("w1", max_jobs=8, lease_seconds=30)) == 8
        timings.append((time.perf_counter() - started) * 1000)
    engine.dispose()
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--postgres", action="store_true", help="also on postgresql://postgres@127.0.0.1:5432")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        urls = {"sqlite": sqlite_url(Path(tmp))}
        schema = f"orfeas_bench_{uuid.uuid4().hex[:8]}"
        admin = None
        if args.postgres:
            admin = create_db_engine("postgresql://postgres@127.0.0.1:5432/postgres")
            with admin.begin() as conn:
                conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
            urls["postgresql"] = f"postgresql://postgres@127.0.0.1:5432/postgres?options=-csearch_path%3D{schema}"
        try:
            for name, url in urls.items():
                timings = claim_timings(url)
                print(f"claim_batch on {name}: median {statistics.median(timings):.2f} ms, max {max(timings):.2f} ms")
        finally:
            if admin is not None:
                with admin.begin() as conn:
                    conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")


if __name__ == "__main__":
    main()
