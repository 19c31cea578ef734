"""Loopback ports for tests: one free a moment ago, or one nothing listens on."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picked it)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def closed_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on: a connection to it is refused.

    The same as :func:`free_port` (a port the OS just handed out and took back); the name says
    what the caller wants from it.
    """
    return free_port()
