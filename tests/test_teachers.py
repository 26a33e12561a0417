import pytest
import torch

from iakd import models
from iakd.errors import ConfigError
from iakd.teachers import cache_path, load_teacher, save_teacher


def test_save_and_load_round_trip_keeps_weights_and_metadata(tmp_path):
    model = models.build("resnet14", 10)
    path = save_teacher(tmp_path / "t.pth", model, arch="resnet14", dataset="digits", num_classes=10, accuracy=97.5,
                        config={"seed": 0})
    loaded = load_teacher(path, "resnet14", 10)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)
    meta = torch.load(path, weights_only=True)
    assert (meta["arch"], meta["dataset"], meta["num_classes"], meta["accuracy"]) == ("resnet14", "digits", 10, 97.5)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())


def test_repdistiller_file_loads_as_it_is(tmp_path):
    model = models.build("wrn_40_2", 100)
    folder = tmp_path / "wrn_40_2_vanilla"
    folder.mkdir()
    torch.save({"model": model.state_dict(), "epoch": 240, "accuracy": 75.61}, folder / "ckpt_epoch_240.pth")
    loaded = load_teacher(folder / "ckpt_epoch_240.pth", "wrn_40_2", 100)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(loaded(x), model.eval()(x))


def test_wrong_class_count_and_wrong_architecture_are_named(tmp_path):
    path = tmp_path / "t.pth"
    save_teacher(path, models.build("resnet20", 100), arch="resnet20", dataset="cifar100", num_classes=100,
                 accuracy=None)
    with pytest.raises(ConfigError, match=r"t\.pth: has 100 classes, the dataset has 10"):
        load_teacher(path, "resnet20", 10)
    with pytest.raises(ConfigError, match=r"t\.pth: holds a 'resnet20', but teacher\.arch is 'resnet56'"):
        load_teacher(path, "resnet56", 100)
    torch.save({"model": models.build("resnet20", 100).state_dict()}, tmp_path / "bare.pth")
    with pytest.raises(ConfigError, match=r"bare\.pth: does not fit 'resnet56'"):
        load_teacher(tmp_path / "bare.pth", "resnet56", 100)


def test_truncated_and_foreign_files_fail_cleanly(tmp_path):
    good = save_teacher(tmp_path / "t.pth", models.build("resnet8", 10), arch="resnet8", dataset="digits",
                        num_classes=10, accuracy=None)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[:1000])
    with pytest.raises(ConfigError, match=r"teacher checkpoint .*truncated\.pth: unreadable or corrupt"):
        load_teacher(truncated, "resnet8", 10)
    foreign = tmp_path / "foreign.pth"
    torch.save({"weights": {}}, foreign)
    with pytest.raises(ConfigError, match=r"foreign\.pth: not a teacher checkpoint file \(expected keys: model\)"):
        load_teacher(foreign, "resnet8", 10)
    with pytest.raises(ConfigError, match=r"missing\.pth: file not found"):
        load_teacher(tmp_path / "missing.pth", "resnet8", 10)


def test_cache_key_separates_recipes_and_seeds(tmp_path):
    a = cache_path(tmp_path, dataset="digits", arch="resnet20", recipe={"epochs": 5}, seed=0)
    assert a == cache_path(tmp_path, dataset="digits", arch="resnet20", recipe={"epochs": 5}, seed=0)
    assert a != cache_path(tmp_path, dataset="digits", arch="resnet20", recipe={"epochs": 6}, seed=0)
    assert a != cache_path(tmp_path, dataset="digits", arch="resnet20", recipe={"epochs": 5}, seed=1)
    assert a.name.startswith("digits-resnet20-")


def test_a_teacher_trained_here_records_the_accuracy_a_run_can_use_instead_of_measuring_it(tmp_path):
    from iakd.teachers import recorded_accuracy

    model = models.build("resnet8", 10)
    path = save_teacher(tmp_path / "t.pth", model, arch="resnet8", dataset="digits", num_classes=10, accuracy=97.5,
                        config={"data": {"name": "digits", "image_size": 16}})
    assert recorded_accuracy(path, "digits", 16) == 97.5
    assert recorded_accuracy(path, "digits", 32) is None  # measured at another size: the run measures its own
    assert recorded_accuracy(path, "fashion_mnist", 16) is None
    unknown = save_teacher(tmp_path / "u.pth", model, arch="resnet8", dataset="digits", num_classes=10, accuracy=None)
    assert recorded_accuracy(unknown, "digits", None) is None
    torch.save({"model": model.state_dict()}, tmp_path / "repdistiller.pth")  # a file from elsewhere
    assert recorded_accuracy(tmp_path / "repdistiller.pth", "digits", None) is None


def test_the_sweep_checks_its_teacher_by_the_accuracy_a_run_would_use(tmp_path):
    """check_teacher (the driver, before any trial) and the trials agree: a file trained here on this dataset
    and size is taken at its recorded accuracy; any other file is measured on the test split."""
    from iakd.config import load_config
    from iakd.search.teacher import check_teacher

    base = load_config(overrides=["data.image_size=8", "teacher.arch=resnet8"])
    torch.manual_seed(0)  # one fixed untrained network: it predicts near chance
    untrained = models.build("resnet8", 10)
    config = {"data": {"name": "digits", "image_size": 8}}
    claims_good = save_teacher(tmp_path / "good.pth", untrained, arch="resnet8", dataset="digits", num_classes=10,
                               accuracy=99.0, config=config)
    assert check_teacher(base, str(claims_good)) is None  # recorded: not measured again
    claims_bad = save_teacher(tmp_path / "bad.pth", untrained, arch="resnet8", dataset="digits", num_classes=10,
                              accuracy=11.0, config=config)
    assert "11.0%" in check_teacher(base, str(claims_bad))
    torch.save({"model": untrained.state_dict()}, tmp_path / "foreign.pth")  # no record: measured, near chance
    assert "within 5 points of chance" in check_teacher(base, str(tmp_path / "foreign.pth"))
