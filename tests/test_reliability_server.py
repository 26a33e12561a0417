"""The MLflow tracking server goes away for a few seconds during a sweep: logging waits and retries, the trial
goes on, and once the server is back every epoch is in its run exactly once.

The test starts a real ``mlflow server`` (127.0.0.1, a free port, SQLite in tmp, ``--artifacts-destination`` a
tmp folder) and ``python tune/search.py`` against it as real processes. During the trial's training the server
goes away twice, in the two ways a server does:

1. hung: its process group is SIGSTOPped for 5 s (or three epochs, if longer), then SIGCONTinued. The kernel
   still accepts connections, so the trial's requests wait for an answer (MLflow's request timeout, 120 s by
   default, is longer than the hang);
2. down: its process group is SIGKILLed and a new server started on the same port and database a few seconds
   later. Meanwhile the trial's requests are refused, and MLflow's client retries them with exponential backoff
   (``MLFLOW_HTTP_REQUEST_MAX_RETRIES``, ``MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR``, read from the environment).

A metric's timestamp is taken when the trial makes its request, so the epochs stamped inside each outage show
that the trial did log while the server was away (urllib3 retries silently: its logger has a NullHandler).

Everything is read back over the REST API with urllib, as any client of the server would.

Every wait has a deadline; the server and the search run in their own process groups, and every process of the
test's Ray session is killed at the end whatever happened.
"""

from __future__ import annotations

import signal
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from mlflow_server import MlflowServer
from search_process import EVERY_EPOCH, Search, search_env, until

