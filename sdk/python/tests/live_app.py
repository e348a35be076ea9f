"""What the client's tests share: a flaky loopback server in front of the live server, and ORM reads."""

from __future__ import annotations

import asyncio
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import httpx

from usage.models import UsageEvent

T = TypeVar("T")

# No test waits this long; a proxy a failed test left running stops by itself.
PROXY_LIFETIME_SECONDS = 120


def events_of(customer: str) -> list[UsageEvent]:
    return list(UsageEvent.objects.filter(customer__external_id=customer).order_by("id"))


def keys_of(customer: str) -> list[str]:
    return [event.idempotency_key for event in events_of(customer)]


def quantity_total(customer: str) -> Decimal:
    return sum((event.quantity for event in events_of(customer)), Decimal(0))


# --- a flaky loopback server in front of the live server -------------------------------------------

FORWARD = "forward"  # pass the request on and its answer back
FAIL_AFTER_WRITE = "500"  # pass it on (the write runs), then answer 500 instead: the answer is lost
RATE_LIMITED = "429"  # answer 429 with Retry-After, passing nothing on
DROP_AFTER_WRITE = "drop"  # pass it on, then close the connection without an answer
UNREACHABLE = "cut"  # close the connection at once, passing nothing on: the server is down


@dataclass
class ProxiedRequest:
    method: str
    path: str
    idempotency_key: str | None
    action: str
    at: float


class FlakyProxy:
    """Answers request n with ``script[n]``, then with ``then`` for every request after the script."""

    def __init__(
        self, upstream: str, script: list[str], *, then: str = FORWARD, retry_after: int = 1
    ) -> None:
        self.upstream = upstream.rstrip("/")
        self.script = list(script)
        self.then = then
        self.retry_after = retry_after
        self.seen: list[ProxiedRequest] = []
        self._lock = threading.Lock()
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1})
        self._thread.daemon = True
        self._deadline = threading.Timer(PROXY_LIFETIME_SECONDS, self.stop)
        self._deadline.daemon = True

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> FlakyProxy:
        self._thread.start()
        self._deadline.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._deadline.cancel()
        self._server.shutdown()
        self._server.server_close()

    def actions(self, path: str | None = None) -> list[str]:
        return [seen.action for seen in self.seen if path is None or seen.path == path]

    def _next_action(self, request: ProxiedRequest) -> str:
        with self._lock:
            request.action = self.script.pop(0) if self.script else self.then
            self.seen.append(request)
            return request.action

    def _handler_class(self) -> type[http.server.BaseHTTPRequestHandler]:
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self._answer()

            def do_POST(self) -> None:
                self._answer()

            def do_PUT(self) -> None:
                self._answer()

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                action = proxy._next_action(
                    ProxiedRequest(
                        self.command, self.path, self.headers.get("Idempotency-Key"), "", time.monotonic()
                    )
                )
                if action == UNREACHABLE:
                    self.close_connection = True
                    return
                if action == RATE_LIMITED:
                    self._send(
                        429,
                        b'{"error": {"code": "rate_limited", "message": "Slow down.", "request_id": null}}',
                        {"Retry-After": str(proxy.retry_after)},
                    )
                    return
                headers = {
                    name: value
                    for name, value in self.headers.items()
                    if name.lower() not in {"host", "content-length", "connection"}
                }
                upstream = httpx.request(
                    self.command, f"{proxy.upstream}{self.path}", content=body, headers=headers, timeout=30
                )
                if action == DROP_AFTER_WRITE:
                    self.close_connection = True
                    return
                if action == FAIL_AFTER_WRITE:
                    self._send(
                        500,
                        b'{"error": {"code": "internal_error", "message": "Boom.", "request_id": null}}',
                        {},
                    )
                    return
                passed = {
                    name: value
                    for name, value in upstream.headers.items()
                    if name.lower()
                    not in {"content-length", "transfer-encoding", "connection", "content-encoding"}
                }
                self._send(upstream.status_code, upstream.content, passed)

            def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
                self.send_response(status)
                headers = {"Content-Type": "application/json", **headers}
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler


# --- a process that writes to an event buffer, then exits ----------------------------------------

WRITER = Path(__file__).resolve().parent / "buffer_writer.py"


def run_buffer_writer(
    *,
    base_url: str,
    api_key: str,
    buffer: Path,
    customer: str,
    prefix: str,
    count: int,
    awaited: bool = False,
) -> list[str]:
    """Run ``buffer_writer.py`` in a process of its own; the statuses it got, one per event."""
    command = [sys.executable, str(WRITER), str(buffer), customer, prefix, str(count)]
    if awaited:
        command.append("--async")
    finished = subprocess.run(  # noqa: S603  (our own interpreter and script)
        command,
        env={**os.environ, "BILLING_API_KEY": api_key, "BILLING_API_BASE": base_url},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert finished.returncode == 0, finished.stderr
    return list(json.loads(finished.stdout.strip().splitlines()[-1]))


def unreachable_url() -> str:
    """The address of a loopback port nothing listens on: a server that is down."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def wait_until(condition: Callable[[], bool], *, timeout: float = 20) -> None:
    """Wait for a background thread's work to show; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not done within {timeout} s")
        time.sleep(0.05)


def run_async(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion on a thread of its own. In the app's full test run pytest-playwright's
    sync API keeps an event loop running in the test thread for the whole session, and ``asyncio.run``
    refuses to start inside a running loop."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()
