import pytest

from iakd.config import TrainConfig, apply_overrides, load_config, parse_overrides
from iakd.errors import ConfigError


def test_defaults_build_a_valid_config():
    cfg = load_config()
    assert isinstance(cfg, TrainConfig)
    assert (cfg.optim.batch_size, cfg.optim.lr, cfg.optim.weight_decay) == (64, 0.05, 5e-4)
    assert cfg.optim.milestones == [0.625, 0.75, 0.875]


def test_yaml_plus_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("student: {arch: resnet20}\nschedule: {family: cosine, p0: 0.4, t_end: 0.9}\n")
    cfg = load_config(path, ["schedule.p0=0.3", "method.granularity=3", "optim.nesterov=true", "teacher.checkpoint=t.pth"])
    assert cfg.student.arch == "resnet20"
    assert cfg.schedule == {"family": "cosine", "p0": 0.3, "t_end": 0.9}
    assert cfg.method.granularity == 3 and cfg.optim.nesterov is True and cfg.teacher.checkpoint == "t.pth"


def test_granularity_strings_become_ints():
    assert load_config(overrides=["method.granularity='2'"]).method.granularity == 2
    assert load_config(overrides=["method.granularity=block"]).method.granularity == "block"


@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.lrr=0.1", r"optim\.lrr: unknown key; did you mean 'lr'\?"),
        ("studnet.arch=resnet8", r"studnet: unknown key; did you mean 'student'\?"),
        ("optim.epochs=ten", r"optim\.epochs: 'ten' is not int"),
        ("optim.epochs=0", r"optim\.epochs: 0 is not allowed; must be > 0"),
        ("student.arch=resnet9", r"student\.arch: 'resnet9' is not allowed; known architectures: resnet8"),
        ("method.name=fitnet", r"method\.name: 'fitnet' is not one of 'ce', 'kd', 'iakd', 'iakd\+kd'"),
        ("method.granularity=layer", r"method\.granularity: 'layer' is not one of 'stage', 'block'"),
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
