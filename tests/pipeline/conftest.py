"""Fixtures shared by the pipeline tests."""

from __future__ import annotations

import socket

import pytest


@pytest.fixture(scope="module")
def offline():
    """Cut the network: every connection or name lookup is refused and recorded (a library may catch the error,
    the record stays). Tests that load or run a model assert that nothing was attempted."""
    attempts: list[tuple] = []

    def refuse(*args, **kwargs):
        attempts.append(args[1:])
        raise OSError(f"network access attempted: {args[1:]}")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", refuse)
        patch.setattr(socket, "getaddrinfo", refuse)
        patch.setattr(socket, "create_connection", refuse)
        yield attempts
