"""The Python SDK, the `orfeas agent` CLI and the MCP server, each against a real server on 127.0.0.1."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import trimesh
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

from orfeas.client import AgentClient
from orfeas.client.agent import NotFoundError, RateLimitError
from tests.e2e.server import ORFEAS, Server
from tests.e2e.test_agent_attacks import MASTER_KEY, register
from tests.synthetic import EXAMPLES


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    running = Server(tmp_path_factory.mktemp("sdk"), env={"ORFEAS_AGENT_MASTER_KEY": MASTER_KEY}).start()
    yield running
    running.stop()


def test_sdk_round_trip(server, tmp_path):
    key_id, secret = register(server, "sdk-agent")
    seen = []
    with AgentClient(server.url, key_id, secret) as client:
        job = client.generate(EXAMPLES / "chair.png", formats=["glb", "stl"], faces=3000)
        assert job["status"] == "queued" and len(job["id"]) == 32
        final = client.wait(job["id"], on_progress=lambda j: seen.append(j["progress"]))
        assert final["status"] == "succeeded"
        assert seen and seen == sorted(seen) and seen[-1] == 100
        path = client.download(job["id"], "glb", tmp_path / "chair.glb")
        assert len(trimesh.load(path, force="mesh").faces) <= 3000

        batch = client.batch([EXAMPLES / "robot.png", (EXAMPLES / "teapot.png").read_bytes()], faces=2000)
        assert len(batch) == 2
        assert all(client.wait(job["id"])["status"] == "succeeded" for job in batch)
        with pytest.raises(NotFoundError) as missing:
            client.status("0" * 32)
        assert missing.value.status_code == 404


def test_sdk_raises_rate_limit_errors_that_say_when_to_retry(server):
    key_id, secret = register(server, "sdk-limited", rate=2)
    with AgentClient(server.url, key_id, secret) as client:
        for _ in range(2):
            with pytest.raises(NotFoundError):
                client.status("0" * 32)
        with pytest.raises(RateLimitError) as limited:
            client.status("0" * 32)
    assert limited.value.status_code == 429
    assert 0 < limited.value.retry_after <= 60


def agent_env(server: Server, key_id: str, secret: str) -> dict[str, str]:
    return {
        **os.environ,
        "ORFEAS_AGENT_URL": server.url,
        "ORFEAS_AGENT_KEY": key_id,
        "ORFEAS_AGENT_SECRET": secret,
    }


def test_cli_agent_generate_downloads_the_models(server, tmp_path):
    key_id, secret = register(server, "cli-agent")
    out = tmp_path / "models"
    proc = subprocess.run(
        [ORFEAS, "agent", "generate", str(EXAMPLES / "flamingo.png"), "--format", "glb,ply", "--out", str(out)],
        capture_output=True,
        text=True,
        env=agent_env(server, key_id, secret),
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert {p.suffix for p in out.iterdir()} == {".glb", ".ply"}

    bad = subprocess.run(
        [ORFEAS, "agent", "generate", str(EXAMPLES / "flamingo.png")],
        capture_output=True,
        text=True,
        env=agent_env(server, key_id, "wrong-secret"),
        timeout=60,
    )
    assert bad.returncode != 0 and "401" in bad.stderr + bad.stdout
    assert "Traceback" not in bad.stderr


@pytest.mark.anyio
async def test_mcp_server_generates_through_a_real_client_session(server, tmp_path):
    key_id, secret = register(server, "mcp-agent")
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "orfeas.mcp"], env=agent_env(server, key_id, secret)
    )
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        tools = {tool.name for tool in (await session.list_tools()).tools}
        assert {"generate_3d", "job_status"} <= tools
        arguments = {
            "image_path": str(EXAMPLES / "chair.png"),
            "options": {"faces": 2000, "formats": ["glb", "obj"]},
            "out_dir": str(tmp_path / "mcp-out"),
        }
        result = await session.call_tool("generate_3d", arguments)
        assert not result.is_error, result.content
        job = json.loads(result.content[0].text)
        assert job["status"] == "succeeded"
        assert sorted(os.path.basename(p) for p in job["files"].values()) == ["chair.glb", "chair.obj.zip"]
        assert all(os.path.getsize(p) > 1000 for p in job["files"].values())
        status = await session.call_tool("job_status", {"job_id": job["id"]})
        assert json.loads(status.content[0].text)["status"] == "succeeded"
