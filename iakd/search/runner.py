"""Running a search: the teacher once, one MLflow parent run, the baselines and the searched trials as Ray
Tune experiments (Optuna TPE through ``OptunaSearch``, ASHA on per-epoch ``val_acc``), then a summary.

``run_search(experiment)`` is what ``tune/search.py`` calls; tests call it the same way.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import ray
import torch
from ray import tune
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from iakd import tracking
from iakd.analysis.results import SweepResults, sweep_results
from iakd.checkpoint import load_file
from iakd.config import MethodConfig, TrainConfig, to_dict
from iakd.engine import evaluate, judged_epochs, load_data, prepare_teacher, teacher_file, teacher_warning
from iakd.methods import METHODS
from iakd.search import preflight, storage
from iakd.search.experiment import Experiment, ExperimentConfig
from iakd.search.scheduler import HandoverASHA
from iakd.search.space import Choice, Fixed
from iakd.search.trainable import (
    CANDIDATE_KEY,
    TRIAL_TAG,
    CloseTrialRuns,
    TrialContext,
    baseline_name,
    confirm_name,
    run_trial,
    trial_name,
)
from iakd.teachers import load_teacher

__all__ = ["TrialSummary", "SearchSummary", "run_search", "share_teacher", "format_summary", "confirm_candidates",
           "check_teacher", "sweep_answer"]

SWEEP_TAG = "iakd.sweep"
# A baseline trains with its method's standard loss weights and temperature (KD: 0.1 / 0.9 at T = 4), whatever the
# base run sets for IAKD.
BASELINE_WEIGHTS: dict[str, Any] = {"method.ce_weight": None, "method.kd_weight": None,
                                    "method.temperature": MethodConfig().temperature}
METHODS_USING_TEACHER = frozenset(name for name, cls in METHODS.items() if cls.uses_teacher)


@dataclass
class TrialSummary:
    name: str
    overrides: dict[str, Any]
    score: float  # the best value of the search's metric over the epochs it is judged on (engine.judged_epochs)
    last_test_acc: float
    epochs: int
    run_id: str | None


@dataclass
class SearchSummary:
    experiment: str
    parent_run_id: str
    tracking_uri: str
    metric: str
    best: TrialSummary | None
    baselines: list[TrialSummary] = field(default_factory=list)
    trials: list[TrialSummary] = field(default_factory=list)
    interrupted: bool = False
    answer: SweepResults | None = None  # the sweep's answer (None when interrupted): what the printout shows
    experiment_id: str = ""


def _summaries(results: tune.ResultGrid, metric: str, mode: str, run_ids: dict[str, str]) -> list[TrialSummary]:
    """One summary per trial that reported; ``run_ids`` maps Tune trial ids to MLflow run ids."""
    out = []
    for r in results:
        if r.metrics_dataframe is None or r.metrics_dataframe.empty:
            continue
        history = r.metrics_dataframe
        judged = [h[metric] for h in judged_epochs(history.to_dict("records"))]  # after the handover only
        out.append(TrialSummary(
            name=str(r.metrics.get("trial_name", Path(r.path).name)),
            overrides=dict(r.config),
            score=float(max(judged) if mode == "max" else min(judged)),
            last_test_acc=float(history["test_acc"].iloc[-1]),
            epochs=int(history["epoch"].iloc[-1]),
            run_id=run_ids.get(str(r.metrics.get("trial_id"))),
        ))
    return out


def _tuner(path: str, trainable, param_space: dict, tune_config: tune.TuneConfig, run_config: tune.RunConfig,
           resume: bool) -> tune.Tuner:
    if resume and tune.Tuner.can_restore(path):
        # the searcher's state (Optuna's study) is restored with the experiment
        return tune.Tuner.restore(path, trainable, resume_unfinished=True, restart_errored=True)
    return tune.Tuner(trainable, param_space=param_space, tune_config=tune_config, run_config=run_config)


def run_search(
    experiment: Experiment,
    *,
    resume: bool = False,
    address: str | None = None,
    log: Callable[[str], None] = print,
    verbose: int = 1,
    analysis: bool = True,
) -> SearchSummary:
    """Run (or with ``resume`` continue) the whole experiment and return its summary.

    Stages: the baselines, the search, the confirmation of the best configurations on fresh seeds, then (with
    ``analysis`` and the experiment's ``analysis`` key) the report, logged to the sweep's parent run.
    """
    cfg = experiment.config
    uri = tracking.absolute_uri(cfg.tracking_uri)
    name = cfg.experiment
    base = experiment.base
    # Everything external first: a bad path, a server that is down or a missing file is one line, in seconds.
    preflight.check_storage(cfg.storage_path)
    preflight.check_tracking_uri(uri)
    preflight.check_address(address)
    preflight.check_run_inputs(base)
    # --resume continues what there is: the Tune stages that were stored, and the newest parent run.
    reuse_parent = resume
    if resume and not any(tune.Tuner.can_restore(p) for p in _stage_paths(cfg)):
        log(f"--resume: nothing to resume under {cfg.storage_path} for experiment {name!r}; starting it")
        resume = False

    teacher_path = share_teacher(base, cfg.storage_path, log=log)
    warning = check_teacher(base, teacher_path) if METHODS_USING_TEACHER & _methods_in(experiment) else None
    if warning:
        log(f"warning: {warning}")

    parent_tags = {SWEEP_TAG: name, "iakd.role": "sweep", "teacher": base.teacher.arch, "student": base.student.arch,
                   "dataset": base.data.name, **({"teacher_warning": warning} if warning else {})}
    previous = tracking.find_run(uri, name, {SWEEP_TAG: name, "iakd.role": "sweep"})
    superseded = None
    if previous is not None and not reuse_parent:
        superseded, previous = previous, None
    parent = tracking.start_parent_run(
        uri, name, run_name=f"sweep-{name}", run_id=previous, tags=parent_tags,
        params={"experiment": {k: v for k, v in to_dict(cfg).items() if k not in ("run", "space")},
                "run": to_dict(base)},
        dicts={"search_space.yaml": experiment.space.to_dict(), "experiment.yaml": to_dict(cfg)},
    )
    log(f"MLflow: experiment {name!r}, parent run {parent} ({'resumed' if previous else 'new'}) at {uri}")
    if superseded is not None:
        # A new sweep of the same experiment: the earlier parent stays (with its trials) but says it is not
        # the current one, and analysis takes the newest parent.
        tracking.supersede_run(uri, superseded, by=parent)
        log(f"MLflow: the earlier sweep's parent run {superseded} is superseded by {parent} (use --resume to "
            "continue a sweep instead)")
    try:
        return _run_stages(experiment, parent, uri, teacher_path, warning, resume=resume, address=address, log=log,
                           verbose=verbose, analysis=analysis)
    except BaseException as error:
        # Whatever ends the driver (an error, Ctrl-C outside Tune, a failed trial that ends the sweep) closes
        # the parent with the right status: no sweep stays RUNNING.
        status = "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED"
        tracking.finish_parent_run(uri, parent, tags={"iakd.error": f"{type(error).__name__}: {error}"[:500]},
                                   status=status)
        raise


def _stage_paths(cfg: ExperimentConfig) -> tuple[str, str, str]:
    """Where Tune keeps each stage's experiment: baselines, search, confirmation."""
    name = f"{cfg.storage_path}/{cfg.experiment}"
    return f"{name}-baselines", name, f"{name}-confirm"


def _run_stages(experiment: Experiment, parent: str, uri: str, teacher_path: str, warning: str | None, *,
                resume: bool, address: str | None, log: Callable[[str], None], verbose: int,
                analysis: bool) -> SearchSummary:
    """The stages of a sweep whose parent run is open: baselines, search, confirmation, analysis."""
    cfg, base, name = experiment.config, experiment.base, experiment.config.experiment
    baseline_path, search_path, confirm_path = _stage_paths(cfg)

    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=verbose > 1)
    base_dict = to_dict(base)
    resources = {"cpu": cfg.resources.cpu, "gpu": cfg.resources.gpu}
    closer = CloseTrialRuns(uri, parent)

    def run_config(run_name: str) -> tune.RunConfig:
        return tune.RunConfig(name=run_name, storage_path=cfg.storage_path, callbacks=[closer], verbose=verbose,
                              failure_config=tune.FailureConfig(max_failures=cfg.max_failures),
                              checkpoint_config=tune.CheckpointConfig(num_to_keep=2))

    def trainable(role: str, candidates: dict[str, dict[str, Any]] | None = None):
        context = TrialContext(base_dict, teacher_path, uri, name, parent, role, warning, candidates)
        return tune.with_resources(tune.with_parameters(run_trial, context=context), resources)

    interrupted = False
    baselines: list[TrialSummary] = []
    if cfg.baselines.methods:
        # Each baseline with its own standard loss weights, whatever the base run sets for IAKD.
        grid = {"method.name": tune.grid_search(list(cfg.baselines.methods)),
                "seed": tune.grid_search(list(cfg.baselines.seeds)), **BASELINE_WEIGHTS}
        tuner = _tuner(baseline_path, trainable("baseline"), grid,
                       tune.TuneConfig(metric=cfg.metric, mode=cfg.mode, max_concurrent_trials=cfg.max_concurrent,
                                       trial_name_creator=baseline_name, trial_dirname_creator=baseline_name),
                       run_config(f"{name}-baselines"), resume)
        grid_results = tuner.fit()
        baselines = _summaries(grid_results, cfg.metric, cfg.mode, _run_ids(uri, parent))
        interrupted |= _unfinished(grid_results, len(cfg.baselines.methods) * len(cfg.baselines.seeds))

    trials: list[TrialSummary] = []
    if not interrupted:  # num_samples >= 1, checked at load
        searcher = OptunaSearch(space=experiment.space.define_by_run, metric=cfg.metric, mode=cfg.mode,
                                sampler=optuna.samplers.TPESampler(seed=cfg.searcher_seed))
        scheduler = None
        if cfg.scheduler.name == "asha":
            # max_t one past the last epoch: ASHA stops every trial that reaches max_t, and a trial that ran all
            # its epochs must end as finished, not as stopped early by the scheduler. No trial is scored while
            # it swaps (HandoverASHA).
            scheduler = HandoverASHA(time_attr="epoch", metric=cfg.metric, mode=cfg.mode, max_t=experiment.epochs + 1,
                                      grace_period=min(cfg.scheduler.grace_period, experiment.epochs),
                                      reduction_factor=cfg.scheduler.reduction_factor)
        tuner = _tuner(search_path, trainable("search"), {},
                       tune.TuneConfig(num_samples=cfg.num_samples, scheduler=scheduler, trial_name_creator=trial_name,
                                       trial_dirname_creator=trial_name,
                                       search_alg=ConcurrencyLimiter(searcher, max_concurrent=cfg.max_concurrent)),
                       run_config(name), resume)
        results = tuner.fit()
        trials = _summaries(results, cfg.metric, cfg.mode, _run_ids(uri, parent))
        interrupted |= _unfinished(results, cfg.num_samples)

    # The winner is chosen once, on validation, from the search stage's runs as MLflow holds them (the same
    # table the report reads): the confirmation re-trains the top of that ranking on fresh seeds.
    by_name = {t.name: t for t in trials}
    ranked = [by_name[n] for n in sweep_answer(uri, parent).ranking["run_name"] if n in by_name] if trials else []
    best = ranked[0] if ranked else None
    if not interrupted and cfg.confirm.top_k > 0 and ranked:
        # Baselines that the baseline stage already trained on every confirmation seed are not trained again.
        reuse = set(cfg.confirm.seeds) <= set(cfg.baselines.seeds)
        candidates = confirm_candidates(ranked, cfg.confirm.top_k, [] if reuse else cfg.baselines.methods)
        grid = {CANDIDATE_KEY: tune.grid_search(list(candidates)), "seed": tune.grid_search(list(cfg.confirm.seeds))}
        tuner = _tuner(confirm_path, trainable("confirm", candidates), grid,
                       tune.TuneConfig(metric=cfg.metric, mode=cfg.mode, max_concurrent_trials=cfg.max_concurrent,
                                       trial_name_creator=confirm_name, trial_dirname_creator=confirm_name),
                       run_config(f"{name}-confirm"), resume)
        confirm_results = tuner.fit()
        interrupted |= _unfinished(confirm_results, len(candidates) * len(cfg.confirm.seeds))

    answer = None
    if interrupted:
        # Not the end of the sweep: close what is open as KILLED; --resume re-opens the same runs.
        tracking.finish_parent_run(uri, parent, tags={"iakd.interrupted": "true"}, status="KILLED")
        log(f"interrupted: continue with --resume (experiment {name!r}, storage {cfg.storage_path})")
    else:
        answer = sweep_answer(uri, parent)  # one answer: the printout, these metrics and the report read it
        metrics, tags = answer.metrics(cfg.metric), {"iakd.interrupted": "false"}
        if best is not None:
            tags.update({"best_trial": best.name, "best_run_id": best.run_id or "",
                         "best_config": ", ".join(f"{k}={_fmt(v)}" for k, v in best.overrides.items())})
        for b in baselines:
            metrics[f"baseline_{b.overrides.get('method.name')}_seed{b.overrides.get('seed')}_{cfg.metric}"] = b.score
        if cfg.analysis and analysis:
            tags["iakd.analysis"] = _analyse(uri, parent, log)
        tracking.finish_parent_run(uri, parent, metrics=metrics, tags=tags)
    return SearchSummary(name, parent, uri, cfg.metric, best, baselines, trials, interrupted, answer,
                         tracking.connect(uri, name))


