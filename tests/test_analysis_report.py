"""iakd.analysis.report and plots: every plot of a sweep is a real, non-blank PNG, referenced by report.md, and
logged to the sweep's parent run; a sweep without data says so, and the command line exits 2 on bad input.

The sweep is the one the export tests build (``build_sweep``): search trials of every outcome, CE and KD
baselines on two seeds, and a confirmation stage of two candidates plus KD and CE on three seeds.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from test_analysis_export import EMPTY_EXPERIMENT, EXPERIMENT, Built, build_sweep

from iakd.analysis import plots
from iakd.analysis.export import load_sweep
from iakd.analysis.report import ARTIFACT_PATH, REPORT_NAME, analyse

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    return build_sweep(tmp_path_factory.mktemp("report_store"))


@pytest.fixture(scope="module")
def report(built: Built, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return analyse(built.uri, EXPERIMENT, out_dir=tmp_path_factory.mktemp("report") / "out")


@pytest.fixture(scope="module")
def old_report(built: Built, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The earlier sweep of the same experiment: one search trial, no baselines, no confirmation."""
    return analyse(built.uri, parent_run_id=built.old_parent, out_dir=tmp_path_factory.mktemp("old") / "out",
                   log_to_mlflow=False)


def _assert_real_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_MAGIC, path
    pixels = matplotlib.image.imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 200 and pixels.shape[1] > 300, path
    assert float(np.std(pixels[..., :3])) > 0.05, f"{path.name} is (nearly) blank"


# ---------------------------------------------------------------------------------------------- plots


@pytest.mark.parametrize("plot", plots.PLOTS, ids=lambda p: p.name)
def test_every_plot_is_a_real_non_blank_png(report, plot):
    _assert_real_png(report.parent / f"{plot.name}.png")


def test_the_report_embeds_every_plot(report):
    text = report.read_text()
    for plot in plots.PLOTS:
        assert f"![{plot.title}]({plot.name}.png)" in text
    assert "Plots not made" not in text


def test_the_parent_run_holds_the_report_plots_and_tables(built, report):
    client = MlflowClient(tracking_uri=built.uri)
    logged = {Path(a.path).name for a in client.list_artifacts(built.parent, ARTIFACT_PATH)}
    assert logged == {f"{p.name}.png" for p in plots.PLOTS} | {REPORT_NAME, "runs.parquet", "epochs.parquet"}


def test_a_plot_without_data_writes_nothing_and_returns_none(built, tmp_path):
    runs = load_sweep(built.uri, parent_run_id=built.old_parent).runs.to_pandas()  # no confirmation runs
    assert plots.plot_confirmation(runs, tmp_path / "confirmation.png") is None
    assert not (tmp_path / "confirmation.png").exists()


def test_render_all_says_why_a_plot_was_skipped(built, tmp_path):
    sweep = load_sweep(built.uri, parent_run_id=built.old_parent)
    rendered = {r.name: r for r in plots.render_all(sweep.runs.to_pandas(), sweep.epochs.to_pandas(), tmp_path)}
    assert rendered["confirmation"].path is None and "confirmation" in rendered["confirmation"].reason
    assert rendered["param_importance"].path is None and "not enough trials" in rendered["param_importance"].reason
    assert rendered["accuracy_by_family"].path == tmp_path / "accuracy_by_family.png"


def test_the_five_best_trials_are_ranked_on_validation(built):
    runs = load_sweep(built.uri, EXPERIMENT).runs.to_pandas()
    assert list(plots.best_trials(runs)["run_name"]) == ["search_s3", "search_s2", "search_s11", "search_s1",
                                                         "search_s5"]


def test_confirmation_candidates_come_by_validation_then_baselines(built):
    runs = load_sweep(built.uri, EXPERIMENT).runs.to_pandas()
    candidates = plots.confirmation_groups(runs)
    assert [c.name for c in candidates] == ["search_s3", "search_s2", "kd", "ce"]
    assert candidates[0].test == {100: 92.0, 101: 93.0, 102: 94.0}


# --------------------------------------------------------------------------------------------- report


def test_the_report_names_the_best_family_and_granularity_by_validation(report):
    text = report.read_text()
    assert "Best schedule family: **exponential**" in text
    assert "Best granularity: **2**" in text
    assert "Best search trial: **search_s3**" in text


def test_the_report_says_best_and_last_epoch_and_that_selection_is_on_validation(report):
    text = report.read_text()
    assert "validation accuracy at the best epoch" in text and "test accuracy at the last epoch" in text
    assert "never used to choose" in text


def test_the_top_table_lists_validation_with_test_beside(report):
    text = report.read_text()
    # the fixture's swapping trials log swap_prob 0.5 at every epoch: judged at their last epoch, and the row says so
    row = ("| 1 | `search_s3` | iakd+kd | exponential | 0.9 | 0.5 | rate=2 | deep-first | 2 | 0.3 | frozen | - "
           "| 93.00 | 4 (never handed over) | 92.00 |")
    assert row in text


def test_the_report_gives_baselines_with_intervals(report):
    # CE val 86, 87.5: mean 86.75, half-width t_{0.975,1} * sd / sqrt(2) = 12.7062 * 1.06066 / 1.41421 = 9.53
    text = report.read_text()
    assert "| CE (student alone) | 0, 1 | 86.75 ± 9.53 (n=2) | 85.75 ± 9.53 (n=2) |" in text


