"""Running a search, as its stages: the teacher once (:mod:`iakd.search.teacher`), one MLflow parent run, then the
Tune stages (baselines, search with Optuna's TPE through ``OptunaSearch`` and ASHA after the handover,
confirmation), and the sweep's answer (:mod:`iakd.analysis.results`) logged to the parent run with the report.

``run_search(experiment)`` is what ``tune/search.py`` calls; tests call it the same way. Its summary prints with
:func:`iakd.search.summary.format_summary`.
"""

from __future__ import annotations

import dataclasses
import math
import shlex
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
import ray
from optuna.distributions import CategoricalDistribution
from ray import tune
from ray.tune.search import ConcurrencyLimiter

from iakd import outcomes, tracking
from iakd.analysis.results import SweepResults, sweep_results
from iakd.config import MethodConfig, flat_items, to_dict
from iakd.errors import ConfigError, RunError
from iakd.judging import best_judged_epoch, evaluated
from iakd.methods import METHODS
from iakd.resume import RESUME_FREE_KEYS
from iakd.search import preflight, storage
from iakd.search.experiment import Experiment, ExperimentConfig
from iakd.search.scheduler import HandoverASHA
from iakd.search.space import Fixed
from iakd.search.study import (
    DIVERGED_KEY,
    LinkedOptunaSearch,
    check_resumable_study,
    default_storage,
    study_name,
)
from iakd.search.summary import SearchSummary, TrialSummary, format_value
from iakd.search.teacher import check_teacher, share_teacher
from iakd.search.trainable import (
    CloseTrialRuns,
    TrialContext,
    baseline_name,
    confirm_name,
    ended,
    remove_orphaned_trial_folders,
    run_trial,
    trial_name,
)

if TYPE_CHECKING:
    from mlflow.entities import Run

    from iakd.analysis.export import Sweep

__all__ = ["run_search", "confirm_candidates", "rank", "student_inits", "sweep_answer"]

# A baseline trains with its method's standard loss weights and temperature (KD: 0.1 / 0.9 at T = 4), whatever the
# base run sets for IAKD.
BASELINE_WEIGHTS: dict[str, Any] = {"method.ce_weight": None, "method.kd_weight": None,
                                    "method.temperature": MethodConfig().temperature}
METHODS_USING_TEACHER = frozenset(name for name, cls in METHODS.items() if cls.uses_teacher)


def _summaries(results: tune.ResultGrid, runs: dict[str, Run]) -> list[TrialSummary]:
    """One summary per trial that reached an evaluation, from Tune's results; ``runs`` maps Tune trial ids to the
    trials' MLflow runs, whose status says how each ended (a divergence ends a trial as quietly as its last epoch).
    The score is the run's ``best_val_acc`` by the one rule (:func:`iakd.judging.best_judged_epoch`)."""
    out = []
    for r in results:
        if r.metrics_dataframe is None or r.metrics_dataframe.empty:
            continue
        # Tune's table holds NaN where an epoch lacks a metric (one reported for its checkpoint, not evaluated)
        history = [{k: v for k, v in h.items() if not (isinstance(v, float) and math.isnan(v))}
                   for h in r.metrics_dataframe.to_dict("records")]
        last = next((h for h in reversed(history) if evaluated(h)), None)
        if last is None:  # it never reached an evaluation
            continue
        best = best_judged_epoch(history)
        run = runs.get(str(r.metrics.get("trial_id")))
        if r.error is not None:
            outcome = outcomes.ERROR
        elif not ended(r.metrics or {}) or run is None:  # an interruption cut it short, whatever its run says
            outcome = outcomes.UNFINISHED
        else:
            outcome = outcomes.of_run(run.info.status, run.data.tags.get(tracking.STATUS_TAG))
        out.append(TrialSummary(
            name=str(r.metrics.get("trial_name", Path(r.path).name)),
            overrides=dict(r.config),
            score=float(best["val_acc"]) if best is not None else math.nan,
            last_test_acc=float(last["test_acc"]),
            epochs=int(history[-1]["epoch"]),
            run_id=run.info.run_id if run is not None else None,
            outcome=outcome,
        ))
    return out


