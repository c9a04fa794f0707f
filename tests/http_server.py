"""A local HTTP file server for tests: serves a directory on 127.0.0.1 from a background thread.

Supports GET/HEAD with single byte ranges (``Range: bytes=a-`` / ``bytes=a-b``), can be told to
ignore ranges or to drop the connection part-way through a file, and records every request so a
test can assert that a resume really sent a Range header.

    with serve_directory(tmp_path / "www") as server:
        download_file(server.url("a/b.bin"), ...)

Other test modules can use the ``http_server`` fixture by importing it
(``from http_server import http_server``) or by wrapping :func:`serve_directory` themselves.
"""

from __future__ import annotations

import os
import re
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest


@dataclass
class ServedRequest:
    """One request the server answered."""

    path: str
    range: str | None
    status: int


@dataclass
class LocalServer:
    """Handle of a running server: its root, base URL, options and request log."""

    root: Path
    base_url: str
    ranges: bool = True
    # path -> bytes after which the next response for that path is cut off (one-shot)
    drop_after: dict[str, int] = field(default_factory=dict)
    requests: list[ServedRequest] = field(default_factory=list)

    def url(self, relative: str) -> str:
        """Full URL of a file under the served root."""
        return f"{self.base_url}/{relative.lstrip('/')}"


def free_port() -> int:
    """A TCP port that was free a moment ago (for 'server down' tests, nothing listens on it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _handler(state: LocalServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # keep pytest output clean
            return

        def do_HEAD(self) -> None:
            self._serve(body=False)

        def do_GET(self) -> None:
            self._serve(body=True)

        def _serve(self, body: bool) -> None:
            relative = unquote(urlsplit(self.path).path).lstrip("/")
            target = (state.root / relative).resolve()
            range_header = self.headers.get("Range")
            if state.root.resolve() not in target.parents or not target.is_file():
                self._answer(relative, range_header, 404)
                self.end_headers()
                return
            data = target.read_bytes()
            start, end, status = 0, len(data), 200
            match = re.fullmatch(r"bytes=(\d+)-(\d*)", range_header or "")
            if state.ranges and match:
                start = int(match.group(1))
                end = min(int(match.group(2)) + 1, len(data)) if match.group(2) else len(data)
                if start >= len(data):
                    self._answer(relative, range_header, 416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                status = 206
            self._answer(relative, range_header, status)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(end - start))
            self.send_header("Accept-Ranges", "bytes" if state.ranges else "none")
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
            self.end_headers()
            if not body:
                return
            cut = state.drop_after.pop(relative, None)
            if cut is not None:  # send part of the body, then drop the connection
                self.wfile.write(data[start : start + cut])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            self.wfile.write(data[start:end])

        def _answer(self, relative: str, range_header: str | None, status: int) -> None:
            state.requests.append(ServedRequest(relative, range_header, status))
            self.send_response(status)

    return Handler


@contextmanager
def serve_directory(root: str | Path, *, ranges: bool = True) -> Iterator[LocalServer]:
    """Serve ``root`` on 127.0.0.1 (free port) in a daemon thread for the ``with`` block."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    state = LocalServer(root=root, base_url="", ranges=ranges)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    server.daemon_threads = True
    state.base_url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.02}, name="test-http", daemon=True
    )
    thread.start()
    # A CI with http_proxy set must still reach 127.0.0.1 directly (urllib reads no_proxy per
    # request).
    saved = {name: os.environ.get(name) for name in ("no_proxy", "NO_PROXY")}
    for name, value in saved.items():
        os.environ[name] = ",".join(filter(None, [value, "127.0.0.1", "localhost"]))
    try:
        yield state
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[LocalServer]:
    """A server for ``tmp_path / "www"``; put files there and fetch ``http_server.url(name)``."""
    with serve_directory(tmp_path / "www") as server:
        yield server
