"""The ceiling for status polling: a bare FastAPI app whose one endpoint does one primary-key read from the same
SQLite (WAL) database and returns the job's JSON. bench/throughput_bench.py serves it with the same uvicorn fast
paths (httptools, uvloop) as `orfeas serve` and compares the two under the same load.

The endpoint is a plain `def`, as FastAPI's documentation writes one that calls a blocking database driver (FastAPI
runs it in its thread pool); with BARE_ASYNC=1 it is an `async def` doing the read on the event loop, the stricter
ceiling (no thread hop), which is how `orfeas serve` reads a local SQLite file."""

from __future__ import annotations

import json
import os
import sqlite3
import threading

from fastapi import FastAPI, HTTPException
from fastapi.responses import Response

DATABASE = os.environ["BARE_DATABASE"]
COLUMNS = ("id", "status", "progress", "stage", "input_name", "options", "result", "error", "created_at", "updated_at")
_local = threading.local()

app = FastAPI()


def connection() -> sqlite3.Connection:
    if not hasattr(_local, "db"):
        _local.db = sqlite3.connect(DATABASE, check_same_thread=False)
        _local.db.execute("PRAGMA journal_mode = WAL")
    return _local.db


def job_response(job_id: str) -> Response:
    row = connection().execute(f"SELECT {', '.join(COLUMNS)} FROM jobs WHERE id = ?", (job_id,)).fetchone()
    if row is None:
        raise HTTPException(404)
    job = dict(zip(COLUMNS, row, strict=True))
    for field in ("options", "result"):
        job[field] = json.loads(job[field]) if job[field] else None
    return Response(json.dumps(job), media_type="application/json")


if os.environ.get("BARE_ASYNC") == "1":

    @app.get("/api/jobs/{job_id}")
    async def get_job_on_the_loop(job_id: str) -> Response:
        return job_response(job_id)

else:

    @app.get("/api/jobs/{job_id}")
    def get_job(job_id: str) -> Response:
        return job_response(job_id)