def sweep_answer(tracking_uri: str, parent_run_id: str) -> SweepResults:
    """The sweep's answer (iakd.analysis.results) from its runs in MLflow, as the report reads them."""
    from iakd.analysis.export import load_sweep  # pandas and pyarrow: only once a sweep has runs

    return sweep_results(load_sweep(tracking_uri, parent_run_id=parent_run_id).runs.to_pandas())


def share_teacher(base: TrainConfig, storage_path: str, *, log: Callable[[str], None] = print) -> str:
    """Train (or check) the sweep's teacher once, here, and return where every trial reads it.

    On a folder (local or NFS) a trained teacher is cached under ``<storage_path>/teachers`` and trials read it
    there; a given ``teacher.checkpoint`` is read where it is. Behind a URI (``s3://``...) the driver keeps its
    copy in ``teacher.cache_dir`` and publishes the file to ``<storage_path>/teachers/``, where trials on any
    node, and a resumed sweep on a new head node, find it.
    """
    if not storage.is_uri(storage_path):
        if not base.teacher.checkpoint:
            base.teacher.cache_dir = str(Path(storage_path) / "teachers")
        return str(prepare_teacher(base, log=log))
    if base.teacher.checkpoint:
        local = prepare_teacher(base, log=log)  # checks that the given file exists
        # users' files may share a name: the published one carries its content's digest
        remote = storage.join(storage_path, "teachers", f"{local.stem}-{_file_digest(local)}{local.suffix}")
    else:
        local = teacher_file(base)
        remote = storage.join(storage_path, "teachers", local.name)  # the cache key already names the recipe
        if not local.is_file() and storage.exists(remote):
            log(f"teacher {base.teacher.arch}: fetching {remote}")
            storage.download(remote, local)
        local = prepare_teacher(base, log=log)
    if not storage.exists(remote):
        log(f"teacher {base.teacher.arch}: publishing {local} -> {remote}")
        storage.upload(local, remote)
    return remote


