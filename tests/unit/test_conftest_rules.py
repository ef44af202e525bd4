"""tests/conftest.py's rule against servers left polling a closed socket, on a real
``ThreadingHTTPServer``: closed under its running ``serve_forever()`` it is found, and
``shutdown()`` still ends its thread; shut down first, it is not found. (Such a thread spins:
in one lab run five of them each took about 16 % of a core, measured with ``top -H``.)"""

from __future__ import annotations

import http.server
import threading

import pytest

from tests.conftest import closed_servers

pytestmark = pytest.mark.nolab


def serving() -> tuple[http.server.ThreadingHTTPServer, threading.Thread]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, thread


def test_a_server_closed_under_its_thread_is_found_and_still_shuts_down() -> None:
    server, thread = serving()
    try:
        assert server not in closed_servers()
        server.server_close()
        assert closed_servers() == [server]
    finally:
        server.shutdown()
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert server not in closed_servers()


def test_a_server_shut_down_first_is_not_found() -> None:
    server, thread = serving()
    server.shutdown()
    server.server_close()
    thread.join(timeout=30)
    assert server not in closed_servers()
