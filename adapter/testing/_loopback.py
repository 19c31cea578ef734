"""What both HTTP fakes share: a threaded loopback server, its request handler base, and small
helpers for the JSON bodies they answer with."""

from __future__ import annotations

import contextlib
import json
import socket
import sys
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value).encode()


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _wait_until(
    cond: threading.Condition, ready: Callable[[], bool], timeout: float, failure: Callable[[], str]
) -> None:
    """Wait on ``cond`` (held by the caller) until ``ready()``, which the fake's threads make
    true; raise AssertionError with ``failure()`` when ``timeout`` seconds pass first."""
    deadline = time.monotonic() + timeout
    while not ready():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(failure())
        cond.wait(remaining)


class _LoopbackServer:
    """What the fakes share: a threaded HTTP server on loopback, a context manager, close()."""

    _closed = True
    # Exceptions raised while answering; each such request was answered 500.
    server_errors: list[BaseException]

    def _serve(self, host: str, port: int, handler: type) -> None:
        self._closed = False
        self._closing = threading.Event()  # set on close: wakes handlers that wait on purpose
        self._server = _Server((host, port), handler, self)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"{type(self).__name__}:{self._server.server_address[1]}",
            daemon=True,
        )
        self._thread.start()

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:54321``."""
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> Any:
        if self._closed:
            raise RuntimeError(f"{type(self).__name__} is closed")
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop serving, drop open connections (streams included), join the server's threads."""
        if self._closed:
            return
        self._closed = True
        self._closing.set()
        self._server.shutdown()
        self._thread.join()
        self._server.server_close()
        self._server.close_connections()


class _Server(ThreadingHTTPServer):
    """ThreadingHTTPServer that tracks its connections so close() can end keep-alive ones."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type, fake: _LoopbackServer) -> None:
        self.fake = fake
        self._connections: dict[socket.socket, threading.Thread] = {}
        self._connections_lock = threading.Lock()
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        thread = threading.Thread(
            target=self.process_request_thread, args=(request, client_address), daemon=True
        )
        with self._connections_lock:
            self._connections[request] = thread
        thread.start()

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._connections_lock:
                self._connections.pop(request, None)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Quiet: a client that hangs up mid-request is not worth a traceback on stderr.
        exc = sys.exc_info()[1]
        if exc is not None and not isinstance(exc, ConnectionError | TimeoutError):
            self.fake.server_errors.append(exc)

    def close_connections(self, timeout: float = 5.0) -> None:
        with self._connections_lock:
            connections = list(self._connections.items())
        for sock, _thread in connections:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + timeout
        for _sock, thread in connections:
            thread.join(max(0.0, deadline - time.monotonic()))


class _FakeHandler(BaseHTTPRequestHandler):
    """What the fakes' handlers share: HTTP/1.1 keep-alive, quiet, every method to _handle."""

    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes; without this, Nagle's algorithm and the
    # client's delayed ACK add ~40 ms to every keep-alive answer.
    disable_nagle_algorithm = True
    sys_version = ""
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _handle(self) -> None:
        raise NotImplementedError

    def _drop(self) -> None:
        """Hang up without (finishing) an answer, as a failing or stopped server would."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def do_PATCH(self) -> None:
        self._handle()
