"""The ceiling for status polling: a bare FastAPI app whose one endpoint does one primary-key read from the same
SQLite (WAL) database and returns the job's JSON. bench/throughput_bench.py serves it with the same uvicorn fast
paths (httptools, uvloop) as `orfeas serve` and compares the two under the same load."""

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


@app.get("/api/jobs/{job_id}")
def get_job(job_id: str) -> Response:
    row = connection().execute(f"SELECT {', '.join(COLUMNS)} FROM jobs WHERE id = ?", (job_id,)).fetchone()
    if row is None:
        raise HTTPException(404)
    job = dict(zip(COLUMNS, row, strict=True))
    for field in ("options", "result"):
        job[field] = json.loads(job[field]) if job[field] else None
    return Response(json.dumps(job), media_type="application/json")
