"""Tests of the agent SDK and the MCP server."""