def test_the_report_gives_confirmed_differences_to_kd_and_ce(report):
    # search_s3 test 92, 93, 94 against KD 90, 91, 92.5: differences 2, 2, 1.5 (mean 1.83, sd 0.2887)
    text = report.read_text()
    row = next(line for line in text.splitlines() if line.startswith("| search_s3: exponential"))
    assert "| 93.00 ± 2.48 (n=3) | +1.83 ± 0.72 (n=3) |" in row
    assert "+7.17 ± 1.90 (n=3)" in row  # against CE 85, 86.5, 86: differences 7, 6.5, 8
    assert ("configuration the search chose on validation, **search_s3**, is better than KD on test accuracy over "
            "the confirmation's seeds (which played no part in choosing it): +1.83 ± 0.72 (n=3) points") in text


def test_the_report_counts_the_excluded_runs_and_why(report):
    text = report.read_text()
    assert "Excluded from every figure and table below: 4 runs** (1 diverged, 1 error, 1 killed, 1 unfinished)" in text


def test_a_sweep_without_confirmation_says_so_and_skips_its_plot(old_report):
    text = old_report.read_text()
    assert "No confirmation runs in this sweep" in text
    assert not (old_report.parent / "confirmation.png").exists()
    assert "- Confirmation: intervals over seeds and paired difference to KD (`confirmation.png`): no usable" in text


def test_a_plot_skipped_on_a_rerun_leaves_no_stale_png(built, report, tmp_path):
    folder = tmp_path / "out"
    shutil.copytree(report.parent, folder)
    analyse(built.uri, parent_run_id=built.old_parent, out_dir=folder, log_to_mlflow=False)
    assert not (folder / "confirmation.png").exists()


# ------------------------------------------------------------------------------------------ command line


def _ablations(uri: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "analysis" / "ablations.py"), "--tracking-uri", uri, *args],
                          capture_output=True, text=True)


def test_the_command_line_on_a_missing_experiment_exits_2_with_one_line(built, tmp_path):
    result = _ablations(built.uri, "--experiment", "nope", "--out", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: experiment 'nope' not found at {built.uri}"]


def test_the_command_line_refuses_a_name_or_folder_it_cannot_write_under_with_one_line(built, tmp_path):
    """`..` as the experiment (it would make analysis_out/.. the current folder's parent) and an --out that is a
    file: one line each, exit 2, nothing written."""
    mine = tmp_path / "report.md"
    mine.write_text("mine")
    result = _ablations(built.uri, "--experiment", "..", "--no-log")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: experiment: '..' is not allowed; a name of letters, digits, '_', '.' and '-' (at most 100, the first "
        "a letter or digit): it names the MLflow experiment, the Tune folders and analysis_out/<name>"]
    result = _ablations(built.uri, "--out", str(mine / "out"), "--no-log")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: --out: {mine / 'out'} is not a writable folder ({mine} "
                                                  "is a file)"]
    assert mine.read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == ["report.md"]


def test_the_read_only_command_never_writes_into_an_empty_or_corrupt_store(tmp_path):
    empty, corrupt = tmp_path / "empty.db", tmp_path / "corrupt.db"
    empty.write_bytes(b"")
    corrupt.write_bytes(bytes(range(256)) * 20)
    for database, why in ((empty, "is empty, not an MLflow database"),
                          (corrupt, "is not an SQLite database (file is not a database)")):
        result = _ablations(f"sqlite:///{database}", "--out", str(tmp_path / "out"), "--no-log")
        assert result.returncode == 2
        assert result.stderr.strip().splitlines()[0].startswith(f"error: tracking URI sqlite:///{database}: {database} "
                                                                f"{why}")
    assert empty.read_bytes() == b"" and corrupt.read_bytes() == bytes(range(256)) * 20
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corrupt.db", "empty.db"]


def test_the_command_line_on_a_sweep_without_finished_runs_exits_2_with_one_line(built, tmp_path):
    result = _ablations(built.uri, "--experiment", EMPTY_EXPERIMENT, "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: experiment '{EMPTY_EXPERIMENT}'")
    assert lines[0].endswith("has no finished runs (1 run: 1 error)")
    assert not (tmp_path / "out").exists()


def test_the_command_line_on_a_server_that_is_down_exits_2_within_seconds(tmp_path):
    import socket
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    result = _ablations(f"http://127.0.0.1:{port}", "--out", str(tmp_path / "out"))
    assert result.returncode == 2 and time.monotonic() - started < 60  # the client alone would retry for minutes
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"error: tracking URI: no MLflow server answers at http://127.0.0.1:{port} within 5 s")
    assert not (tmp_path / "out").exists()


def test_the_report_of_a_sweep_that_did_not_end_says_it_is_provisional(built, tmp_path):
    from iakd import tracking

    client = MlflowClient(tracking_uri=built.uri)
    experiment_id = tracking.connect(built.uri, "iakd-interrupted")  # its own experiment: the module's stays as it is
    parent = client.create_run(experiment_id, tags={"iakd.role": "sweep", "iakd.sweep": "iakd-interrupted"},
                               run_name="sweep-interrupted").info.run_id
    client.log_param(parent, "experiment.num_samples", "3")
    trial = client.create_run(experiment_id, run_name="search_only",
                              tags={"mlflow.parentRunId": parent, "iakd.role": "search", "method": "iakd",
                                    "status": "finished"}).info.run_id
    client.log_metric(trial, "best_val_acc", 80.0)
    client.set_terminated(trial, "FINISHED")  # one of three trials ran; the parent stays RUNNING
    text = analyse(built.uri, parent_run_id=parent, out_dir=tmp_path / "out", log_to_mlflow=False).read_text()
    assert ("**Provisional: this sweep has not ended (its parent run is RUNNING: still running, or its driver was "
            "killed).** 2 of its 3 searched trials never started") in text