def check_teacher(base: TrainConfig, teacher_path: str) -> str | None:
    """A warning when the sweep's teacher is within a few points of chance accuracy (see engine.teacher_warning).

    A teacher trained here carries its test accuracy; a file from elsewhere is evaluated on the test split once.
    """
    local = storage.fetch(teacher_path)
    state = load_file(local, what="teacher checkpoint", required=("model",))
    accuracy, num_classes = state.get("accuracy"), state.get("num_classes")
    if accuracy is None or num_classes is None:
        cfg = dataclasses.replace(base, device="cpu")
        dataset = load_data(cfg, torch.device("cpu"))
        teacher = load_teacher(local, base.teacher.arch, dataset.num_classes)
        accuracy, num_classes = evaluate(teacher, dataset.test), dataset.num_classes
    return teacher_warning(float(accuracy), int(num_classes))


def _methods_in(experiment: Experiment) -> set[str]:
    """Every method a trial of this experiment may run: the baselines and the searched or fixed method.name."""
    spec = experiment.space.params.get("method.name")
    if isinstance(spec, Choice):
        names = set(spec.values)
    elif isinstance(spec, Fixed):
        names = {spec.value}
    else:
        names = {experiment.base.method.name}
    return set(experiment.config.baselines.methods) | names


def _run_ids(tracking_uri: str, parent_run_id: str) -> dict[str, str]:
    """Tune trial id -> MLflow run id, for the children of a sweep (the trial-id tag is the one link)."""
    return {r.data.tags[TRIAL_TAG]: r.info.run_id for r in tracking.child_runs(tracking_uri, parent_run_id)
            if TRIAL_TAG in r.data.tags}


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:12]


