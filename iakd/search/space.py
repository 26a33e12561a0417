"""The search space of a sweep: dotted run-config keys mapped to what Optuna may pick for them.

The experiment YAML declares it as ``space:``, one entry per dotted key of the run config::

    schedule.family: [linear, cosine, exponential]   # a list: a categorical choice
    schedule.p0: {low: 0.1, high: 1.0}               # a float range (optional log: true, optional step)
    optim.epochs: {low: 100, high: 240, type: int}   # an integer range
    method.granularity: auto                         # every granularity valid for the student/teacher pair
    optim.lr: 0.05                                   # a scalar: fixed, not searched, still part of every trial

Some keys only mean something under another key's value (see `CONDITIONS`): ``schedule.rate`` for the
exponential family, ``schedule.interval`` for step, ``method.kd_weight`` for methods with a KD term. They are
suggested (or, if fixed, returned) only when their condition holds, so TPE never models a parameter that the
trial does not use, and every trial's overrides build a valid run config through `apply_trial`.

Everything is validated once, in `build_space`, before Ray starts: an error is a ConfigError naming
``space.<key>`` and the bad value.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from iakd import schedules
from iakd.config import TrainConfig, apply_overrides, from_dict
from iakd.errors import ConfigError
from iakd.methods import kd_methods, swap_methods
from iakd.schedules import FAMILIES
from iakd.units import parse_granularity

__all__ = ["Distribution", "Fixed", "ParamSpec", "SearchSpace", "CONDITIONS", "build_space", "suggest", "to_yaml",
           "trial_overrides", "apply_trial"]

# key -> (controlling key, the controlling values under which the key is used).
CONDITIONS: dict[str, tuple[str, frozenset[Any]]] = {
    **{
        f"schedule.{extra}": ("schedule.family", frozenset(f for f, keys in FAMILIES.items() if extra in keys))
        for extra in sorted({k for keys in FAMILIES.values() for k in keys})
    },
    "method.kd_weight": ("method.name", kd_methods()),  # the methods whose loss has a KD term
    # the levers of swapping-in: only for the methods that swap (kd_on: those with a KD term too)
    **{f"method.{lever}": ("method.name", swap_methods()) for lever in ("mixing", "hybrid_weight")},
    "method.kd_on": ("method.name", kd_methods() & swap_methods()),
}


# ---------------------------------------------------------------------------------------------------------
# Parameter specs


# A searched key is one of Optuna's own distributions (they validate low, high, log and step themselves):
# CategoricalDistribution for a list, FloatDistribution or IntDistribution for a range.
Distribution = CategoricalDistribution | FloatDistribution | IntDistribution


def suggest(trial: optuna.Trial, name: str, spec: Distribution) -> Any:
    """Ask ``trial`` for ``name`` from ``spec`` through the public suggest API."""
    if isinstance(spec, CategoricalDistribution):
        return trial.suggest_categorical(name, list(spec.choices))
    if isinstance(spec, IntDistribution):
        return trial.suggest_int(name, spec.low, spec.high, step=spec.step, log=spec.log)
    return trial.suggest_float(name, spec.low, spec.high, step=spec.step, log=spec.log)


def to_yaml(spec: ParamSpec) -> Any:
    """A spec as the space's YAML writes it: a list, a range mapping, or the fixed value."""
    if isinstance(spec, Fixed):
        return spec.value
    if isinstance(spec, CategoricalDistribution):
        return list(spec.choices)
    out: dict[str, Any] = {"low": spec.low, "high": spec.high}
    if isinstance(spec, IntDistribution):
        out["type"] = "int"
    if spec.log:
        out["log"] = True
    if spec.step is not None and not (isinstance(spec, IntDistribution) and spec.step == 1):
        out["step"] = spec.step
    return out


@dataclass(frozen=True)
class Fixed:
    """A value every trial gets, not searched."""

    value: Any


ParamSpec = CategoricalDistribution | FloatDistribution | IntDistribution | Fixed


# ---------------------------------------------------------------------------------------------------------
# The space


@dataclass(frozen=True)
class SearchSpace:
    """Parsed, validated specs by dotted run-config key (in declaration order)."""

    params: dict[str, ParamSpec]

    def define_by_run(self, trial: optuna.Trial) -> dict[str, Any]:
        """For ``OptunaSearch(space=...)``: suggest the searched values on `trial` and return the fixed ones.

        A conditional key is suggested (or returned, if fixed) only when its condition holds. The suggested
        values (named by their dotted keys) plus the returned constants are the trial's dotted overrides.
        """
        decided: dict[str, Any] = {}  # every value of this trial so far, for the conditions to read
        constants: dict[str, Any] = {}
        # Unconditional keys first: a condition reads its controlling key, which must be decided before.
        for key in sorted(self.params, key=lambda k: k in CONDITIONS):
            if key in CONDITIONS:
                controller, enabling = CONDITIONS[key]
                if decided.get(controller) not in enabling:
                    continue
            spec = self.params[key]
            if isinstance(spec, Fixed):
                decided[key] = constants[key] = spec.value
            else:
                decided[key] = suggest(trial, key, spec)
        return constants

    def to_dict(self) -> dict[str, Any]:
        """The YAML form (``auto`` granularity spelled out), e.g. to log as the sweep's search space."""
        return {key: to_yaml(spec) for key, spec in self.params.items()}