def rank(trials: list[TrialSummary]) -> list[TrialSummary]:
    """The searched trials that count (finished, or stopped early by ASHA, with a finite score), best score first,
    ties by name: the search's ranking on validation, as :func:`iakd.analysis.results.search_ranking` orders the
    same trials from MLflow for the report."""
    counted = [t for t in trials if t.outcome in outcomes.USABLE and math.isfinite(t.score)]
    return sorted(counted, key=lambda t: (-t.score, t.name))


# A trial's process is kept for the next trial of its stage instead of a new one per trial: starting Python and
# importing torch, MLflow and the project takes seconds (~10 s per trial on 2 cores), as long as a whole digits
# trial. Trials share nothing else: each builds its config, seeds every generator and sets its threads itself.
REUSE_ACTORS = True


def _tuner(path: str, trainable, param_space: dict, tune_config: tune.TuneConfig, run_config: tune.RunConfig,
           resume: bool) -> tune.Tuner:
    if resume and tune.Tuner.can_restore(path):  # checked by storage.check_restorable at the door
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
    optuna_storage = cfg.optuna_storage or default_storage(uri, cfg.storage_path)
    preflight.check_optuna_storage(optuna_storage)
    preflight.check_address(address)
    preflight.check_run_inputs(base)
    # One sweep of an experiment at a time on a storage path; the store is created (under its lock) before any
    # command reads it, so two commands that start together on a fresh store do not race on MLflow's tables.
    with storage.sweep_lock(cfg.storage_path, name):
        tracking.connect(uri, name)
        try:
            return _run_locked(experiment, uri, optuna_storage, resume=resume, address=address, log=log,
                               verbose=verbose, analysis=analysis)
        finally:  # the folders of this node's trials whose workers Tune killed (the others' next trial does it)
            remove_orphaned_trial_folders()


def _run_locked(experiment: Experiment, uri: str, optuna_storage: str, *, resume: bool, address: str | None,
                log: Callable[[str], None], verbose: int, analysis: bool) -> SearchSummary:
    """:func:`run_search` once the door is passed and the sweep's lock is held."""
    cfg, name, base = experiment.config, experiment.config.experiment, experiment.base
    # --resume continues what there is: the Tune stages that were stored, and the newest parent run.
    reuse_parent = resume
    stored = [path for path in _stage_paths(cfg) if tune.Tuner.can_restore(path)] if resume else []
    if resume and not stored:
        log(f"--resume: nothing to resume under {cfg.storage_path} for experiment {name!r}; starting it")
        resume = False
    for path in stored:  # Tune unpickles its own files from there: the user's alone, and whole
        storage.check_restorable(path)
    previous = tracking.find_run(uri, name, {tracking.SWEEP_TAG: name, tracking.ROLE_TAG: "sweep"})
    if resume and previous is None:  # Tune's trials would come back without their runs, scores or study
        raise ConfigError(f"--resume: {cfg.storage_path} holds a sweep of {name!r} that {uri} does not know (no parent "
                          "run: another tracking URI, or a new store?); resume it with the store it ran with, or "
                          "run it again without --resume")
    if resume:
        _check_resumed_config(uri, experiment, previous)
    if resume and _stage_paths(cfg)[1] in stored:  # the search stage's searcher loads its study by name
        check_resumable_study(optuna_storage, study_name(name, previous))

    teacher_path = share_teacher(base, cfg.storage_path, log=log)
    warning = check_teacher(base, teacher_path) if METHODS_USING_TEACHER & _methods_in(experiment) else None
    if warning:
        log(f"warning: {warning}")

    parent_tags = {tracking.SWEEP_TAG: name, tracking.ROLE_TAG: "sweep", "teacher": base.teacher.arch,
                   "student": base.student.arch, "dataset": base.data.name,
                   **({tracking.TEACHER_WARNING_TAG: warning} if warning else {})}
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
    if previous is not None:  # what an earlier attempt said of how it ended no longer holds
        tracking.delete_tags(uri, parent, [tracking.ERROR_TAG, tracking.INTERRUPTED_TAG])
    study = study_name(name, parent)  # one study per sweep: --resume (the same parent) continues it
    tracking.set_tags(uri, parent, {"optuna.storage": optuna_storage, "optuna.study": study})
    if superseded is not None:
        # A new sweep of the same experiment: the earlier parent stays (with its trials) but says it is not
        # the current one, and analysis takes the newest parent.
        tracking.supersede_run(uri, superseded, by=parent)
        log(f"MLflow: the earlier sweep's parent run {superseded} is superseded by {parent} (use --resume to "
            "continue a sweep instead)")
    try:
        return _run_stages(experiment, parent, uri, teacher_path, warning, resume=resume, address=address, log=log,
                           verbose=verbose, analysis=analysis, study=(optuna_storage, study))
    except BaseException as error:
        # Whatever ends the driver (an error, Ctrl-C outside Tune, a failed trial that ends the sweep) closes
        # the parent with the right status: no sweep stays RUNNING.
        status = "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED"
        tracking.finish_parent_run(uri, parent, tags={tracking.ERROR_TAG: f"{type(error).__name__}: {error}"[:500]},
                                   status=status)
        raise


