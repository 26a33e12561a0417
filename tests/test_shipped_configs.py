"""Every config the project ships validates, so a user's first command does not fail on our typo."""

from pathlib import Path

import pytest

from iakd import models
from iakd.config import load_config
from iakd.search.experiment import load_experiment
from iakd.search.space import Fixed

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_run_configs_validate(path):
    cfg = load_config(path)
    assert cfg.student.arch in models.ARCHS and cfg.teacher.arch in models.ARCHS
    if cfg.data.name == "cifar100":
        recipe = (cfg.optim.epochs, cfg.optim.batch_size, cfg.optim.weight_decay, cfg.optim.milestones)
        assert recipe == (240, 64, 5e-4, [0.625, 0.75, 0.875])


@pytest.mark.parametrize("path", sorted((ROOT / "tune" / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_experiment_configs_validate(path, tmp_path):
    overrides = []
    if "cifar100" in path.name:  # the released teacher file is the user's; stand one in
        teacher = tmp_path / "teacher.pth"
        teacher.write_bytes(b"")
        overrides.append(f"run.teacher.checkpoint={teacher}")
    experiment = load_experiment(path, overrides)
    assert experiment.config.metric == "val_acc" and experiment.base.data.val_fraction > 0
    searched = {key for key, spec in experiment.space.params.items() if not isinstance(spec, Fixed)}
    assert {"schedule.family", "schedule.p0", "schedule.t_end", "method.granularity", "method.name"} <= searched
