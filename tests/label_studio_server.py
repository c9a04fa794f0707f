"""A real local Label Studio server for tests (session fixture in test_label_studio.py).

The server is the ``label-studio`` package from its own virtual environment (it pins versions
that clash with ours): ``$WSSS_PL_LABEL_STUDIO`` names its ``label-studio`` executable, else one
on PATH is used; without either the tests are skipped (``.ci/run`` makes the environment).
It runs on 127.0.0.1, a free port, sqlite in a temp data dir, with a fixed legacy API token.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

TOKEN = "0123456789abcdef0123456789abcdef01234567"
START_TIMEOUT_S = (
    420  # the first start migrates a fresh sqlite database (about 2 min on 2 busy cores)
)


def executable() -> str | None:
    given = os.environ.get("WSSS_PL_LABEL_STUDIO")
    if given:
        return given if Path(given).is_file() else None
    return shutil.which("label-studio")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LabelStudio:
    """A started server and a tiny JSON client of its REST API."""

    def __init__(self, program: str, data_dir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(
            os.environ,
            LABEL_STUDIO_BASE_DATA_DIR=str(data_dir),
            DJANGO_DB="sqlite",
            LABEL_STUDIO_USERNAME="reviewer@example.com",
            LABEL_STUDIO_PASSWORD="reviewer-password",
            LABEL_STUDIO_USER_TOKEN=TOKEN,
            LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN="true",
            SENTRY_DSN="",
            FRONTEND_SENTRY_DSN="",
        )
        self.log = (data_dir / "server.log").open("wb")
        self.process = subprocess.Popen(
            [program, "start", "--no-browser", "--internal-host", "127.0.0.1",
             "--port", str(self.port), "--data-dir", str(data_dir)],
            env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        self.data_dir = data_dir
        self._wait()

    def _wait(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = (self.data_dir / "server.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"label-studio exited with {self.process.returncode}: {tail}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=5) as answer:
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(2)
        self.stop()
        raise RuntimeError(f"label-studio did not answer on {self.url} in {START_TIMEOUT_S} s")

    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode("utf-8")
        request = urllib.request.Request(
            f"{self.url}{path}", data=data, method=method,
            headers={"Authorization": f"Token {TOKEN}", "Content-Type": "application/json"},
        )  # fmt: skip
        with urllib.request.urlopen(request, timeout=120) as answer:
            text = answer.read()
        return json.loads(text) if text else None

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)  # the server and its workers (own session)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.log.close()