# ---------------------------------------------------------------------------------------------------------
# Building and validating


def _config_key_types() -> dict[str, Any]:
    """Every dotted key a space may name, with its declared type."""
    keys: dict[str, Any] = {}
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            sub = typing.get_type_hints(tp)
            keys.update({f"{f.name}.{g.name}": sub[g.name] for g in dataclasses.fields(tp)})
        else:
            keys[f.name] = tp
    return keys


_KEY_TYPES = _config_key_types()


def _members(tp: Any) -> tuple[Any, ...]:
    return typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _parse_range(key: str, raw: Mapping[str, Any]) -> FloatDistribution | IntDistribution:
    where = f"space.{key}"
    unknown = set(raw) - {"low", "high", "log", "step", "type"}
    if unknown:
        raise ConfigError(f"{where}: unknown range key(s) {sorted(unknown)}; allowed: low, high, log, step, type")
    for bound in ("low", "high"):
        if bound not in raw:
            raise ConfigError(f"{where}: a range needs low and high, got {dict(raw)!r}")
        if not _is_number(raw[bound]):
            raise ConfigError(f"{where}: {bound} {raw[bound]!r} is not a finite number")
    low, high = raw["low"], raw["high"]
    log, step, kind = raw.get("log", False), raw.get("step"), raw.get("type", "float")
    if kind not in ("float", "int"):
        raise ConfigError(f"{where}: type {kind!r} is not 'float' or 'int'")
    if not isinstance(log, bool):
        raise ConfigError(f"{where}: log {log!r} is not true or false")
    if step is not None and not _is_number(step):
        raise ConfigError(f"{where}: step {step!r} is not a number")
    if kind == "int" and any(v is not None and not isinstance(v, int) for v in (low, high, step)):
        raise ConfigError(f"{where}: an int range needs integer low, high and step, got {dict(raw)!r}")
    # A float range on an integer key would hand the trainer 45.3 epochs; say how to fix it instead.
    if kind == "float" and int in _members(_KEY_TYPES[key]) and float not in _members(_KEY_TYPES[key]):
        raise ConfigError(f"{where}: an integer key; write the range as {{low: {low}, high: {high}, type: int}}")
    try:  # Optuna checks the rest (low <= high, low > 0 for log, step > 0, not log and step together)
        if kind == "int":
            return IntDistribution(low, high, log=log, step=1 if step is None else step)
        return FloatDistribution(float(low), float(high), log=log, step=None if step is None else float(step))
    except ValueError as error:
        raise ConfigError(f"{where}: {error}") from None


def _parse(key: str, raw: Any, valid_granularities: Sequence[str | int]) -> ParamSpec:
    where = f"space.{key}"
    if typing.get_origin(_KEY_TYPES[key]) is list:
        # A list in the space means a choice, so a list-valued key (optim.milestones) cannot be spelled here.
        raise ConfigError(f"{where}: a list-valued key cannot be in the space; set it in the run config")
    if key == "method.granularity":
        if raw == "auto":
            return CategoricalDistribution(tuple(valid_granularities))
        if isinstance(raw, Mapping):
            raise ConfigError(f"{where}: {raw!r} is not auto, a list or one granularity")
    if isinstance(raw, (list, tuple)):
        if not raw:
            raise ConfigError(f"{where}: an empty list leaves nothing to choose; give at least one value")
        return CategoricalDistribution(tuple(raw))
    if isinstance(raw, Mapping):
        return _parse_range(key, raw)
    return Fixed(raw)


