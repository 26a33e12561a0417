"""One answer in every place: the summary tune/search.py prints, the metrics on the sweep's parent run and
report.md all come from iakd.analysis.results, and agree on a sweep whose confirmation has a diverged and a failed
run (left out, and each place says how many).

The sweep is logged through the MLflow API with the export tests' helper: two search trials, and a confirmation
of the better one and KD on seeds 1, 2, 3, plus one diverged and one failed confirmation run of the winner
(seeds 4 and 5; the failed one logged a high score that must not count).
"""

from __future__ import annotations

import math

import pytest
from mlflow.tracking import MlflowClient
from test_analysis_export import RunSpec, _log

from iakd import tracking
from iakd.analysis.report import analyse
from iakd.analysis.stats import mean_interval, paired_difference
from iakd.search.runner import sweep_answer
from iakd.search.summary import SearchSummary, format_summary

EXPERIMENT = "iakd-results-test"
T0 = 1_700_000_000_000
WINNER_TEST = {1: 92.0, 2: 93.5, 3: 91.0}
KD_TEST = {1: 94.0, 2: 95.0, 3: 93.5}


def _specs() -> list[RunSpec]:
    specs = [RunSpec("search_a", "search", "iakd", [70, 85, 90]),  # the winner on validation: 90
             RunSpec("search_b", "search", "iakd", [72, 80, 88])]
    for seed, test in WINNER_TEST.items():
        specs.append(RunSpec(f"confirm_search_a_seed{seed}", "confirm", "iakd", [80, test + 1], seed=seed,
                             candidate="search_a", test=[test - 3, test]))
    for seed, test in KD_TEST.items():
        specs.append(RunSpec(f"confirm_kd_seed{seed}", "confirm", "kd", [85, test - 1], seed=seed, candidate="kd",
                             test=[test - 2, test]))
    specs.append(RunSpec("confirm_search_a_seed4", "confirm", "iakd", [60, math.nan], seed=4, candidate="search_a",
                         status="FAILED", status_tag="diverged"))
    specs.append(RunSpec("confirm_search_a_seed5", "confirm", "iakd", [99, 99.5], seed=5, candidate="search_a",
                         status="FAILED", status_tag="error", test=[99.0, 99.0]))
    return specs


def _logged(folder, specs: list[RunSpec]):
    """A finished sweep of ``specs`` in a fresh store under ``folder``: its answer, and the summary it prints."""
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    experiment_id = tracking.connect(uri, EXPERIMENT)
    client = MlflowClient(tracking_uri=uri)
    parent = client.create_run(experiment_id, start_time=T0, run_name=f"sweep-{EXPERIMENT}",
                               tags={"iakd.role": "sweep", "iakd.sweep": EXPERIMENT}).info.run_id
    for index, spec in enumerate(specs, start=1):
        _log(client, experiment_id, parent, spec, T0 + 1000 * index)
    client.set_terminated(parent, "FINISHED")
    answer = sweep_answer(uri, parent)
    printed = format_summary(SearchSummary(EXPERIMENT, parent, uri, "val_acc", None, answer=answer,
                                           experiment_id=experiment_id))
    return uri, parent, answer, printed


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    folder = tmp_path_factory.mktemp("results")
    uri, parent, answer, printed = _logged(folder, _specs())
    report = analyse(uri, parent_run_id=parent, out_dir=folder / "report", log_to_mlflow=False).read_text()
    return answer, printed, answer.metrics(), report


def test_the_winner_is_chosen_once_on_validation_in_the_search_stage(sweep):
    answer, printed, metrics, report = sweep
    assert answer.winner["run_name"] == "search_a" and metrics["best_val_acc"] == 90.0
    assert [c.name for c in answer.confirmed] == ["search_a", "kd"]
    assert "configuration the search chose on validation, **search_a**" in report


def test_diverged_and_failed_confirmation_runs_do_not_count_anywhere(sweep):
    answer, printed, metrics, report = sweep
    expected = mean_interval(WINNER_TEST.values())  # seeds 1-3 only: not the diverged seed 4 nor the failed seed 5
    winner = answer.get("search_a")
    assert winner.seeds == (1, 2, 3) and winner.test_interval == expected
    assert metrics["confirm_search_a_test_acc_mean"] == pytest.approx(expected.mean, abs=1e-12)
    row = next(line for line in printed.splitlines() if line.strip().startswith("search_a"))
    assert expected.format() in row
    report_row = next(line for line in report.splitlines() if line.startswith("| search_a:"))
    assert f"| {expected.format()} (n=3) |" in report_row


def test_the_difference_to_kd_is_the_same_in_all_three_places(sweep):
    answer, printed, metrics, report = sweep
    expected = paired_difference(WINNER_TEST, KD_TEST)
    assert answer.difference("search_a", "kd") == expected
    assert metrics["confirm_search_a_test_acc_minus_kd"] == pytest.approx(expected.mean, abs=1e-12)
    row = next(line for line in printed.splitlines() if line.strip().startswith("search_a"))
    assert row.rstrip().endswith(expected.format(signed=True))
    assert f"{expected.format(signed=True)} (n=3) points" in report


def test_each_place_says_how_many_runs_it_left_out(sweep):
    answer, printed, metrics, report = sweep
    assert answer.left_out == {"diverged": 1, "error": 1}
    assert metrics["confirm_runs_left_out"] == 2.0
    assert "left out: 2 confirmation run(s) (1 diverged, 1 error)" in printed
    assert "**Left out: 2 confirmation runs** (1 diverged, 1 error)" in report


