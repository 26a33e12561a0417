"""The sweep's search space: parsing, validation, conditional sampling and turning a trial into a run config."""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import optuna
import pytest

from iakd import models, units
from iakd.config import TrainConfig, from_dict
from iakd.errors import ConfigError
from iakd.search.space import SearchSpace, apply_trial, build_space, trial_overrides

optuna.logging.set_verbosity(optuna.logging.WARNING)

SPACE = {
    "schedule.family": ["constant", "linear", "cosine", "exponential", "step"],
    "schedule.p0": {"low": 0.1, "high": 1.0},
    "schedule.t_end": {"low": 0.3, "high": 1.0},
    "schedule.rate": {"low": 1.0, "high": 10.0, "log": True},
    "schedule.interval": {"low": 0.1, "high": 0.5},
    "schedule.profile": ["uniform", "shallow-first", "deep-first"],
    "method.granularity": "auto",
    "method.name": ["iakd", "iakd+kd"],
    "method.kd_weight": {"low": 0.1, "high": 1.0},
    "optim.lr": 0.05,
}

# resnet56 -> resnet20 with keys that only some trials may keep: a fixed exponential rate and a KD weight.
BASE = {
    "teacher": {"arch": "resnet56"},
    "student": {"arch": "resnet20"},
    "method": {"name": "iakd+kd", "granularity": "stage", "kd_weight": 0.5},
    "schedule": {"family": "exponential", "p0": 0.5, "t_end": 0.8, "rate": 3.0},
    "optim": {"epochs": 240, "lr": 0.1},
}


@pytest.fixture(scope="module")
def valid() -> list[str | int]:
    return units.valid_granularities(models.build("resnet20", 10), models.build("resnet56", 10))


@pytest.fixture(scope="module")
def space(valid) -> SearchSpace:
    return build_space(SPACE, valid_granularities=valid)


def draw(space: SearchSpace, n: int, sampler: optuna.samplers.BaseSampler) -> list[tuple[dict, dict]]:
    """n trials of an ask/tell study with random results: (suggested params, returned constants) each."""
    study = optuna.create_study(direction="maximize", sampler=sampler)
    rng = random.Random(0)
    out = []
    for _ in range(n):
        trial = study.ask()
        constants = space.define_by_run(trial)
        out.append((dict(trial.params), constants))
        study.tell(trial, rng.random())
    return out


@pytest.fixture(scope="module")
def tpe_draws(space) -> list[tuple[dict, dict]]:
    """The sampler the sweep uses; on random results it soon favours some branches over others."""
    return draw(space, 300, optuna.samplers.TPESampler(seed=0))


@pytest.fixture(scope="module")
def random_draws(space) -> list[tuple[dict, dict]]:
    """Evenly spread draws, for checks on coverage that must not depend on what TPE exploits."""
    return draw(space, 300, optuna.samplers.RandomSampler(seed=0))


@pytest.mark.parametrize("draws", ["tpe_draws", "random_draws"])
def test_every_draw_builds_a_valid_config_with_conditional_keys_only_under_their_condition(request, draws, valid):
    draws = request.getfixturevalue(draws)
    assert {params["schedule.family"] for params, _ in draws} == set(SPACE["schedule.family"])
    for params, constants in draws:
        cfg: TrainConfig = from_dict(apply_trial(BASE, {**params, **constants}))
        family, method = cfg.schedule.family, cfg.method.name
        assert ("schedule.rate" in params) == (family == "exponential")
        assert ("schedule.interval" in params) == (family == "step")
        assert ("method.kd_weight" in params) == (method == "iakd+kd")
        assert (cfg.schedule.rate is not None) == (family == "exponential")  # the typed config: None elsewhere
        assert (cfg.schedule.interval is not None) == (family == "step")
        expected_kd_weight = params["method.kd_weight"] if method == "iakd+kd" else None  # base's 0.5 dropped
        assert cfg.method.kd_weight == expected_kd_weight
        assert cfg.method.granularity in valid


def test_fixed_values_are_returned_every_trial_and_never_suggested(tpe_draws):
    for params, constants in tpe_draws:
        assert constants == {"optim.lr": 0.05}
        assert "optim.lr" not in params
        assert from_dict(apply_trial(BASE, {**params, **constants})).optim.lr == 0.05


@pytest.mark.parametrize("key", ["schedule.p0", "schedule.t_end", "schedule.rate", "schedule.interval",
                                 "method.kd_weight"])
def test_draws_stay_inside_the_range_and_approach_both_ends(random_draws, key):
    low, high = SPACE[key]["low"], SPACE[key]["high"]
    values = [params[key] for params, _ in random_draws if key in params]
    assert len(values) >= 20
    assert low <= min(values) < low + 0.2 * (high - low)
    assert high - 0.2 * (high - low) < max(values) <= high


def test_int_range_draws_integers_from_low_to_high(valid):
    space = build_space({"optim.epochs": {"low": 2, "high": 8, "type": "int"}}, valid_granularities=valid)
    values = [params["optim.epochs"] for params, _ in draw(space, 100, optuna.samplers.RandomSampler(seed=0))]
    assert all(isinstance(v, int) for v in values)
    assert set(values) == set(range(2, 9))


@pytest.mark.parametrize("draws", ["tpe_draws", "random_draws"])
def test_auto_granularity_yields_exactly_the_valid_set(request, draws, valid):
    assert valid == ["stage", 2, "block"]  # resnet20 has 3 blocks per stage: k = 3 is "block"
    assert {params["method.granularity"] for params, _ in request.getfixturevalue(draws)} == set(valid)


def test_granularity_list_yields_only_that_subset(valid):
    space = build_space({"method.granularity": ["block", 2]}, valid_granularities=valid)
    drawn = {params["method.granularity"] for params, _ in draw(space, 60, optuna.samplers.RandomSampler(seed=0))}
    assert drawn == {"block", 2}


