"""python analysis/screenshot_ui.py [--tracking-uri URI] [--experiment NAME] [--run-id ID [--artifact PATH]]
[--optuna-storage URL [--study NAME]] [--out PNG]

Takes a screenshot of a sweep in the MLflow UI, as a user first sees it: starts ``mlflow server`` on a free
loopback port against the tracking store, opens the experiment's page (or, with --run-id, that run's
artifacts, e.g. the sweep's parent run and its analysis/ report) in headless Chromium, writes the PNG and
stops the server. With --optuna-storage it does the same for the search's Optuna study in ``optuna-dashboard``
(``pip install -e '.[dashboard]'``). Needs Chromium from the system's packages (Debian: ``apt-get install
chromium``). A manual check, not run in CI.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from mlflow.tracking import MlflowClient

from iakd.analysis.export import search_defaults

DEFAULT_TRACKING_URI, DEFAULT_EXPERIMENT = search_defaults()  # what `python tune/search.py` runs

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--window-size=1600,1000", "--virtual-time-budget=15000")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_up(url: str, timeout: float) -> None:
    """Poll ``url`` until it answers 200, or raise TimeoutError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"no answer from {url} within {timeout:.0f} s")


# MLflow 3.17's UI opens in its GenAI workspace unless told otherwise: with its workspace switch on, the
# experiment's mlflow.experimentKind tag is not consulted, and a fresh browser profile defaults to GenAI (a
# traces overview saying "No data"). This query parameter selects the model-training workspace.
WORKFLOW = "workflowType=machine_learning"


def page_url(base: str, experiment_id: str, run_id: str | None, artifact: str | None = None) -> str:
    """The UI's address of the experiment (its runs table) or of one run's artifacts (opened at ``artifact``,
    e.g. ``analysis/report.md``), in the training workspace."""
    if run_id:
        path = f"/{artifact.strip('/')}" if artifact else ""
        return f"{base}/#/experiments/{experiment_id}/runs/{run_id}/artifacts{path}?{WORKFLOW}"
    return f"{base}/#/experiments/{experiment_id}/runs?{WORKFLOW}"


def _chromium(browser: str | None) -> str:
    executable = browser or next((shutil.which(name) for name in BROWSERS if shutil.which(name)), None)
    if executable is None:
        raise SystemExit("error: no Chromium found (Debian: apt-get install chromium), or pass --browser")
    return executable


def screenshot(tracking_uri: str, experiment: str, out: Path, *, run_id: str | None = None,
               artifact: str | None = None, browser: str | None = None, timeout: float = 90.0) -> Path:
    """Serve ``tracking_uri`` with ``mlflow server``, screenshot the experiment's (or run's) page into ``out``."""
    found = MlflowClient(tracking_uri=tracking_uri).get_experiment_by_name(experiment)
    if found is None:
        raise SystemExit(f"error: experiment {experiment!r} not found at {tracking_uri}")
    executable = _chromium(browser)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", tracking_uri, "--host", "127.0.0.1",
               "--port", str(port), "--workers", "1"]
    return _serve_and_shoot(command, f"{base}/health", page_url(base, found.experiment_id, run_id, artifact), out,
                            executable, timeout)


def screenshot_study(storage: str, study: str | None, out: Path, *, browser: str | None = None,
                     timeout: float = 90.0) -> Path:
    """Serve ``storage`` with ``optuna-dashboard``, screenshot the study's page (the newest study by default)."""
    import optuna

    names = optuna.get_all_study_names(storage)
    if not names or (study is not None and study not in names):
        raise SystemExit(f"error: study {study!r} not found in {storage}" if study else f"error: no study in {storage}")
    study_id = optuna.load_study(study_name=study or names[-1], storage=storage)._study_id
    executable = _chromium(browser)
    dashboard = shutil.which("optuna-dashboard")
    if dashboard is None:
        raise SystemExit("error: optuna-dashboard not found (pip install -e '.[dashboard]')")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    return _serve_and_shoot([dashboard, storage, "--host", "127.0.0.1", "--port", str(port)], f"{base}/",
                            f"{base}/dashboard/studies/{study_id}", out, executable, timeout)


def _serve_and_shoot(command: list[str], health: str, page: str, out: Path, executable: str, timeout: float) -> Path:
    # its own process group, so that stopping it also stops the server's worker processes
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_until_up(health, timeout)
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
            subprocess.run([executable, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--screenshot={out.resolve()}",
                            page], check=True, timeout=timeout, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    if not out.is_file():
        raise SystemExit(f"error: Chromium wrote no screenshot to {out}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python analysis/screenshot_ui.py", description=__doc__.split("\n\n")[1])
    parser.add_argument("--tracking-uri", default=DEFAULT_TRACKING_URI, help=f"default {DEFAULT_TRACKING_URI}")
    parser.add_argument("--experiment", default=DEFAULT_EXPERIMENT, help=f"default {DEFAULT_EXPERIMENT}")
    parser.add_argument("--run-id", help="screenshot this run's artifacts instead of the experiment page")
    parser.add_argument("--artifact", help="with --run-id: open this artifact, e.g. analysis/report.md")
    parser.add_argument("--optuna-storage", help="screenshot the Optuna study in this storage with optuna-dashboard")
    parser.add_argument("--study", help="with --optuna-storage: the study (default: the newest)")
    parser.add_argument("--out", help="PNG to write (default analysis_out/<experiment>/mlflow_ui.png)")
    parser.add_argument("--browser", help="Chromium executable (default: the first of " + ", ".join(BROWSERS) + ")")
    args = parser.parse_args(argv)
    page = "optuna_dashboard.png" if args.optuna_storage else "mlflow_ui.png"
    out = Path(args.out) if args.out else Path("analysis_out") / args.experiment.replace("/", "_") / page
    if args.optuna_storage:
        print(screenshot_study(args.optuna_storage, args.study, out, browser=args.browser))
        return 0
    print(screenshot(args.tracking_uri, args.experiment, out, run_id=args.run_id, artifact=args.artifact,
                     browser=args.browser))
    return 0


if __name__ == "__main__":
    sys.exit(main())
