"""The run config: one typed object, built from YAML plus ``key=value`` overrides and validated once.

Every error is a :class:`ConfigError` whose one-line message names the key, the value and what is allowed,
so a typo stops a run (exit code 2 on the command line) before any data is read or any worker starts.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from iakd import schedules
from iakd.data import DATASETS
from iakd.errors import ConfigError
from iakd.hybrid import DEFAULT_MIXING, DEFAULT_TEACHER_BN
from iakd.methods import METHODS
from iakd.models import ARCHS, blocks_per_stage
from iakd.units import canonical_granularity, parse_granularity

__all__ = ["DataConfig", "TeacherConfig", "StudentConfig", "MethodConfig", "OptimConfig", "ComputeConfig",
           "EvaluationConfig", "TrainConfig", "load_config", "from_dict", "build_dataclass", "read_yaml",
           "apply_overrides", "parse_overrides", "to_dict", "flat_items"]


@dataclass
class DataConfig:
    name: Literal[DATASETS] = "digits"  # type: ignore[valid-type]  # iakd.data.DATASETS, the one list
    dir: str = "data"
    val_fraction: float = 0.1
    split_seed: int = 0
    download: bool = False
    image_size: int | None = None
    num_workers: int = 4
    train_size: int | None = None  # keep this many training images (a subset fixed by split_seed); None: all


@dataclass
class TeacherConfig:
    arch: str = "resnet20"
    checkpoint: str | None = None  # a trained teacher file; None trains one (cached) with the run's recipe
    epochs: int | None = None  # teacher training epochs when one is trained; None = optim.epochs
    batch_size: int | None = None  # teacher training batch size when one is trained; None = optim.batch_size
    cache_dir: str = "runs/teachers"


@dataclass
class StudentConfig:
    arch: str = "resnet8"
    # scratch: fresh weights from the run's seed; teacher: then the stem, the classifier and, per stage, the first
    # blocks copied from the teacher where shapes match (iakd.transplant), for every method alike
    init: Literal["scratch", "teacher"] = "scratch"


@dataclass
class MethodConfig:
    name: str = "iakd"  # a key of iakd.methods.METHODS
    granularity: str | int = "stage"  # normalised to its canonical name for the pair (see units.canonical_granularity)
    ce_weight: float | None = None  # None: the method's default (kd 0.1, otherwise 1.0)
    kd_weight: float | None = None  # None: the method's default (kd and iakd+kd 0.9); > 0 only for those
    temperature: float = 4.0
    # how a swapped-in teacher unit normalises inside the hybrid (iakd.hybrid.TEACHER_BN_MODES)
    teacher_bn: Literal["frozen", "batch"] = DEFAULT_TEACHER_BN
    # The levers of swapping-in (iakd.methods.IAKD, docs/iakd-levers.md); methods that do not swap refuse them.
    mixing: Literal["bernoulli", "blend"] = DEFAULT_MIXING  # iakd.hybrid.MIXINGS: draw a unit, or blend both by p
    hybrid_weight: float = 0.0  # > 0: the pure student carries the loss, plus this x CE on the hybrid's logits
    kd_on: Literal["hybrid", "student"] | None = None  # IAKD+KD's KD term on these logits; None: the loss's own


@dataclass
class EvaluationConfig:
    """How the pure student is evaluated after each epoch."""

    # recompute: its BatchNorm statistics are recomputed on training images before each evaluation (statistics
    # gathered inside hybrids describe hybrids, not the pure student); running: its running statistics as they are
    student_bn: Literal["recompute", "running"] = "recompute"
    bn_images: int = 1024  # at most this many training images (unaugmented, in split order) for the recompute
    # Epochs between evaluations (and always the last): a run is judged, and ASHA decides, on evaluated epochs
    # only. 1 judges every epoch; evaluating changes no weight, so a rung at a multiple of it sees the same score.
    every: int = 1


@dataclass
class OptimConfig:
    epochs: int = 240
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    lr_schedule: Literal["multistep", "cosine"] = "multistep"
    milestones: list[float] = field(default_factory=lambda: [0.625, 0.75, 0.875])  # fractions of the epochs
    gamma: float = 0.1


@dataclass
class ComputeConfig:
    """How the step computes, not what: each changes rounding only (see iakd.step)."""

    cuda_graphs: bool = True  # on CUDA, replay each step as a CUDA graph (one per swap mask); no effect on the CPU
    bf16: bool = False  # bf16 autocast of the forward passes
    channels_last: bool = False  # NHWC memory layout for weights and batches


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    schedule: schedules.SwapSchedule = field(default_factory=schedules.SwapSchedule)  # built by schedules.build
    optim: OptimConfig = field(default_factory=OptimConfig)
    compute: ComputeConfig = field(default_factory=ComputeConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    out_dir: str = "runs/train"
    checkpoint_every: int = 1  # epochs between checkpoints; the last epoch is always written


# ---------------------------------------------------------------------------------------------------------
# Building a dataclass from a mapping, with a message that names the key


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
    elif origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _coerce(value, option, key)
            except ConfigError:
                continue
    elif tp is type(None):
        if value is None:
            return None
    elif dataclasses.is_dataclass(tp):
        if isinstance(value, Mapping):
            return build_dataclass(tp, value, key)
    elif origin is list:
        if isinstance(value, (list, tuple)):
            (item,) = typing.get_args(tp)
            return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    elif origin is dict:
        if isinstance(value, Mapping):
            return dict(value)
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # YAML 1.1 reads 5e-4 (no dot) as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is not None:
            if not math.isfinite(number):  # nan passes every "<= 0" check and then poisons training
                raise ConfigError(f"{key}: {value!r} is not a finite number")
            return number
    elif tp is str:
        if isinstance(value, str):
            return value
    else:  # pragma: no cover - a field type this module does not know is a programming error
        raise TypeError(f"unsupported config type {tp!r} for {key}")
    raise ConfigError(f"{key}: {value!r} is not {_type_name(tp)}")


def build_dataclass(cls: type, values: Mapping[str, Any], prefix: str = "") -> Any:
    """Build config dataclass ``cls`` from a mapping; unknown keys and wrong types raise a ConfigError naming
    ``prefix.key``. Value checks beyond types are the caller's."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; allowed: {', '.join(names)}"
            raise ConfigError(f"{full}: unknown key{hint}")
        kwargs[key] = _coerce(value, hints[key], full)
    return cls(**kwargs)


