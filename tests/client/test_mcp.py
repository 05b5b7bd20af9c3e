"""The MCP server as an MCP client sees it: `python -m orfeas.mcp` spawned over stdio, driven by ClientSession."""

from __future__ import annotations

import socket
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

from tests.synthetic import REPO

CREDENTIALS = {"ORFEAS_AGENT_KEY": "agent-key-1", "ORFEAS_AGENT_SECRET": "s3cret-for-tests"}


def closed_port() -> int:
    """A loopback port with nothing listening (bound and released, so connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def with_session(env: dict[str, str], use: Callable[[ClientSession], Awaitable[Any]]) -> Any:
    """Start the MCP server with `env`, initialise a session, and return what `use(session)` returns."""

    async def main() -> Any:
        server = StdioServerParameters(command=sys.executable, args=["-m", "orfeas.mcp"], env=env, cwd=str(REPO))
        with anyio.fail_after(60):
            async with stdio_client(server) as (read, write), ClientSession(read, write) as session:
                await session.initialize()
                return await use(session)

    return anyio.run(main)


def result_text(result: Any) -> str:
    return " ".join(getattr(block, "text", "") for block in result.content)


def test_list_tools_shows_both_tools_with_their_input_schemas() -> None:
    tools = {tool.name: tool for tool in with_session(CREDENTIALS, lambda s: s.list_tools()).tools}

    assert set(tools) == {"generate_3d", "job_status"}
    generate = tools["generate_3d"].input_schema
    assert set(generate["properties"]) == {"image_path", "options", "wait", "out_dir", "views"}
    assert generate["required"] == ["image_path"]
    assert generate["properties"]["image_path"]["type"] == "string"
    assert generate["properties"]["wait"] == {"default": True, "title": "Wait", "type": "boolean"}
    assert tools["job_status"].input_schema["required"] == ["job_id"]
    description = tools["generate_3d"].description
    assert all(word in description for word in ("glb", "obj", "stl", "ply", "faces", "resolution", "texture"))


def test_an_unreachable_server_is_a_clear_tool_error_and_the_mcp_server_lives_on() -> None:
    url = f"http://127.0.0.1:{closed_port()}"

    async def use(session: ClientSession) -> tuple[Any, Any, Any]:
        first = await session.call_tool("job_status", {"job_id": "j1"})
        second = await session.call_tool("job_status", {"job_id": "j2"})
        return first, second, await session.list_tools()

    first, second, tools = with_session({**CREDENTIALS, "ORFEAS_AGENT_URL": url}, use)

    for result in (first, second):
        assert result.is_error
        assert f"cannot reach the ORFEAS server at {url}" in result_text(result)
    assert len(tools.tools) == 2


def test_generate_3d_explains_a_missing_file_and_missing_credentials() -> None:
    async def use(session: ClientSession) -> tuple[Any, Any]:
        missing_file = await session.call_tool("generate_3d", {"image_path": "/no/such/chair.png"})
        missing_key = await session.call_tool("job_status", {"job_id": "j1"})
        return missing_file, missing_key

    missing_file, missing_key = with_session({}, use)

    assert missing_file.is_error
    assert "image not found: '/no/such/chair.png'" in result_text(missing_file)
    assert missing_key.is_error
    assert "ORFEAS_AGENT_KEY and ORFEAS_AGENT_SECRET not set" in result_text(missing_key)