from iakd.judging import judged_epochs

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 6
EXPERIMENT = "iakd-digits"
HANG_AFTER_EPOCH, DOWN_AFTER_EPOCH = 1, 3
HANG_SECONDS, DOWN_SECONDS = 5.0, 3.0
# MLflow's client defaults (7 retries with backoff factor 2, retrying for about 4 min; a 120 s request timeout)
# survive these outages as they are. A factor of 1 only shortens the wait once the server is back (retries after
# 0, 2, 4, 8, 16... s instead of 0, 4, 8, 16, 32... s), so that the test ends sooner.
MLFLOW_CLIENT = {"MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}


class Server(MlflowServer):
    """The sweep's MLflow server, with what the test reads of its runs."""

    def runs(self, role: str) -> list[dict]:
        """Every run of the experiment with tag ``iakd.role == role``, as the REST API returns them."""
        try:
            experiment = self.get("experiments/get-by-name", timeout=10, experiment_name=EXPERIMENT)["experiment"]
        except urllib.error.HTTPError as error:
            if error.code == 404:  # the driver has not created the experiment yet
                return []
            raise
        found = self.post("runs/search", {"experiment_ids": [experiment["experiment_id"]],
                                          "filter": f"tags.`iakd.role` = '{role}'", "max_results": 100}, timeout=10)
        return found.get("runs", [])

    def history(self, run_id: str, key: str) -> list[tuple[int, float, int]]:
        """(step, value, timestamp in ms) of every value logged for ``key``, by step."""
        metrics = self.get("metrics/get-history", timeout=10, run_id=run_id, metric_key=key,
                           max_results=1000).get("metrics", [])
        return sorted((int(m.get("step", 0)), m["value"], int(m["timestamp"])) for m in metrics)


def _metrics(run: dict) -> dict[str, float]:
    return {m["key"]: m["value"] for m in run["data"].get("metrics", [])}


def _tags(run: dict) -> dict[str, str]:
    return {t["key"]: t["value"] for t in run["data"].get("tags", [])}


@pytest.fixture
def env():
    """The search's environment (search_env) with the MLflow client's retry settings."""
    with search_env(**MLFLOW_CLIENT) as values:
        yield values


@pytest.fixture
def server(tmp_path, env):
    # The server needs no background job runner; without it, it starts faster on two cores.
    server = Server(tmp_path, {**env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    server.start()
    yield server
    server.kill()


def test_the_mlflow_server_going_away_mid_sweep_loses_no_epoch_and_duplicates_none(tmp_path, env, server):
    overrides = ["num_samples=1", "max_concurrent=1", "scheduler.name=none", f"run.optim.epochs={EPOCHS}",
                 *EVERY_EPOCH,
                 "run.teacher.epochs=1", "run.data.image_size=8", "run.teacher.arch=resnet20",
                 "run.data.train_size=null", "baselines.methods=[]", "confirm.top_k=0", "analysis=false",
                 f"storage_path={tmp_path}/ray", f"tracking_uri={server.url}"]
    started = time.monotonic()
    search = Search(tmp_path, "search", overrides, env)
    try:
        def trial_at(epoch: int):
            return next((r for r in server.runs("search") if _metrics(r).get("epochs", 0) >= epoch), None)

        # 1. Hung: the server takes connections but answers none for a few seconds.
        first = until(lambda: trial_at(HANG_AFTER_EPOCH), 240, search, f"trial run with epoch {HANG_AFTER_EPOCH}")
        # long enough for the trial to finish an epoch and ask to log it, however slow the machine is today
        hang_seconds = max(HANG_SECONDS, 3 * _metrics(first)["epoch_seconds"])
        server.signal(signal.SIGSTOP)
        hung = (time.time(), time.time() + hang_seconds)
        time.sleep(hang_seconds)
        server.signal(signal.SIGCONT)

        # 2. Down: killed, and a new server on the same port and database a few seconds later.
        before = until(lambda: trial_at(DOWN_AFTER_EPOCH), 120, search, f"trial run with epoch {DOWN_AFTER_EPOCH}")
        epochs_when_down = int(_metrics(before)["epochs"])
        server.kill()
        down_at = time.time()
        time.sleep(DOWN_SECONDS)
        server.start()
        down = (down_at, time.time())
        assert epochs_when_down < EPOCHS, "the trial ended before the outage: make its epochs longer"

        assert search.wait(300) == 0, search.tail()
    finally:
        if search.proc.poll() is None:
            search.kill()
    sweep_seconds = time.monotonic() - started

    runs = server.runs("search")
    assert len(runs) == 1, [r["info"]["run_id"] for r in runs]
    (run,) = runs
    run_id = run["info"]["run_id"]
    assert run_id == before["info"]["run_id"]  # the same run before and after the outage
    assert run["info"]["status"] == "FINISHED" and _tags(run)["status"] == "finished"
    assert _metrics(run)["epochs"] == EPOCHS
    for key in ("val_acc", "test_acc", "train_loss", "loss_ce", "train_acc", "lr", "swap_prob", "epoch_seconds"):
        assert [step for step, _, _ in server.history(run_id, key)] == list(range(1, EPOCHS + 1)), key
    history = server.history(run_id, "val_acc")
    swap = {step: value for step, value, _ in server.history(run_id, "swap_prob")}
    epochs = [{"epoch": step, "val_acc": value, "swap_prob": swap[step]} for step, value, _ in history]
    assert _metrics(run)["best_val_acc"] == max(h["val_acc"] for h in judged_epochs(epochs))  # after the handover

    # The trial did log while the server was away (a metric's timestamp is taken when its request is made):
    # an epoch sent to the hung server waited for it, one sent to the dead server was retried until the new one
    # took it. Both are in the run, once.
    sent = {step: timestamp / 1000 for step, _, timestamp in history}
    assert [step for step, t in sent.items() if hung[0] <= t <= hung[1]], (hung, sent)
    assert [step for step, t in sent.items() if down[0] <= t <= down[1]], (down, sent)

    # Its artifacts went through the server to the artifact store.
    listed = server.get("artifacts/list", run_id=run_id).get("files", [])
    assert {"config.yaml", "student.pt", "train.log"} <= {f["path"] for f in listed}
    assert list((tmp_path / "artifacts").rglob("student.pt"))

    # The sweep's parent run was closed as finished, on the restarted server.
    (parent,) = server.runs("sweep")
    assert parent["info"]["status"] == "FINISHED" and _tags(parent)["iakd.interrupted"] == "false"
    assert _tags(run)["mlflow.parentRunId"] == parent["info"]["run_id"]
    print(f"sweep {sweep_seconds:.0f}s; server hung {hang_seconds:.0f}s, down {down[1] - down[0]:.0f}s after "
          f"epoch {epochs_when_down}; epochs sent at (s after the hang began): "
          f"{[(step, round(t - hung[0], 1)) for step, t in sorted(sent.items())]}")