def test_a_winner_initialised_from_the_teacher_meets_the_kd_trained_from_the_same_initialisation(tmp_path):
    """Confirmation of a teacher-initialised winner beside KD from scratch and KD from the teacher: its difference
    (summary, parent-run metrics) is to ``kd.teacher-init``, and the summary says so."""
    kd_init_test = {1: 96.0, 2: 92.5, 3: 95.0}
    specs = [RunSpec("search_a", "search", "iakd", [70, 90], init="teacher")]
    for seed in (1, 2, 3):
        specs += [RunSpec(f"confirm_search_a_seed{seed}", "confirm", "iakd", [80, 90], seed=seed, candidate="search_a",
                          test=[90, WINNER_TEST[seed]], init="teacher"),
                  RunSpec(f"confirm_kd_seed{seed}", "confirm", "kd", [85, 90], seed=seed, candidate="kd",
                          test=[90, KD_TEST[seed]], init="scratch"),
                  RunSpec(f"confirm_kd.teacher-init_seed{seed}", "confirm", "kd", [85, 90], seed=seed,
                          candidate="kd.teacher-init", test=[90, kd_init_test[seed]], init="teacher")]
    uri, parent, answer, printed = _logged(tmp_path, specs)
    expected = paired_difference(WINNER_TEST, kd_init_test)
    assert expected != paired_difference(WINNER_TEST, KD_TEST)
    assert answer.reference("search_a", "kd") == "kd.teacher-init"
    assert answer.difference("search_a", "kd") == expected
    assert answer.metrics()["confirm_search_a_test_acc_minus_kd"] == pytest.approx(expected.mean, abs=1e-12)
    row = next(line for line in printed.splitlines() if line.strip().startswith("search_a"))
    assert row.rstrip().endswith(expected.format(signed=True))
    assert "against the KD trained from the same initialisation (search_a against kd.teacher-init)" in printed


def _ce_only_sweep(tmp_path, with_ce: bool):
    ce_test = {1: 90.0, 2: 91.0, 3: 89.5}
    specs = [RunSpec("search_a", "search", "iakd", [70, 90])]
    for seed in (1, 2, 3):
        specs.append(RunSpec(f"confirm_search_a_seed{seed}", "confirm", "iakd", [80, 90], seed=seed,
                             candidate="search_a", test=[90, WINNER_TEST[seed]]))
        if with_ce:
            specs.append(RunSpec(f"confirm_ce_seed{seed}", "confirm", "ce", [85, 90], seed=seed, candidate="ce",
                                 test=[90, ce_test[seed]]))
    uri, parent, answer, printed = _logged(tmp_path, specs)
    report = analyse(uri, parent_run_id=parent, out_dir=tmp_path / "report", log_to_mlflow=False).read_text()
    return answer, printed, report, ce_test


def test_without_kd_among_the_baselines_every_place_measures_against_ce_and_says_so(tmp_path):
    answer, printed, report, ce_test = _ce_only_sweep(tmp_path, with_ce=True)
    expected = paired_difference(WINNER_TEST, ce_test)
    assert answer.reference_method == "ce" and answer.difference("search_a", "ce") == expected
    assert answer.metrics()["confirm_search_a_test_acc_minus_ce"] == pytest.approx(expected.mean, abs=1e-12)
    assert "test_acc - ce" in printed
    row = next(line for line in printed.splitlines() if line.strip().startswith("search_a"))
    assert row.rstrip().endswith(expected.format(signed=True))
    assert "KD was not a baseline (baselines.methods): the differences are to ce" in printed
    assert ("KD was not among the confirmed baselines (`baselines.methods`): its columns are empty, and the "
            "configurations are measured against CE.") in report
    assert "is better than CE on test accuracy" in report
    assert f"{expected.format(signed=True)} (n=3) points" in report
    assert (tmp_path / "report" / "confirmation.png").is_file()


def test_without_any_confirmed_baseline_the_summary_and_report_say_nothing_is_compared(tmp_path):
    answer, printed, report, _ = _ce_only_sweep(tmp_path, with_ce=False)
    assert answer.reference_method is None
    assert not [k for k in answer.metrics() if "_minus_" in k]
    assert "no baseline was confirmed (baselines.methods is empty): nothing to compare with" in printed
    assert "KD and CE were not among the confirmed baselines (`baselines.methods`): their columns are empty; " \
           "with no baseline confirmed, nothing is compared." in report


def test_the_printed_browse_commands_run_as_printed_from_a_folder_with_a_space(tmp_path):
    import shlex

    uri, storage = f"sqlite:///{tmp_path}/my runs/mlflow.db", f"sqlite:///{tmp_path}/my runs/optuna.db"
    text = format_summary(SearchSummary(EXPERIMENT, "abc", uri, "val_acc", None, experiment_id="1",
                                        optuna_storage=storage, study="s"))
    mlflow_line = next(line for line in text.splitlines() if "mlflow ui" in line)
    command = mlflow_line.split(": ", 1)[1].split(", then open")[0]
    assert shlex.split(command) == ["mlflow", "ui", "--backend-store-uri", uri]
    assert shlex.split(text.splitlines()[-1].split(": ", 1)[1]) == ["optuna-dashboard", storage]