# Experiment keys a resumed sweep may change: where things are stored and shown, and how fast it runs. Every other
# key (the base run's, less iakd.resume's free keys; the space; the budget; the stages) changes what is trained.
RESUME_FREE_EXPERIMENT_KEYS = ("storage_path", "tracking_uri", "optuna_storage", "max_concurrent", "max_failures",
                               "resources.cpu", "resources.gpu", "analysis")


def _check_resumed_config(uri: str, experiment: Experiment, parent: str) -> None:
    """Refuse, in one line, a ``--resume`` whose experiment config differs from the one its sweep started with
    (``parent``'s ``experiment.yaml``) in a key that changes training: Tune would restore trials built from
    the old config beside new ones, and Optuna's study would mix two spaces. Nothing is touched before."""
    import tempfile

    import yaml

    cfg = experiment.config
    with tempfile.TemporaryDirectory() as folder:
        try:
            path = tracking.mlflow_client(uri).download_artifacts(parent, "experiment.yaml", folder)
        except Exception:  # noqa: BLE001 - a parent from before this check, or its artifacts gone: nothing to compare
            return
        started = yaml.safe_load(Path(path).read_text())
    free = {*RESUME_FREE_EXPERIMENT_KEYS, *(f"run.{key}" for key in RESUME_FREE_KEYS)}
    before, now = flat_items(started), flat_items(to_dict(cfg))
    for key in sorted(set(before) | set(now)):
        if key not in free and before.get(key) != now.get(key):
            raise ConfigError(f"--resume: {key} is {now.get(key)!r} here but {before.get(key)!r} when the sweep "
                              f"started (parent run {parent}); resume with the sweep's own config, or start another "
                              "sweep under a new experiment name")


def _stage_paths(cfg: ExperimentConfig) -> tuple[str, str, str]:
    """Where Tune keeps each stage's experiment: baselines, search, confirmation."""
    name = f"{cfg.storage_path}/{cfg.experiment}"
    return f"{name}-baselines", name, f"{name}-confirm"


def _run_stages(experiment: Experiment, parent: str, uri: str, teacher_path: str, warning: str | None, *,
                resume: bool, address: str | None, log: Callable[[str], None], verbose: int,
                analysis: bool, study: tuple[str, str]) -> SearchSummary:
    """The stages of a sweep whose parent run is open: baselines, search, confirmation, then its answer."""
    if not ray.is_initialized():
        # ray.init puts its own SIGTERM handler in (it logs a stack dump and aborts): keep the caller's, which
        # stops the sweep as Ctrl-C does (tune/search.py)
        handler = signal.getsignal(signal.SIGTERM)
        ray.init(address=address, include_dashboard=False, log_to_driver=verbose > 1)
        if callable(handler):
            signal.signal(signal.SIGTERM, handler)
    stages = _Stages(experiment, parent, uri, teacher_path, warning, resume, verbose, *study)
    baselines, interrupted = stages.baselines()
    trials: list[TrialSummary] = []
    if not interrupted:
        trials, interrupted = stages.search()
    ranked = rank(trials)  # chosen once, on validation: the confirmation re-trains its top
    if not interrupted and not ranked:
        raise RunError(_nothing_ranked(stages.search_diverged, stages.search_errors, experiment.config.num_samples))
    if not interrupted:
        interrupted = stages.confirmation(ranked)
    answer = stages.close(ranked[0] if ranked else None, baselines, interrupted, analysis, log)
    return SearchSummary(experiment.config.experiment, parent, uri, experiment.config.metric,
                         ranked[0] if ranked else None, baselines, trials, interrupted, answer,
                         tracking.connect(uri, experiment.config.experiment), *study)


