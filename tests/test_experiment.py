"""The experiment config's command-line overrides, in particular those that address the search space."""

from pathlib import Path

import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution

from iakd.errors import ConfigError
from iakd.search.experiment import load_experiment
from iakd.search.space import Fixed

CONFIG = Path(__file__).resolve().parents[1] / "tune" / "configs" / "digits.yaml"


def test_space_overrides_replace_whole_entries_under_their_dotted_keys():
    experiment = load_experiment(CONFIG, [
        "space.schedule.p0={low: 0.2, high: 0.6}",
        "space.schedule.profile=uniform",
        "space.schedule.family=[linear, exponential]",
        "space.schedule.interval=null",  # step's extra: left in, the space would rightly refuse it as never used
        "num_samples=3",
    ])
    params = experiment.space.params
    assert params["schedule.p0"] == FloatDistribution(0.2, 0.6)
    assert params["schedule.profile"] == Fixed("uniform")
    assert params["schedule.family"] == CategoricalDistribution(("linear", "exponential"))
    assert experiment.config.num_samples == 3
    assert "schedule" not in experiment.config.space  # no nested section was made beside the flat keys


def test_a_space_override_can_add_a_key_and_null_takes_one_out():
    experiment = load_experiment(CONFIG, ["space.optim.lr={low: 0.01, high: 0.1, log: true}",
                                          "space.schedule.interval=null"])
    assert experiment.space.params["optim.lr"] == FloatDistribution(0.01, 0.1, log=True)
    assert "schedule.interval" not in experiment.space.params
    assert "schedule.rate" in experiment.space.params


@pytest.mark.parametrize(("override", "message"), [
    ("space.schedule.p0=1.5", "space.schedule.p0"),
    ("space.schedule.p00=0.3", "did you mean 'schedule.p0'"),
    ("space.method.granularity=7", "space.method.granularity: 7 is not valid"),
])
def test_a_bad_space_override_names_its_key(override, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_experiment(CONFIG, [override])
