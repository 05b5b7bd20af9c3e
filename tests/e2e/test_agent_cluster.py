"""Agent rate limits and nonces hold across two server processes sharing one database (SQLite, then PostgreSQL)."""

from __future__ import annotations

import pytest

from tests.e2e.server import Server
from tests.e2e.test_agent_attacks import MASTER_KEY, register, signed


@pytest.fixture(params=["sqlite", "postgresql"])
def database_env(request: pytest.FixtureRequest) -> dict[str, str]:
    """The shared database for the servers and `orfeas agents`: the data dir's SQLite file, or a throwaway
    PostgreSQL database (through ORFEAS_DATABASE_URL, which every command reads)."""
    if request.param == "sqlite":
        return {}
    return {"ORFEAS_DATABASE_URL": request.getfixturevalue("postgres_url")}


def test_rate_limit_and_replay_are_shared_by_two_servers(tmp_path, database_env):
    env = {"ORFEAS_AGENT_MASTER_KEY": MASTER_KEY, **database_env}
    first = Server(tmp_path / "data", env=env).start()
    # a second API process on the same data dir and database, without its own worker
    second = Server(tmp_path / "data", env=env, args=("--no-worker",), log=tmp_path / "second.log")
    second.start()
    try:
        key_id, secret = register(first, "shared", rate=20)
        path = f"/api/agent/status/{'0' * 32}"
        with first.client() as a, second.client() as b:
            statuses = []
            for index in range(30):
                client = a if index % 2 == 0 else b
                statuses.append(client.get(path, headers=signed(key_id, secret, "GET", path)).status_code)
            assert statuses.count(404) == 20  # admitted (the job does not exist)
            assert statuses.count(429) == 10

            # a nonce accepted by one server is refused by the other
            key_id, secret = register(first, "replayer")
            headers = signed(key_id, secret, "GET", path)
            assert a.get(path, headers=headers).status_code == 404
            replay = b.get(path, headers=headers)
            assert replay.status_code == 401 and "nonce" in replay.json()["error"]["message"]
    finally:
        second.stop()
        first.stop()