def confirm_candidates(ranked: list[TrialSummary], top_k: int, baselines: list[str]) -> dict[str, dict[str, Any]]:
    """Label -> dotted overrides of what the confirmation re-trains: the first ``top_k`` searched trials of the
    search's ranking (on validation), then each baseline method the baseline stage did not already train on the
    confirmation's seeds."""
    candidates = {t.name: dict(t.overrides) for t in ranked[:top_k]}
    candidates.update({method: {"method.name": method, **BASELINE_WEIGHTS} for method in baselines})
    return candidates


def _analyse(tracking_uri: str, parent: str, log: Callable[[str], None]) -> str:
    """The sweep's report, logged to its parent run; a failure is reported, not raised: the sweep is done."""
    try:
        from iakd.analysis.report import analyse  # matplotlib and pandas: only when a report is made

        report = analyse(tracking_uri, parent_run_id=parent)  # to analysis_out/<experiment>, as the CLI
    except Exception as error:  # noqa: BLE001 - the trials' results stand whatever the plots do
        log(f"analysis failed ({type(error).__name__}: {error}); run python analysis/ablations.py to retry")
        return "failed"
    log(f"report: {report} (and in MLflow, on the parent run under analysis/)")
    return "done"


def _unfinished(results: tune.ResultGrid, expected: int) -> bool:
    """True when Tune returned before every trial ended (an interrupted experiment).

    On Ctrl-C Tune marks the trials it had not started yet as terminated in the result it returns, so a
    terminated trial that never reported an epoch counts as unfinished too (ours report every epoch).
    """
    never_ran = sum(1 for r in results if r.error is None and "epoch" not in (r.metrics or {}))
    return results.num_terminated + results.num_errors - never_ran < expected


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _left_out(left_out: dict[str, int]) -> str:
    if not left_out:
        return "every confirmation run counted"
    reasons = ", ".join(f"{n} {reason}" for reason, n in sorted(left_out.items()))
    return f"left out: {sum(left_out.values())} confirmation run(s) ({reasons})"