@dataclass
class _Stages:
    """The Tune stages of one sweep whose parent run is open: what they share, and one method per stage. Each
    stage returns whether Tune stopped before all its trials ended (an interrupted sweep, to resume)."""

    experiment: Experiment
    parent: str
    uri: str
    teacher_path: str
    warning: str | None
    resume: bool
    verbose: int
    optuna_storage: str  # where the search's Optuna study lives (iakd.search.study)
    study: str

    def __post_init__(self) -> None:
        self.cfg = self.experiment.config
        self.closer = CloseTrialRuns(self.uri, self.parent)
        self.search_errors: list[str] = []  # the last line of each searched trial's error, in Tune's order
        self.search_diverged = 0  # searched trials whose training diverged

    def _fit(self, path: str, role: str, param_space: dict, tune_config: tune.TuneConfig, run_name: str,
             candidates: dict[str, dict[str, Any]] | None = None) -> tune.ResultGrid:
        cfg = self.cfg
        context = TrialContext(to_dict(self.experiment.base), self.teacher_path, self.uri, cfg.experiment,
                               self.parent, role, self.warning, candidates)
        trainable = tune.with_resources(tune.with_parameters(run_trial, context=context),
                                        {"cpu": cfg.resources.cpu, "gpu": cfg.resources.gpu})
        run_config = tune.RunConfig(name=run_name, storage_path=cfg.storage_path, callbacks=[self.closer],
                                    verbose=self.verbose,
                                    failure_config=tune.FailureConfig(max_failures=cfg.max_failures),
                                    checkpoint_config=tune.CheckpointConfig(num_to_keep=2))
        return _tuner(path, trainable, param_space, tune_config, run_config, self.resume).fit()

    def baselines(self) -> tuple[list[TrialSummary], bool]:
        """CE and KD (or whichever baselines) on their seeds, each with its own standard hyperparameters, from
        every student initialisation the searched trials may use (:func:`student_inits`)."""
        cfg = self.cfg
        if not cfg.baselines.methods:
            return [], False
        inits = student_inits(self.experiment)
        grid = {"method.name": tune.grid_search(list(cfg.baselines.methods)),
                "seed": tune.grid_search(list(cfg.baselines.seeds)), **BASELINE_WEIGHTS,
                "student.init": tune.grid_search(inits)}
        results = self._fit(_stage_paths(cfg)[0], "baseline", grid,
                            tune.TuneConfig(metric=cfg.metric, mode=cfg.mode, max_concurrent_trials=cfg.max_concurrent,
                                            reuse_actors=REUSE_ACTORS, trial_name_creator=baseline_name,
                                            trial_dirname_creator=baseline_name),
                            f"{cfg.experiment}-baselines")
        summaries = _summaries(results, _trial_runs(self.uri, self.parent))
        expected = len(cfg.baselines.methods) * len(cfg.baselines.seeds) * len(inits)
        # only baselines that ended count (and are printed): an interrupted one would stand beside longer trials
        return [s for s in summaries if s.outcome in outcomes.USABLE], _unfinished(results, expected)

    def search(self) -> tuple[list[TrialSummary], bool]:
        """The searched trials: Optuna's TPE through OptunaSearch, cut short by ASHA only after the handover."""
        cfg, epochs = self.cfg, self.experiment.epochs
        searcher = LinkedOptunaSearch(space=self.experiment.space.define_by_run, metric=cfg.metric, mode=cfg.mode,
                                      sampler=optuna.samplers.TPESampler(seed=cfg.searcher_seed),
                                      storage=self.optuna_storage, study_name=self.study,
                                      tracking_uri=self.uri, parent_run_id=self.parent)
        scheduler = None
        if cfg.scheduler.name == "asha":
            # max_t one past the last epoch: ASHA stops every trial that reaches max_t, and a trial that ran all
            # its epochs must end as finished, not as stopped early by the scheduler. No trial is scored while
            # it swaps (HandoverASHA).
            scheduler = HandoverASHA(time_attr="epoch", metric=cfg.metric, mode=cfg.mode, max_t=epochs + 1,
                                     grace_period=min(cfg.scheduler.grace_period, epochs),
                                     reduction_factor=cfg.scheduler.reduction_factor)
        results = self._fit(_stage_paths(cfg)[1], "search", {},
                            tune.TuneConfig(num_samples=cfg.num_samples, scheduler=scheduler, reuse_actors=REUSE_ACTORS,
                                            trial_name_creator=trial_name, trial_dirname_creator=trial_name,
                                            search_alg=ConcurrencyLimiter(searcher, max_concurrent=cfg.max_concurrent)),
                            cfg.experiment)
        self.search_errors = [_error_line(r.error) for r in results if r.error is not None]
        self.search_diverged = sum(1 for r in results if (r.metrics or {}).get(DIVERGED_KEY))
        return _summaries(results, _trial_runs(self.uri, self.parent)), _unfinished(results, cfg.num_samples)

    def confirmation(self, ranked: list[TrialSummary]) -> bool:
        """The top of the ranking trained again on fresh seeds, beside baselines on the same seeds (those the
        baseline stage already trained there are not trained again)."""
        cfg = self.cfg
        if cfg.confirm.top_k == 0 or not ranked:
            return False
        reuse = set(cfg.confirm.seeds) <= set(cfg.baselines.seeds)
        candidates = confirm_candidates(ranked, cfg.confirm.top_k, [] if reuse else cfg.baselines.methods,
                                        student_inits(self.experiment))
        grid = {tracking.CANDIDATE_TAG: tune.grid_search(list(candidates)),
                "seed": tune.grid_search(list(cfg.confirm.seeds))}
        results = self._fit(_stage_paths(cfg)[2], "confirm", grid,
                            tune.TuneConfig(metric=cfg.metric, mode=cfg.mode, max_concurrent_trials=cfg.max_concurrent,
                                            reuse_actors=REUSE_ACTORS, trial_name_creator=confirm_name,
                                            trial_dirname_creator=confirm_name),
                            f"{cfg.experiment}-confirm", candidates)
        return _unfinished(results, len(candidates) * len(cfg.confirm.seeds))

    def close(self, best: TrialSummary | None, baselines: list[TrialSummary], interrupted: bool, analysis: bool,
              log: Callable[[str], None]) -> SweepResults | None:
        """The parent run closed: KILLED when interrupted (``--resume`` re-opens it), else FINISHED with the
        sweep's answer (the one the printout and the report show) and, with ``analysis``, the report."""
        cfg, uri = self.cfg, self.uri
        if interrupted:
            tracking.finish_parent_run(uri, self.parent, tags={tracking.INTERRUPTED_TAG: "true"}, status="KILLED")
            log(f"interrupted: continue with --resume (experiment {cfg.experiment!r}, storage {cfg.storage_path})")
            return None
        from iakd.analysis.export import load_sweep  # pandas and pyarrow: only once a sweep has runs

        sweep = load_sweep(uri, parent_run_id=self.parent)  # the one read-back: the answer and the report
        answer = sweep_results(sweep.runs.to_pandas())
        metrics, tags = answer.metrics(cfg.metric), {tracking.INTERRUPTED_TAG: "false"}
        if best is not None:
            tags.update({"best_trial": best.name, "best_run_id": best.run_id or "",
                         "best_config": ", ".join(f"{k}={format_value(v)}" for k, v in best.overrides.items())})
        for b in baselines:
            metrics[f"baseline_{b.overrides.get('method.name')}_seed{b.overrides.get('seed')}_{cfg.metric}"] = b.score
        tracking.finish_parent_run(uri, self.parent, metrics=metrics, tags=tags)
        if cfg.analysis and analysis:  # the report describes the sweep as it ended: its parent closed, FINISHED
            finished = dataclasses.replace(sweep, parent_status="FINISHED", interrupted=False)
            tracking.set_tags(uri, self.parent, {"iakd.analysis": _analyse(finished, log)})
        return answer