def _check_value(key: str, value: Any, valid_granularities: Sequence[str | int]) -> Any:
    """Raise ConfigError ``space.<key>: ...`` unless the run config accepts `value` at `key`; return it normalised."""
    try:
        if key == "method.granularity":
            granularity = parse_granularity(value)
            if granularity not in valid_granularities:
                valid = ", ".join(map(repr, valid_granularities))
                raise ConfigError(f"{key}: {value!r} is not valid for this student/teacher pair; valid: {valid}")
            return granularity
        if key.startswith("schedule."):
            # Check the value inside a schedule of a family that uses the key, so the schedule's own rules apply.
            name = key.split(".", 1)[1]
            family = value if name == "family" else next((f for f, ks in FAMILIES.items() if name in ks), "linear")
            schedules.build({"family": family, "p0": 0.5, "t_end": 1.0, name: value}, prefix="schedule")
        else:
            # The defaults plus this one value (and what makes it meaningful): checks type and range.
            context: dict[str, Any] = {"method.name": "ce"} if key in ("student.arch", "teacher.arch") else {}
            if key in CONDITIONS:
                controller, enabling = CONDITIONS[key]
                context[controller] = sorted(enabling)[0]
            from_dict(apply_overrides({}, {**context, key: value}))
    except ConfigError as e:
        raise ConfigError(f"space.{e}") from None
    return value


def _checked(key: str, spec: ParamSpec, valid_granularities: Sequence[str | int]) -> ParamSpec:
    if isinstance(spec, CategoricalDistribution):
        return CategoricalDistribution(tuple(_check_value(key, v, valid_granularities) for v in spec.choices))
    if isinstance(spec, Fixed):
        return Fixed(_check_value(key, spec.value, valid_granularities))
    for bound in (spec.low, spec.high):  # the run config's checks are intervals, so the ends cover the range
        _check_value(key, bound, valid_granularities)
    return spec


def _unknown_key(key: Any) -> ConfigError:
    close = difflib.get_close_matches(str(key), list(_KEY_TYPES), n=1)
    hint = f"did you mean {close[0]!r}?" if close else "keys are dotted run-config keys such as schedule.p0 or optim.lr"
    return ConfigError(f"space.{key}: unknown run-config key; {hint}")


def build_space(spec: Mapping[str, Any], *, valid_granularities: Sequence[str | int]) -> SearchSpace:
    """Parse and validate the YAML ``space:`` mapping; `valid_granularities` is the pair's
    (`units.valid_granularities`)."""
    if not isinstance(spec, Mapping) or not spec:
        raise ConfigError(f"space: expected a non-empty mapping of dotted run-config keys, got {spec!r}")
    params: dict[str, ParamSpec] = {}
    for key, raw in spec.items():
        if key not in _KEY_TYPES:
            raise _unknown_key(key)
        params[key] = _checked(key, _parse(key, raw, valid_granularities), valid_granularities)
    for key, (controller, enabling) in CONDITIONS.items():
        if key not in params:
            continue
        uses = " or ".join(map(repr, sorted(enabling)))
        # The controlling value must be known inside define_by_run, so it has to be part of the space.
        if controller not in params:
            raise ConfigError(f"space.{key}: is used only when {controller} is {uses}; "
                              f"add {controller} to the space (a list or a fixed value)")
        controlling = params[controller]  # categorical or fixed: a range already failed the checks of its values
        possible = set(controlling.choices) if isinstance(controlling, CategoricalDistribution) else set()
        if isinstance(controlling, Fixed):
            possible = {controlling.value}
        if not possible & enabling:
            raise ConfigError(f"space.{key}: never used: {controller} takes {sorted(possible, key=str)}, "
                              f"and {key} applies only when it is {uses}")
    return SearchSpace(params)


# ---------------------------------------------------------------------------------------------------------
# From a Ray trial back to a run config


def trial_overrides(config: Mapping[str, Any], space: SearchSpace | None = None) -> dict[str, Any]:
    """The dotted overrides of one trial, from the config Ray Tune hands the trainable.

    OptunaSearch passes the define-by-run values flat, under the dotted names they were suggested or returned
    with (it only splits names on "/"), merged into the Tuner's ``param_space``. Keys that are not space
    keys (or, with `space`, not keys of that space) are dropped.
    """
    keys = space.params if space is not None else _KEY_TYPES
    return {key: value for key, value in config.items() if key in keys}


def apply_trial(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The base run config (nested, as read from YAML) with a trial's dotted overrides: a plain nested dict.

    Pass the result to `iakd.config.from_dict`. Beyond `apply_overrides`, two things keep it valid:

    - a base without ``schedule`` starts from the default schedule, so overriding ``schedule.family`` alone
      still leaves p0 and t_end;
    - when the trial sets a controlling key (``schedule.family``, ``method.name``), the base's keys that the
      chosen value does not use are dropped: a base ``rate`` under a sampled cosine family would be rejected
      by the schedule validator, and a base ``kd_weight`` under a sampled ``iakd`` would add a KD term anyway.
    """
    start = dict(base)
    if start.get("schedule") is None:
        start["schedule"] = dataclasses.asdict(TrainConfig().schedule)
    merged = apply_overrides(start, overrides)
    for key, (controller, enabling) in CONDITIONS.items():
        if controller in overrides and overrides[controller] not in enabling:
            section, name = key.split(".")
            merged.get(section, {}).pop(name, None)
    return merged
