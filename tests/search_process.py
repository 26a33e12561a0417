"""``python tune/search.py`` as a real process, for the tests that interrupt, kill or starve it."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "tune" / "search.py"
# The digits default evaluates and checkpoints every 10th epoch; sweeps of a few epochs that test what happens
# between epochs (a checkpoint to resume from, ASHA's rungs, every epoch's figures) ask for every epoch.
EVERY_EPOCH = ["run.evaluation.every=1", "run.checkpoint_every=1"]


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


def session_processes(ray_tmp: str) -> dict[int, str]:
    """pid -> command line of every process whose environment holds ``RAY_TMPDIR=ray_tmp``: one test's Ray
    session and nothing else (other Ray clusters on the machine have other temp folders)."""
    found = {}
    wanted = f"RAY_TMPDIR={ray_tmp}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if wanted in (entry / "environ").read_bytes().split(b"\0"):
                found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return found


@contextlib.contextmanager
def search_env(**extra: str) -> Iterator[dict[str, str]]:
    """The environment of search processes: this one's without RAY_, MLFLOW_ and IAKD_ variables, plus a short
    private RAY_TMPDIR (socket paths < 107 characters; no joining a stray cluster) and TMPDIR (a trial restored
    from a checkpoint leaves a copy of it in tempfile.gettempdir()), workers at normal priority (Ray runs them at
    nice 15, and beside any busy process they would crawl), one torch thread for the driver (2 cores shared with
    Ray), and ``extra``. Afterwards every process of that Ray session is killed and the folder removed."""
    ray_tmp = tempfile.mkdtemp(prefix="r", dir="/tmp")
    values = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_", "IAKD_"))}
    values.update(RAY_TMPDIR=ray_tmp, TMPDIR=ray_tmp, RAY_worker_niceness="0", PYTHONUNBUFFERED="1",
                  OMP_NUM_THREADS="1", **extra)
    try:
        yield values
    finally:
        for pid in session_processes(ray_tmp):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(ray_tmp, ignore_errors=True)