def sweep_answer(tracking_uri: str, parent_run_id: str) -> SweepResults:
    """The sweep's answer (iakd.analysis.results) from its runs in MLflow, as the report reads them."""
    from iakd.analysis.export import load_sweep  # pandas and pyarrow: only once a sweep has runs

    return sweep_results(load_sweep(tracking_uri, parent_run_id=parent_run_id).runs.to_pandas())


def _methods_in(experiment: Experiment) -> set[str]:
    """Every method a trial of this experiment may run: the baselines and the searched or fixed method.name."""
    spec = experiment.space.params.get("method.name")
    if isinstance(spec, CategoricalDistribution):
        names = set(spec.choices)
    elif isinstance(spec, Fixed):
        names = {spec.value}
    else:
        names = {experiment.base.method.name}
    return set(experiment.config.baselines.methods) | names


def _trial_runs(tracking_uri: str, parent_run_id: str) -> dict[str, Run]:
    """Tune trial id -> MLflow run (its status and tags, no metric history), for the children of a sweep (the
    trial-id tag is the one link)."""
    return {r.data.tags[tracking.TRIAL_TAG]: r for r in tracking.child_runs(tracking_uri, parent_run_id)
            if tracking.TRIAL_TAG in r.data.tags}


def confirm_candidates(ranked: list[TrialSummary], top_k: int, baselines: list[str],
                       inits: list[str] = ("scratch",)) -> dict[str, dict[str, Any]]:  # type: ignore[assignment]
    """Label -> dotted overrides of what the confirmation re-trains: the first ``top_k`` searched trials of the
    search's ranking (on validation), then each baseline method, from each initialisation in ``inits``, that the
    baseline stage did not already train on the confirmation's seeds (labelled by ``tracking.baseline_label``)."""
    candidates = {t.name: dict(t.overrides) for t in ranked[:top_k]}
    candidates.update({tracking.baseline_label(method, init): {"method.name": method, **BASELINE_WEIGHTS,
                                                                "student.init": init}
                       for method in baselines for init in inits})
    return candidates


