"""Ports for servers the tests and benchmarks start on the loopback."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the kernel's choice for port 0).

    Another process may take it before the caller binds it; servers started with it fail to
    bind then, which their start-up wait reports.
    """
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