def format_summary(summary: SearchSummary) -> str:
    """The closing text of ``tune/search.py``: best configuration, its accuracy beside the baselines, and how
    to browse the runs."""
    lines = [f"Search {summary.experiment!r}: {len(summary.trials)} trials, {len(summary.baselines)} baselines"]
    if summary.best is not None:
        b = summary.best
        lines.append(f"Best trial {b.name} (MLflow run {b.run_id}):")
        lines += [f"    {k} = {_fmt(v)}" for k, v in sorted(b.overrides.items())]
    rows = ([("best IAKD", summary.best)] if summary.best else []) + [
        (f"{t.overrides.get('method.name')} (seed {t.overrides.get('seed')})", t) for t in summary.baselines]
    if rows:
        best = f"best {summary.metric}"
        width = max(10, len(best))
        lines.append(f"    {'':<18} {best:>{width}} {'last test_acc':>13} {'epochs':>6}")
        lines += [f"    {label:<18} {t.score:>{width}.2f} {t.last_test_acc:>13.2f} {t.epochs:>6}" for label, t in rows]
    answer = summary.answer
    if answer is not None and (answer.confirmed or answer.left_out):
        seeds = sorted({s for c in answer.confirmed for s in c.seeds})
        lines.append(f"Confirmed on seeds {', '.join(map(str, seeds))} (mean ± 95 % interval; the configuration was "
                     f"chosen on {summary.metric} in the search, test_acc is the last epoch's, reported only):")
        lines.append(f"    {'':<28} {'best ' + summary.metric:>16} {'test_acc':>16} {'test_acc - kd':>16}")
        for c in answer.confirmed:
            vs_kd = answer.difference(c.name, "kd")
            lines.append(f"    {c.name:<28} {c.val_interval.format():>16} {c.test_interval.format():>16} "
                         f"{vs_kd.format(signed=True) if vs_kd is not None else '':>16}")
        lines.append(f"    {_left_out(answer.left_out)}")
    uri = summary.tracking_uri
    # The runs table, not MLflow 3's GenAI overview (which the UI opens without workflowType).
    page = f"#/experiments/{summary.experiment_id}/runs?workflowType=machine_learning"
    if uri.startswith("http"):
        lines.append(f"Browse the runs: {uri.rstrip('/')}/{page}")
    else:
        lines.append(f"Browse the runs: mlflow ui --backend-store-uri {uri}, then open http://127.0.0.1:5000/{page}")
    return "\n".join(lines)
