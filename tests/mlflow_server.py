"""A real ``mlflow server`` process for the tests that talk to one over REST, as a cluster's driver and trials do.

Loopback and a free port, a SQLite store and an artifacts folder under the test's folder, its output in a log
file, and its own process group (uvicorn's workers and MLflow's job runner are in it too), so that stopping it
stops all of them.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

START_TIMEOUT_S = 120  # MLflow's first start creates its tables: ~30 s on a busy 2-core machine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """``mlflow server --backend-store-uri sqlite:///<folder>/mlflow.db --artifacts-destination <folder>/artifacts``.

    ``start()`` returns once ``/health`` answers (and may be called again after ``kill()``: same port, same
    store); ``get``/``post`` call its REST API.
    """

    def __init__(self, folder: Path, env: dict[str, str] | None = None):
        self.folder, self.env = folder, env
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.artifacts = folder / "artifacts"  # on a cluster: s3://<bucket>/mlflow-artifacts
        self.artifacts.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self, timeout: float = START_TIMEOUT_S) -> None:
        self.starts += 1
        command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
                   f"sqlite:///{self.folder}/mlflow.db", "--artifacts-destination", str(self.artifacts),
                   "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]
        with open(self._log_path(), "w") as log:
            self.proc = subprocess.Popen(command, cwd=self.folder, env=self.env, stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"mlflow server exited with {self.proc.returncode}\n{self.log()}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=5) as response:
                    if response.status == 200:
                        return
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.25)
        pytest.fail(f"mlflow server not healthy within {timeout:.0f} s\n{self.log()}")

    def _log_path(self) -> Path:
        return self.folder / f"server-{self.starts}.log"

    def log(self) -> str:
        return self._log_path().read_text()[-3000:]

    def signal(self, sig: int) -> None:
        os.killpg(self.proc.pid, sig)

    def stop(self) -> None:
        """SIGTERM to the process group, SIGKILL if it does not exit within 15 s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)

    def get(self, endpoint: str, timeout: float = 30, **query) -> dict:
        url = f"{self.url}/api/2.0/mlflow/{endpoint}?{urllib.parse.urlencode(query)}"
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return json.load(response)

    def post(self, endpoint: str, body: dict, timeout: float = 30) -> dict:
        request = urllib.request.Request(f"{self.url}/api/2.0/mlflow/{endpoint}", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.load(response)
