import math

import pytest

from iakd import schedules
from iakd.errors import ConfigError

GRID = [i / 200 for i in range(201)]
SPECS = [
    {"family": "constant", "p0": 0.5, "t_end": 0.8},
    {"family": "linear", "p0": 0.7, "t_end": 0.6},
    {"family": "cosine", "p0": 1.0, "t_end": 1.0},
    {"family": "exponential", "p0": 0.9, "t_end": 0.5, "rate": 3.0},
    {"family": "step", "p0": 0.8, "t_end": 0.9, "interval": 0.2},
]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s["family"])
def test_starts_at_p0_and_is_zero_from_t_end(spec):
    p = schedules.build(spec)
    assert p(0.0) == pytest.approx(spec["p0"])
    assert p(spec["t_end"]) == 0.0
    assert all(p(t) == 0.0 for t in GRID if t >= spec["t_end"])


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s["family"])
def test_values_stay_in_unit_interval_and_never_increase(spec):
    p = schedules.build(spec)
    values = [p(t) for t in GRID]
    assert all(0.0 <= v <= 1.0 for v in values)
    assert all(b <= a + 1e-12 for a, b in zip(values, values[1:]))


def test_family_shapes_at_midpoint():
    half = {"p0": 0.8, "t_end": 1.0}
    assert schedules.build({"family": "constant", **half})(0.5) == pytest.approx(0.8)
    assert schedules.build({"family": "linear", **half})(0.5) == pytest.approx(0.4)
    assert schedules.build({"family": "cosine", **half})(0.5) == pytest.approx(0.4)
    expo = schedules.build({"family": "exponential", **half, "rate": 2.0})(0.5)
    assert expo == pytest.approx(0.8 * (math.exp(-1) - math.exp(-2)) / (1 - math.exp(-2)))
    step = schedules.build({"family": "step", **half, "interval": 0.25})
    assert [step(t) for t in (0.1, 0.3, 0.6, 0.8)] == pytest.approx([0.8, 0.4, 0.2, 0.1])


def test_theseus_linear_curriculum_is_the_linear_family():
    b, k = 0.7, 0.5  # keep probability min(1, b + k t)
    p = schedules.build({"family": "linear", "p0": 1 - b, "t_end": (1 - b) / k})
    for t in GRID:
        assert p(t) == pytest.approx(1 - min(1.0, b + k * t), abs=1e-12)


def test_depth_profiles_scale_per_unit():
    base = {"family": "constant", "p0": 0.6, "t_end": 1.0}
    assert schedules.build(base).unit_probs(0.2, 3) == pytest.approx([0.6, 0.6, 0.6])
    assert schedules.build({**base, "profile": "shallow-first"}).unit_probs(0.2, 3) == pytest.approx([0.6, 0.4, 0.2])
    assert schedules.build({**base, "profile": "deep-first"}).unit_probs(0.2, 3) == pytest.approx([0.2, 0.4, 0.6])


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"family": "sawtooth", "p0": 0.5, "t_end": 0.5}, r"schedule\.family: 'sawtooth' is unknown; known: constant"),
        ({"family": "linear", "p0": 1.5, "t_end": 0.5}, r"schedule\.p0: 1\.5 is outside \[0, 1\]"),
        ({"family": "linear", "p0": -0.1, "t_end": 0.5}, r"schedule\.p0: -0\.1 is outside \[0, 1\]"),
        ({"family": "linear", "p0": 0.5, "t_end": 0.0}, r"schedule\.t_end: 0\.0 is outside \(0, 1\]"),
        ({"family": "linear", "p0": 0.5, "t_end": 1.2}, r"schedule\.t_end: 1\.2 is outside \(0, 1\]"),
        ({"family": "linear", "t_end": 0.5}, r"schedule\.p0: missing"),
        ({"p0": 0.5, "t_end": 0.5}, r"schedule\.family: missing"),
        ({"family": "linear", "p0": 0.5, "t_end": 0.5, "rate": 2}, r"schedule\.rate: not a key of the 'linear' family"),
        ({"family": "linear", "p0": 0.5, "t_end": 0.5, "po": 2}, r"schedule\.po: not a key"),
        ({"family": "linear", "p0": "high", "t_end": 0.5}, r"schedule\.p0: 'high' is not a finite number"),
        ({"family": "exponential", "p0": 0.5, "t_end": 0.5, "rate": 0}, r"schedule\.rate: 0\.0 must be > 0"),
        ({"family": "step", "p0": 0.5, "t_end": 0.5, "interval": 2}, r"schedule\.interval: 2\.0 is outside \(0, 1\]"),
        ({"family": "linear", "p0": 0.5, "t_end": 0.5, "profile": "middle"}, r"schedule\.profile: 'middle' is unknown"),
    ],
)
def test_bad_specs_name_the_key(spec, message):
    with pytest.raises(ConfigError, match=message):
        schedules.build(spec)