def _check(cfg: TrainConfig, schedule: Any) -> None:
    """Value checks that types cannot express; ``schedule`` (the section as given) becomes ``cfg.schedule``."""
    def fail(key: str, value: Any, allowed: str) -> None:
        raise ConfigError(f"{key}: {value!r} is not allowed; {allowed}")

    for key, arch in (("student.arch", cfg.student.arch), ("teacher.arch", cfg.teacher.arch)):
        if arch not in ARCHS:
            fail(key, arch, f"known architectures: {', '.join(ARCHS)}")
    if cfg.method.name not in METHODS:
        fail("method.name", cfg.method.name, f"known: {', '.join(METHODS)}")
    method = METHODS[cfg.method.name]
    kd_weight = cfg.method.kd_weight
    if kd_weight is not None and method.has_kd_term and kd_weight == 0:
        fail("method.kd_weight", kd_weight, f"method.name={cfg.method.name} has a KD term and needs kd_weight > 0 "
             "(or null for its default); without one, use method.name=iakd (or ce)")
    if kd_weight is not None and not method.has_kd_term and kd_weight != 0:
        fail("method.kd_weight", kd_weight, f"method.name={cfg.method.name} has no KD term; use method.name="
             f"{'iakd+kd' if method.uses_swap else 'kd'} to add one, or leave method.kd_weight unset")
    if not method.uses_swap:
        levers = (("mixing", cfg.method.mixing, "bernoulli"), ("hybrid_weight", cfg.method.hybrid_weight, 0.0),
                  ("kd_on", cfg.method.kd_on, None))
        for key, value, default in levers:
            if value != default:
                fail(f"method.{key}", value, f"method.name={cfg.method.name} does not swap; it applies to "
                     f"{', '.join(n for n, c in METHODS.items() if c.uses_swap)}")
    elif cfg.method.kd_on is not None and not method.has_kd_term:
        fail("method.kd_on", cfg.method.kd_on, f"method.name={cfg.method.name} has no KD term; use iakd+kd")
    if cfg.student.init == "teacher":
        from iakd.transplant import transplant_plan  # builds both networks once per pair (cached)

        if not transplant_plan(cfg.student.arch, cfg.teacher.arch):
            fail("student.init", "teacher", f"no part of teacher.arch {cfg.teacher.arch!r} has the shapes of "
                 f"student.arch {cfg.student.arch!r} (stem, blocks and classifier all differ); use scratch")
    try:
        granularity = parse_granularity(cfg.method.granularity)
    except ConfigError as e:
        raise ConfigError(f"method.{e}") from None
    if method.uses_swap:
        s_blocks, t_blocks = blocks_per_stage(cfg.student.arch), blocks_per_stage(cfg.teacher.arch)
        pair = f"{cfg.teacher.arch} -> {cfg.student.arch}"
        if len(s_blocks) != len(t_blocks):
            raise ConfigError(f"student.arch: {cfg.student.arch!r} has {len(s_blocks)} stages and teacher.arch "
                              f"{cfg.teacher.arch!r} {len(t_blocks)}; swapping needs the same number")
        # Only block counts are needed here; spatial sizes are checked when the hybrid is built.
        try:
            granularity = canonical_granularity(s_blocks, t_blocks, granularity, pair=pair)
        except ConfigError as e:
            raise ConfigError(f"method.{e}") from None
    cfg.method.granularity = granularity
    if isinstance(schedule, Mapping):
        # A partial schedule (e.g. only an override of schedule.p0) takes the other keys from the default.
        schedule = {**dataclasses.asdict(schedules.SwapSchedule()), **schedule}
    cfg.schedule = schedules.build(schedule, prefix="schedule")
    if not 0.0 <= cfg.data.val_fraction < 1.0:
        fail("data.val_fraction", cfg.data.val_fraction, "must be in [0, 1)")
    positive = {"optim.epochs": cfg.optim.epochs, "optim.batch_size": cfg.optim.batch_size, "optim.lr": cfg.optim.lr,
                "method.temperature": cfg.method.temperature, "checkpoint_every": cfg.checkpoint_every,
                "evaluation.bn_images": cfg.evaluation.bn_images, "evaluation.every": cfg.evaluation.every}
    if cfg.teacher.epochs is not None:
        positive["teacher.epochs"] = cfg.teacher.epochs
    if cfg.teacher.batch_size is not None:
        positive["teacher.batch_size"] = cfg.teacher.batch_size
    if cfg.data.image_size is not None:
        positive["data.image_size"] = cfg.data.image_size
    if cfg.data.train_size is not None:
        positive["data.train_size"] = cfg.data.train_size
    for key, value in positive.items():
        if value <= 0:
            fail(key, value, "must be > 0")
    for key, seed in (("seed", cfg.seed), ("data.split_seed", cfg.data.split_seed)):
        if not 0 <= seed < 2**32:
            fail(key, seed, "must be in [0, 2**32)")
    if cfg.data.num_workers < 0:
        fail("data.num_workers", cfg.data.num_workers, "must be >= 0")
    for key, value in (("optim.momentum", cfg.optim.momentum), ("optim.gamma", cfg.optim.gamma)):
        if not 0.0 <= value <= 1.0:
            fail(key, value, "must be in [0, 1]")
    for key, value in (("optim.weight_decay", cfg.optim.weight_decay), ("method.ce_weight", cfg.method.ce_weight),
                       ("method.kd_weight", cfg.method.kd_weight), ("method.hybrid_weight", cfg.method.hybrid_weight)):
        if value is not None and value < 0:
            fail(key, value, "must be >= 0")
    if any(not 0.0 < m < 1.0 for m in cfg.optim.milestones) or cfg.optim.milestones != sorted(cfg.optim.milestones):
        fail("optim.milestones", cfg.optim.milestones, "must be increasing fractions of training in (0, 1)")


