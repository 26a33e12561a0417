"""The experiment config of a search: the base run, the space, the budget, the baselines, where things go.

Read from YAML plus dotted ``key=value`` overrides, and validated whole (run config, search space against the
pair's valid granularities, resources, scheduler) before Ray starts: a bad value is one ConfigError line.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from optuna.distributions import CategoricalDistribution

from iakd import models, tracking
from iakd.config import TrainConfig, apply_overrides, build_dataclass, from_dict, parse_overrides, read_yaml, to_dict
from iakd.errors import ConfigError
from iakd.methods import METHODS
from iakd.models import blocks_per_stage
from iakd.search.space import Fixed, SearchSpace, build_space
from iakd.search.storage import is_uri
from iakd.transplant import transplant_plan
from iakd.units import canonical_granularity, valid_granularities

__all__ = ["SchedulerConfig", "BaselineConfig", "ConfirmConfig", "ResourceConfig", "ExperimentConfig", "Experiment",
           "load_experiment", "EXPERIMENT_CONFIGS", "DEFAULT_CONFIG"]

# The experiment configs shipped with the code (in a source checkout, beside the package), and the one a search
# runs when given none (`python tune/search.py`): the digits experiment. The analysis's defaults are read from it.
EXPERIMENT_CONFIGS = Path(__file__).resolve().parents[2] / "tune" / "configs"
DEFAULT_CONFIG = EXPERIMENT_CONFIGS / "digits.yaml"


@dataclass
class SchedulerConfig:
    name: Literal["asha", "none"] = "asha"
    grace_period: int = 2  # epochs every trial runs before ASHA may stop it
    reduction_factor: int = 3


@dataclass
class BaselineConfig:
    methods: list[str] = field(default_factory=lambda: ["ce", "kd"])
    seeds: list[int] = field(default_factory=lambda: [0])


@dataclass
class ConfirmConfig:
    top_k: int = 3  # the best searched configurations (on the search metric) re-trained; 0 turns the stage off
    seeds: list[int] = field(default_factory=lambda: [1, 2, 3])  # fresh seeds, the same for every configuration


@dataclass
class ResourceConfig:
    cpu: float = 1.0
    gpu: float = 0.0  # fractional packs trials on one GPU: 0.25 runs four per GPU


@dataclass
class ExperimentConfig:
    experiment: str = "iakd-digits"
    num_samples: int = 12
    max_concurrent: int = 2
    metric: str = "val_acc"
    mode: Literal["max"] = "max"  # accuracy: higher is better
    searcher_seed: int = 0
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    baselines: BaselineConfig = field(default_factory=BaselineConfig)
    confirm: ConfirmConfig = field(default_factory=ConfirmConfig)
    resources: ResourceConfig = field(default_factory=ResourceConfig)
    tracking_uri: str = "sqlite:///mlflow.db"
    # the Optuna study's RDB storage (optuna-dashboard, optuna.load_study); null: optuna.db beside a sqlite MLflow
    # store, or in the driver's folder for an MLflow server (see iakd.search.study)
    optuna_storage: str | None = None
    storage_path: str = "ray_results"
    max_failures: int = 2  # retries of a trial whose worker died; it resumes from its last checkpoint
    analysis: bool = True  # at the end: Parquet tables, ablation plots and report.md on the parent run
    run: dict[str, Any] = field(default_factory=dict)  # the base run config (see iakd.config.TrainConfig)
    space: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Experiment:
    """A validated experiment: its config, the base run as a validated TrainConfig, and the search space."""

    config: ExperimentConfig
    base: TrainConfig
    space: SearchSpace

    @property
    def epochs(self) -> int:
        return self.base.optim.epochs


# What a search selects on: the held-out validation split, never the test split (test accuracy is reported beside,
# never used to choose) nor the training batches; the sweep's results (iakd.analysis.results) rank on it.
_METRICS = ("val_acc",)


def _check(cfg: ExperimentConfig) -> None:
    def fail(key: str, value: Any, allowed: str) -> None:
        raise ConfigError(f"{key}: {value!r} is not allowed; {allowed}")

    if cfg.num_samples < 1:
        fail("num_samples", cfg.num_samples, "must be >= 1")
    if cfg.max_concurrent < 1:
        fail("max_concurrent", cfg.max_concurrent, "must be >= 1")
    if cfg.max_failures < 0:
        fail("max_failures", cfg.max_failures, "must be >= 0")
    if cfg.metric not in _METRICS:
        fail("metric", cfg.metric, f"one of {', '.join(_METRICS)}"
             + (" (selecting on the test split would report a biased test score)" if "test" in cfg.metric else ""))
    if cfg.scheduler.grace_period < 1 or cfg.scheduler.reduction_factor < 2:
        fail("scheduler", to_dict(cfg.scheduler), "grace_period >= 1 and reduction_factor >= 2")
    for m in cfg.baselines.methods:
        if m not in METHODS:
            fail("baselines.methods", m, f"each one of {', '.join(METHODS)}")
    if cfg.confirm.top_k < 0:
        fail("confirm.top_k", cfg.confirm.top_k, "must be >= 0 (0: no confirmation stage)")
    if cfg.confirm.top_k > 0 and (not cfg.confirm.seeds or len(set(cfg.confirm.seeds)) != len(cfg.confirm.seeds)):
        fail("confirm.seeds", cfg.confirm.seeds, "a non-empty list of distinct seeds")
    if any(seed < 0 for seed in cfg.confirm.seeds):
        fail("confirm.seeds", cfg.confirm.seeds, "seeds must be >= 0")
    if cfg.resources.cpu <= 0 or cfg.resources.gpu < 0:
        fail("resources", to_dict(cfg.resources), "cpu > 0 and gpu >= 0")
    if cfg.resources.gpu > 1 and cfg.resources.gpu != int(cfg.resources.gpu):
        fail("resources.gpu", cfg.resources.gpu, "a fraction <= 1 or a whole number of GPUs")
    tracking.check_experiment_name(cfg.experiment)


def _absolute(path: str | None) -> str | None:
    """Trials run with the trial folder as working directory: relative paths must be resolved here."""
    if path is None or is_uri(path):
        return path
    return str(Path(path).expanduser().resolve())


def _canonical_granularities(space: dict[str, Any], student: str, teacher: str, pair: str) -> dict[str, Any]:
    """The space with listed granularities under their canonical names, each once (2 is "block" for a pair
    whose student has 2 blocks per stage): two names for one partition would split trials and tags."""
    listed = space.get("method.granularity")
    if not isinstance(listed, list):
        return space
    names: list[Any] = []
    for value in listed:
        try:
            value = canonical_granularity(blocks_per_stage(student), blocks_per_stage(teacher), value, pair)
        except ConfigError:
            pass  # build_space reports it with the space's key
        if value not in names:
            names.append(value)
    return {**space, "method.granularity": names}


def validate(values: Mapping[str, Any]) -> Experiment:
    """Build and validate an experiment from a nested mapping."""
    if not isinstance(values, Mapping):
        raise ConfigError("experiment config: expected a mapping at the top level")
    cfg = build_dataclass(ExperimentConfig, values)
    _check(cfg)
    try:
        base = from_dict(cfg.run)
    except ConfigError as e:
        raise ConfigError(f"run.{e}") from None
    student, teacher = models.build(base.student.arch, 10), models.build(base.teacher.arch, 10)
    pair = f"{base.teacher.arch} -> {base.student.arch}"
    try:
        valid = valid_granularities(student, teacher, pair=pair)
    except ConfigError as e:
        raise ConfigError(f"run.student.arch / run.teacher.arch: {e}") from None
    if METHODS[base.method.name].uses_swap and base.method.granularity not in valid:
        raise ConfigError(f"run.method.granularity: {base.method.granularity!r} is impossible for {pair}; "
                          f"valid: {', '.join(map(str, valid))}")
    if cfg.confirm.top_k > 0 and base.seed in cfg.confirm.seeds:
        raise ConfigError(f"confirm.seeds: {cfg.confirm.seeds!r} holds run.seed {base.seed}, the search's own seed; "
                          "confirmation needs fresh seeds (the search's seed favours the configurations it picked)")
    space = build_space(_canonical_granularities(cfg.space, base.student.arch, base.teacher.arch, pair),
                        valid_granularities=valid)
    init = space.params.get("student.init")
    inits = (init.choices if isinstance(init, CategoricalDistribution)
             else (init.value,) if isinstance(init, Fixed) else ())
    if "teacher" in inits and not transplant_plan(base.student.arch, base.teacher.arch):
        raise ConfigError(f"space.student.init: 'teacher' is impossible for {pair}: no part of the teacher has the "
                          "student's shapes (stem, blocks and classifier all differ)")
    # Keys a search decides itself: refused, not silently ignored.
    if base.out_dir != TrainConfig().out_dir:
        raise ConfigError(f"run.out_dir: {base.out_dir!r} is not used by a search: each trial writes in its own Tune "
                          "folder under storage_path; remove it")
    if base.teacher.cache_dir != TrainConfig().teacher.cache_dir and not is_uri(cfg.storage_path):
        raise ConfigError(f"run.teacher.cache_dir: {base.teacher.cache_dir!r} is not used by a search on a folder: "
                          "its teacher is cached in <storage_path>/teachers, where every trial reads it; remove it")
    # Paths the trials read, made absolute now (trials run in their own folders, maybe on other nodes).
    base.data.dir = _absolute(base.data.dir)
    base.teacher.cache_dir = _absolute(base.teacher.cache_dir)
    base.teacher.checkpoint = _absolute(base.teacher.checkpoint)
    if base.teacher.checkpoint and not Path(base.teacher.checkpoint).is_file():
        raise ConfigError(f"run.teacher.checkpoint: {base.teacher.checkpoint} not found")
    cfg.storage_path = _absolute(cfg.storage_path)
    cfg.run = to_dict(base)
    return Experiment(cfg, base, space)


def load_experiment(path: str | Path | None, overrides: Sequence[str] | Mapping[str, Any] = ()) -> Experiment:
    """YAML file + dotted overrides (``num_samples=4``, ``run.optim.epochs=3``) -> validated Experiment.

    The space's keys are themselves dotted run-config keys, so ``space.<key>=<value>`` sets the entry ``<key>``
    of ``space`` as a whole (``space.schedule.p0={low: 0.2, high: 0.6}``, ``space.method.name=[iakd]``), and
    ``space.<key>=null`` takes the key out of the space (the run config's value then holds for every trial).
    """
    values = read_yaml(path) if path is not None else {}
    if not isinstance(overrides, Mapping):
        overrides = parse_overrides(overrides)
    values = apply_overrides(values, {k: v for k, v in overrides.items() if not k.startswith("space.")})
    entries = {k.removeprefix("space."): v for k, v in overrides.items() if k.startswith("space.")}
    if entries:
        space = values.setdefault("space", {})
        if not isinstance(space, dict):
            raise ConfigError(f"space: {space!r} is not a mapping of dotted run-config keys")
        for key, value in entries.items():
            if value is None:
                space.pop(key, None)
            else:
                space[key] = value
    return validate(values)