def student_inits(experiment: Experiment) -> list[str]:
    """The student initialisations a searched trial may use (``student.init`` of the space, or of the run config):
    the baselines are trained from each, so that every configuration meets CE and KD from its own start."""
    spec = experiment.space.params.get("student.init")
    if isinstance(spec, CategoricalDistribution):
        return list(dict.fromkeys(spec.choices))
    return [spec.value if isinstance(spec, Fixed) else experiment.base.student.init]


def _report_command(sweep: Sweep) -> str:
    """The command that makes this sweep's report, as the search would have: its store and its parent run."""
    return shlex.join(["python", "analysis/ablations.py", "--tracking-uri", sweep.tracking_uri, "--parent-run-id",
                       sweep.parent_run_id])


def _analyse(sweep: Sweep, log: Callable[[str], None]) -> str:
    """The sweep's report, logged to its parent run; a failure is reported, not raised: the sweep is done."""
    try:
        from iakd.analysis.report import publish_report  # matplotlib: only when a report is made

        report = publish_report(sweep)  # to analysis_out/<experiment>, as the CLI
    except Exception as error:  # noqa: BLE001 - the trials' results stand whatever the plots do
        log(f"analysis failed ({type(error).__name__}: {error}); retry with: {_report_command(sweep)}")
        return "failed"
    except KeyboardInterrupt:  # Ctrl-C (or SIGTERM) now stops the report only: the sweep itself has ended
        log(f"analysis interrupted: the sweep is finished (parent run {sweep.parent_run_id}); make its report with: "
            f"{_report_command(sweep)}")
        return "interrupted"
    log(f"report: {report} (and in MLflow, on the parent run under analysis/)")
    return "done"


def _error_line(error: BaseException) -> str:
    """The line of a trial's error that says what it was (Ray wraps it in the worker's traceback)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def _nothing_ranked(diverged: int, errors: list[str], num_samples: int) -> str:
    """Why a sweep that ran its search has no trial to rank, in one line."""
    parts = [f"{len(errors)} failed"] * bool(errors) + [f"{diverged} diverged"] * bool(diverged)
    why = f" ({', '.join(parts)})" if parts else ""
    first = f"; the first error: {errors[0]}" if errors else ""
    return f"no searched trial of {num_samples} finished{why}, so nothing is ranked or confirmed{first}"


def _unfinished(results: tune.ResultGrid, expected: int) -> bool:
    """True when Tune returned before every trial ended (an interrupted experiment).

    On Ctrl-C Tune hands back every trial it had started or not as terminated, those cut short included: a trial
    counts as ended only when it failed or its last result says it ended (:func:`trainable.ended`).
    """
    return sum(1 for r in results if r.error is not None or ended(r.metrics or {})) < expected


