import pytest

from iakd.config import TrainConfig, apply_overrides, load_config, parse_overrides
from iakd.errors import ConfigError
from iakd.schedules import SwapSchedule


def test_defaults_build_a_valid_config():
    cfg = load_config()
    assert isinstance(cfg, TrainConfig)
    assert (cfg.optim.batch_size, cfg.optim.lr, cfg.optim.weight_decay) == (64, 0.05, 5e-4)
    assert cfg.optim.milestones == [0.625, 0.75, 0.875]


def test_yaml_plus_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("student: {arch: resnet32}\nschedule: {family: cosine, p0: 0.4, t_end: 0.9}\n")
    overrides = ["schedule.p0=0.3", "method.granularity=3", "optim.nesterov=true", "teacher.checkpoint=t.pth",
                 "teacher.arch=resnet110"]
    cfg = load_config(path, overrides)
    assert cfg.student.arch == "resnet32"
    assert cfg.schedule == SwapSchedule("cosine", 0.3, 0.9)  # typed: the family's own keys None, the others default
    assert cfg.method.granularity == 3 and cfg.optim.nesterov is True and cfg.teacher.checkpoint == "t.pth"


PAIR = ["teacher.arch=resnet110", "student.arch=resnet32"]  # 18 and 5 blocks per stage


def test_granularity_strings_become_ints():
    assert load_config(overrides=[*PAIR, "method.granularity='2'"]).method.granularity == 2
    assert load_config(overrides=[*PAIR, "method.granularity=block"]).method.granularity == "block"


@pytest.mark.parametrize("given, canonical", [(1, "stage"), (5, "block"), ("'5'", "block"), (4, 4)])
def test_a_granularity_takes_the_one_name_of_the_partition_it_makes(given, canonical):
    assert load_config(overrides=[*PAIR, f"method.granularity={given}"]).method.granularity == canonical


def test_baselines_keep_the_granularity_they_are_given():
    # ce and kd never cut the networks: the value is kept as written, whatever the pair
    assert load_config(overrides=["method.name=kd", "method.granularity=7"]).method.granularity == 7


@pytest.mark.parametrize("overrides, message", [
    (["method.name=iakd", "method.kd_weight=0.5"],
     "method.kd_weight: 0.5 is not allowed; method.name=iakd has no KD term; use method.name=iakd+kd to add one, "
     "or leave method.kd_weight unset"),
    (["method.name=ce", "method.kd_weight=0.5"],
     "method.kd_weight: 0.5 is not allowed; method.name=ce has no KD term; use method.name=kd to add one, "
     "or leave method.kd_weight unset"),
    (["method.name=iakd+kd", "method.kd_weight=0"],
     "method.kd_weight: 0.0 is not allowed; method.name=iakd+kd has a KD term and needs kd_weight > 0 (or null for "
     "its default); without one, use method.name=iakd (or ce)"),
])
def test_a_kd_weight_that_contradicts_the_method_name_is_refused_naming_both_keys(overrides, message):
    with pytest.raises(ConfigError) as info:
        load_config(overrides=overrides)
    assert str(info.value) == message


def test_impossible_granularity_and_stage_mismatch_fail_at_the_door():
    with pytest.raises(ConfigError, match=r"^method\.granularity: 6 is impossible for resnet110 -> resnet32: stage 0 "
                                          r"has 5 student and 18 teacher blocks"):
        load_config(overrides=[*PAIR, "method.granularity=6"])
    with pytest.raises(ConfigError, match=r"^student\.arch: 'vgg8' has 5 stages and teacher\.arch 'resnet20' 3"):
        load_config(overrides=["student.arch=vgg8"])


@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.lrr=0.1", r"optim\.lrr: unknown key; did you mean 'lr'\?"),
        ("studnet.arch=resnet8", r"studnet: unknown key; did you mean 'student'\?"),
        ("optim.epochs=ten", r"optim\.epochs: 'ten' is not int"),
        ("optim.epochs=0", r"optim\.epochs: 0 is not allowed; must be > 0"),
        ("student.arch=resnet9", r"student\.arch: 'resnet9' is not allowed; known architectures: resnet8"),
        ("method.name=fitnet", r"method\.name: 'fitnet' is not allowed; known: ce, kd, iakd, iakd\+kd$"),
        ("method.granularity=layer", r"^method\.granularity: 'layer' is not one of 'stage', 'block'"),
        ("schedule.p0=1.5", r"schedule\.p0: 1\.5 is outside \[0, 1\]"),
        ("data.val_fraction=1.0", r"data\.val_fraction: 1\.0 is not allowed; must be in \[0, 1\)"),
        ("device=tpu", r"device: 'tpu' is not one of 'auto', 'cpu', 'cuda'"),
        ("optim.milestones=[0.9, 0.5]", r"optim\.milestones: .* must be increasing fractions"),
        ("optim.lr.base=1", r"optim\.lr: \{'base': 1\} is not float"),
    ],
)
def test_bad_values_fail_with_one_line_naming_the_key(override, message):
    with pytest.raises(ConfigError, match=message) as info:
        load_config(overrides=[override])
    assert "\n" not in str(info.value)


def test_malformed_override_and_missing_file_are_named(tmp_path):
    with pytest.raises(ConfigError, match=r"override 'optim\.lr': expected key=value"):
        parse_overrides(["optim.lr"])
    with pytest.raises(ConfigError, match=r"config file .*nope\.yaml not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: [1, 2\n")
    with pytest.raises(ConfigError, match=r"config file .*bad\.yaml: not valid YAML"):
        load_config(bad)


def test_apply_overrides_does_not_touch_its_input():
    base = {"optim": {"lr": 0.1}}
    assert apply_overrides(base, {"optim.lr": 0.2, "seed": 3}) == {"optim": {"lr": 0.2}, "seed": 3}
    assert base == {"optim": {"lr": 0.1}}


def test_exponent_floats_without_a_dot_are_numbers(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("optim: {weight_decay: 5e-4, lr: 1e-1}\n")
    cfg = load_config(path)
    assert (cfg.optim.weight_decay, cfg.optim.lr) == (5e-4, 0.1)


def test_the_schedule_section_is_typed_with_each_familys_own_keys():
    from iakd.config import from_dict, to_dict

    step = from_dict({"schedule": {"family": "step", "p0": 0.4}}).schedule
    assert step == SwapSchedule("step", 0.4, 0.8, interval=0.25)  # its own key at its default, rate not taken
    exponential = from_dict({"schedule": {"family": "exponential", "rate": 2.0}}).schedule
    assert (exponential.rate, exponential.interval) == (2.0, None)
    # what a run logs and a trial rebuilds from: every key, None where the family takes none; it builds again
    assert to_dict(from_dict({}))["schedule"] == {"family": "linear", "p0": 0.5, "t_end": 0.8, "profile": "uniform",
                                                  "rate": None, "interval": None, "t_start": 0.0}
    assert from_dict(to_dict(from_dict({"schedule": {"family": "step"}}))).schedule.interval == 0.25
    with pytest.raises(ConfigError, match=r"^schedule\.rate: not a key of the 'linear' family; allowed: "):
        from_dict({"schedule": {"family": "linear", "rate": 2.0}})