def from_dict(values: Mapping[str, Any]) -> TrainConfig:
    """Build and validate a TrainConfig from a nested mapping (missing keys take their defaults)."""
    if not isinstance(values, Mapping):
        raise ConfigError(f"config: expected a mapping of sections, got {type(values).__name__}")
    schedule = values.get("schedule", {})
    cfg = build_dataclass(TrainConfig, {key: value for key, value in values.items() if key != "schedule"})
    _check(cfg, schedule)
    return cfg


def flat_items(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config dict as ``{"optim.lr": 0.05, ...}`` (lists and empty mappings stay values).

    The one flattening of nested dicts: MLflow params (:func:`iakd.tracking.flatten`) render these values."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Mapping) and value:
            flat.update(flat_items(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain nested dicts and lists (for YAML, MLflow params and Ray's param_space)."""
    return dataclasses.asdict(cfg)


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["schedule.p0=0.3", "method.name=kd"]`` -> ``{"schedule.p0": 0.3, "method.name": "kd"}`` (values as YAML)."""
    out = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r}: expected key=value, e.g. schedule.p0=0.3")
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            out[key.strip()] = raw
    return out


def apply_overrides(values: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Set dotted keys in a nested mapping (a copy); a key that walks into a non-mapping is an error."""
    result = yaml.safe_load(yaml.safe_dump(dict(values)))  # deep copy of plain data
    for dotted, value in overrides.items():
        node = result
        parts = dotted.split(".")
        for i, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{'.'.join(parts[: i + 1])}: is a value, not a section; cannot set {dotted}")
            node = child
        node[parts[-1]] = value
    return result


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping from a file; a missing or malformed file is a ConfigError naming it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found")
    try:
        values = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if values is None:  # an empty file would silently train every default
        raise ConfigError(f"config file {path}: is empty; expected a mapping of sections (see configs/)")
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path}: expected a mapping at the top level")
    return values


def load_config(path: str | Path | None = None, overrides: Sequence[str] | Mapping[str, Any] = ()) -> TrainConfig:
    """YAML file (or defaults) + overrides -> validated TrainConfig."""
    values = read_yaml(path) if path is not None else {}
    if not isinstance(overrides, Mapping):
        overrides = parse_overrides(overrides)
    return from_dict(apply_overrides(values, overrides))
