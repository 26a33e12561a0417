"""``python tune/search.py`` as a real process, for the tests that interrupt, kill or starve it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "tune" / "search.py"


class Search:
    """``python tune/search.py ...`` in its own process group, its output in files (no pipe to fill up)."""

    def __init__(self, tmp: Path, name: str, args: list[str], env: dict[str, str]):
        self.out, self.err = tmp / f"{name}.out", tmp / f"{name}.err"
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.proc = subprocess.Popen([sys.executable, str(SCRIPT), *args], cwd=tmp, env=env, stdout=out,
                                         stderr=err, start_new_session=True)

    def stdout(self) -> str:
        return self.out.read_text()

    def tail(self) -> str:
        return f"--- stdout ---\n{self.stdout()[-3000:]}\n--- stderr ---\n{self.err.read_text()[-4000:]}"

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"tune/search.py did not exit within {timeout:.0f}s\n{self.tail()}")

    def kill(self) -> None:
        """SIGKILL the process group: the driver and whatever Ray processes it left behind."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)


def until(condition, timeout: float, search: Search, what: str, every: float = 0.2):
    """Poll ``condition`` until it returns something truthy; fail on the deadline or if the search exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if search.proc.poll() is not None:
            pytest.fail(f"tune/search.py exited with {search.proc.returncode} before {what}\n{search.tail()}")
        time.sleep(every)
    pytest.fail(f"no {what} within {timeout:.0f}s\n{search.tail()}")