@pytest.mark.parametrize(
    ("key", "spec", "words"),
    [
        ("schedule.po", {"low": 0.1, "high": 1.0}, ["unknown run-config key", "did you mean 'schedule.p0'"]),
        ("optim.lr", {"low": 0.5, "high": 0.1}, ["low <= high", "low=0.5, high=0.1"]),
        ("schedule.p0", {"low": 0.5, "high": 1.5}, ["1.5", "outside [0, 1]"]),
        ("schedule.t_end", {"low": 0.0, "high": 1.0}, ["0.0", "outside (0, 1]"]),
        ("schedule.profile", [], ["empty list"]),
        ("method.granularity", ["stage", 4], ["4", "not valid for this student/teacher pair"]),
        ("schedule.family", ["linear", "sigmoid"], ["'sigmoid'", "unknown"]),
        ("optim.epochs", {"low": 100, "high": 240}, ["type: int"]),
        ("optim.lr", {"low": 0.0, "high": 0.1, "log": True}, ["low > 0", "log=True"]),
        ("optim.lr", {"low": 0.01, "high": 0.1, "log": True, "step": 0.01}, ["step", "not supported when `log`"]),
        ("optim.epochs", {"low": 10, "high": 20, "type": "int", "step": 0}, ["step > 0"]),
        ("optim.milestones", [0.5, 0.75], ["list-valued key"]),
        ("method.name", ["iakd", "distill"], ["'distill'"]),
    ],
)
def test_bad_spec_raises_config_error_naming_the_key(valid, key, spec, words):
    with pytest.raises(ConfigError) as info:
        build_space({"schedule.family": ["linear"], key: spec}, valid_granularities=valid)
    message = str(info.value)
    assert message.startswith(f"space.{key}:")
    for word in words:
        assert word in message


def test_conditional_key_without_its_controlling_key_in_the_space_is_an_error(valid):
    with pytest.raises(ConfigError, match=r"^space\.schedule\.rate: .*add schedule\.family to the space"):
        build_space({"schedule.rate": {"low": 1.0, "high": 10.0}}, valid_granularities=valid)


def test_conditional_key_that_its_controlling_values_never_enable_is_an_error(valid):
    with pytest.raises(ConfigError, match=r"^space\.method\.kd_weight: never used"):
        build_space({"method.name": "iakd", "method.kd_weight": {"low": 0.1, "high": 1.0}}, valid_granularities=valid)


def test_fixed_conditional_value_is_returned_only_under_its_condition(valid):
    space = build_space({"schedule.family": ["linear", "exponential"], "schedule.rate": 2.0}, valid_granularities=valid)
    for params, constants in draw(space, 40, optuna.samplers.RandomSampler(seed=0)):
        assert params.keys() == {"schedule.family"}
        assert constants == ({"schedule.rate": 2.0} if params["schedule.family"] == "exponential" else {})


def test_same_sampler_seed_gives_the_same_sequence_of_configs(space):
    first = draw(space, 40, optuna.samplers.TPESampler(seed=0))
    second = draw(space, 40, optuna.samplers.TPESampler(seed=0))
    assert first == second
    assert draw(space, 40, optuna.samplers.TPESampler(seed=1)) != first


def test_apply_trial_drops_base_keys_the_sampled_choice_does_not_use():
    merged = apply_trial(BASE, {"schedule.family": "cosine", "method.name": "iakd"})
    assert merged["schedule"] == {"family": "cosine", "p0": 0.5, "t_end": 0.8}
    assert "kd_weight" not in merged["method"]
    kept = apply_trial(BASE, {"schedule.family": "exponential", "schedule.p0": 0.9})
    assert kept["schedule"] == {"family": "exponential", "p0": 0.9, "t_end": 0.8, "rate": 3.0}
    assert BASE["schedule"]["rate"] == 3.0  # the base is not modified


def test_apply_trial_on_a_base_without_schedule_starts_from_the_default_schedule():
    cfg = from_dict(apply_trial({}, {"schedule.family": "step", "schedule.interval": 0.2}))
    assert cfg.schedule == dataclasses.replace(TrainConfig().schedule, family="step", interval=0.2)


def test_to_dict_spells_out_auto_and_rebuilds_the_same_space(space, valid):
    spec = space.to_dict()
    assert spec["method.granularity"] == valid
    assert spec["schedule.rate"] == {"low": 1.0, "high": 10.0, "log": True}
    assert spec["optim.lr"] == 0.05
    assert build_space(spec, valid_granularities=valid) == space


def test_trial_overrides_keeps_only_run_config_keys(space):
    config: dict[str, Any] = {"schedule.p0": 0.3, "optim.lr": 0.05, "base_config": "x.yaml", "seed": 1}
    assert trial_overrides(config) == {"schedule.p0": 0.3, "optim.lr": 0.05, "seed": 1}
    assert trial_overrides(config, space) == {"schedule.p0": 0.3, "optim.lr": 0.05}


def test_optuna_search_suggests_flat_dotted_keys_that_build_a_valid_config(space, valid):
    optuna_search = pytest.importorskip("ray.tune.search.optuna")
    searcher = optuna_search.OptunaSearch(space=space.define_by_run, metric="val_acc", mode="max", seed=0)
    for i in range(5):
        config = searcher.suggest(f"t{i}")
        assert all("." in key for key in config)  # flat, not nested under "schedule" / "method"
        overrides = trial_overrides(config, space)
        assert overrides == config and overrides["optim.lr"] == 0.05
        assert from_dict(apply_trial(BASE, overrides)).method.granularity in valid
        searcher.on_trial_complete(f"t{i}", {"val_acc": 0.5})
