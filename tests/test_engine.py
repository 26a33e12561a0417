import json
import math
import subprocess
import sys

import pytest
import torch

from iakd import models
from iakd.config import load_config
from iakd.data import load_dataset
from iakd.engine import build_method, build_student, train
from iakd.errors import ConfigError
from iakd.evaluation import recompute_bn_statistics
from iakd.judging import best_judged_epoch, judged_epochs
from iakd.resume import compute_changes
from iakd.teacher_cache import prepare_teacher, teacher_warning
from iakd.teachers import save_teacher

# 8x8 digits keep every run here to a few seconds on two cores.
FAST = ["data.image_size=8", "optim.batch_size=32", "optim.lr=0.1", "optim.lr_schedule=cosine"]


def quiet(_):
    pass


@pytest.fixture(scope="module")
def teacher_cache(tmp_path_factory):
    cache = tmp_path_factory.mktemp("teachers")
    cfg = load_config(overrides=FAST + ["teacher.arch=resnet14", "teacher.epochs=6", f"teacher.cache_dir={cache}"])
    prepare_teacher(cfg, log=quiet)
    return cache


def student_config(tmp_path, teacher_cache, *extra):
    return load_config(overrides=FAST + ["teacher.arch=resnet14", "teacher.epochs=6",
                                         f"teacher.cache_dir={teacher_cache}",
                                         "student.arch=resnet8", "optim.epochs=5", f"out_dir={tmp_path}", *extra])


def test_teacher_is_trained_once_and_reused(teacher_cache, tmp_path):
    files = list(teacher_cache.glob("*.pth"))
    assert len(files) == 1
    before = files[0].stat().st_mtime_ns
    messages = []
    prepare_teacher(student_config(tmp_path, teacher_cache), log=messages.append)
    assert files[0].stat().st_mtime_ns == before and messages == [f"teacher resnet14: reusing {files[0]}"]
    meta = torch.load(files[0], weights_only=True)
    assert meta["arch"] == "resnet14" and meta["num_classes"] == 10 and meta["accuracy"] > 80


@pytest.mark.parametrize("method", ["ce", "kd", "iakd", "iakd+kd"])
def test_short_digits_run_of_each_method_is_well_above_chance(method, tmp_path, teacher_cache):
    result = train(student_config(tmp_path, teacher_cache, f"method.name={method}", "schedule.p0=0.3"), log=quiet)
    assert result["status"] == "finished" and result["epochs"] == 5
    assert result["last_val_acc"] > 50 and result["last_test_acc"] > 50  # chance is 10 %
    if method != "ce":
        assert result["teacher_test_acc"] > 80


def test_epoch_metrics_hold_every_documented_key(tmp_path, teacher_cache):
    seen = []
    cfg = student_config(tmp_path, teacher_cache, "optim.epochs=2", "method.name=iakd+kd",
                         "schedule={family: constant, p0: 1.0, t_end: 1.0}")
    train(cfg, [lambda m, c: seen.append((m, c))], log=quiet)
    metrics, checkpoint = seen[-1]
    assert set(metrics) == {"epoch", "train_loss", "loss_ce", "loss_kd", "train_acc", "val_acc", "test_acc", "lr",
                            "swap_prob", "swap_rate", "epoch_seconds", "images_per_second", "images_seen",
                            "train_seconds", "val_acc_running_bn", "rms_ratio_u0", "rms_ratio_u1", "rms_ratio_u2",
                            "handed_over"}
    assert [m["handed_over"] for m, _ in seen] == [0.0, 0.0]  # p = 1 to the end: never handed over
    n = len(load_dataset("digits", image_size=8).train)
    assert [m["images_seen"] for m, _ in seen] == [n, 2 * n]
    assert seen[1][0]["train_seconds"] == pytest.approx(seen[0][0]["epoch_seconds"] + metrics["epoch_seconds"])
    assert [m["epoch"] for m, _ in seen] == [1, 2]
    assert metrics["swap_prob"] == 1.0 and metrics["swap_rate"] == 1.0  # p = 1: every unit swapped every step
    assert metrics["train_loss"] == pytest.approx(metrics["loss_ce"] + metrics["loss_kd"], rel=1e-6)
    assert checkpoint == tmp_path / "checkpoint.pt" and checkpoint.is_file()
    assert json.loads((tmp_path / "metrics.json").read_text())[-1]["epoch"] == 2
    assert (tmp_path / "student.pt").is_file() and (tmp_path / "config.yaml").is_file()


def test_swap_rate_follows_the_schedule(tmp_path, teacher_cache):
    cfg = student_config(tmp_path, teacher_cache, "optim.epochs=4", "schedule={family: linear, p0: 0.8, t_end: 0.5}")
    result = train(cfg, log=quiet)
    rates = [h["swap_rate"] for h in result["history"]]
    probs = [h["swap_prob"] for h in result["history"]]
    assert probs[0] == pytest.approx(0.6, abs=0.05) and probs[2] == probs[3] == 0.0
    # t_end = 0.5 of 4 epochs: epochs 3 and 4 begin with the schedule ended
    assert [h["handed_over"] for h in result["history"]] == [0.0, 0.0, 1.0, 1.0]
    assert rates[0] > rates[1] > 0 and rates[2] == rates[3] == 0.0


# Metrics that measure the machine, not the run: they differ between otherwise identical runs.
TIMING = ("epoch_seconds", "images_per_second", "train_seconds")


def _without_timing(history):
    return [{k: v for k, v in h.items() if k not in TIMING} for h in history]


@pytest.mark.parametrize("method", ["iakd+kd", "kd"])
def test_resume_from_epoch_k_equals_an_uninterrupted_run(method, tmp_path, teacher_cache):
    straight_cfg = student_config(tmp_path / "straight", teacher_cache, "optim.epochs=4", f"method.name={method}")
    straight = train(straight_cfg, log=quiet)
    first = student_config(tmp_path / "split", teacher_cache, "optim.epochs=4", f"method.name={method}")
    train(first, [lambda m, c: m["epoch"] == 2], log=quiet)
    resumed = train(first, resume_from=tmp_path / "split" / "checkpoint.pt", log=quiet)
    assert _without_timing(resumed["history"]) == _without_timing(straight["history"])
    a = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "split" / "checkpoint.pt", weights_only=True)
    assert a["trainable"].keys() == b["trainable"].keys()
    for key in a["trainable"]:
        assert torch.equal(a["trainable"][key], b["trainable"][key]), key
    assert b["step"] == a["step"]


def _initial_student(name, seed, teacher):
    cfg = load_config(overrides=[f"method.name={name}", "teacher.arch=resnet14", "student.arch=resnet8",
                                 f"seed={seed}"])
    torch.manual_seed(len(name))  # whatever ran before (a teacher built, trained or loaded) must not matter
    student = build_student(cfg.student.arch, 10, cfg.seed)
    return build_method(cfg, student, teacher if name != "ce" else None, 8).student.state_dict()


def test_the_initial_student_is_a_function_of_the_seed_alone_whatever_the_method():
    teacher = models.build("resnet14", 10)
    states = {name: _initial_student(name, 3, teacher) for name in ("ce", "kd", "iakd", "iakd+kd")}
    for name, state in states.items():
        assert all(torch.equal(state[k], states["ce"][k]) for k in state), name
    other_seed = _initial_student("ce", 4, teacher)
    assert not torch.equal(other_seed["conv1.weight"], states["ce"]["conv1.weight"])


def test_connectors_are_a_function_of_the_seed_alone():
    def connectors(name):
        cfg = load_config(overrides=[f"method.name={name}", "teacher.arch=wrn_16_2", "student.arch=wrn_16_1"])
        torch.manual_seed(len(name))
        method = build_method(cfg, build_student("wrn_16_1", 10, 0), models.build("wrn_16_2", 10), 32)
        return {k: v for k, v in method.trainable_state_dict().items() if k.startswith("hybrid.to_")}

    plain, with_kd = connectors("iakd"), connectors("iakd+kd")
    assert plain and plain.keys() == with_kd.keys()
    assert all(torch.equal(plain[k], with_kd[k]) for k in plain)


def test_a_run_that_trains_its_teacher_first_equals_one_that_reads_it_from_the_cache(tmp_path):
    def run(out):
        cfg = load_config(overrides=FAST + ["teacher.arch=resnet8", "teacher.epochs=1",
                                            f"teacher.cache_dir={tmp_path}/t", "student.arch=resnet8",
                                            "optim.epochs=2", "method.name=iakd", "schedule.p0=0.5",
                                            f"out_dir={tmp_path}/{out}"])
        return train(cfg, log=quiet)["history"]

    first = run("first")  # trains the teacher, then the student
    assert len(list((tmp_path / "t").glob("*.pth"))) == 1
    assert _without_timing(run("second")) == _without_timing(first)  # reads the cached teacher


def test_a_teacher_near_chance_is_warned_about_before_training(tmp_path):
    assert teacher_warning(12.0, 10) is not None and teacher_warning(16.0, 10) is None
    assert teacher_warning(5.9, 100) is not None and teacher_warning(6.1, 100) is None
    untrained = save_teacher(tmp_path / "untrained.pth", models.build("resnet8", 10), arch="resnet8", dataset="digits",
                             num_classes=10, accuracy=None)
    cfg = load_config(overrides=FAST + ["teacher.arch=resnet8", f"teacher.checkpoint={untrained}", "method.name=kd",
                                        "optim.epochs=1", f"out_dir={tmp_path}/out"])
    lines = []
    result = train(cfg, [lambda m, c: lines.append("epoch")], log=lines.append)
    assert result["teacher_test_acc"] < 15 and result["teacher_warning"] is not None
    warning = next(i for i, line in enumerate(lines) if line.startswith("warning: the teacher's test accuracy"))
    assert warning < lines.index("epoch") and "of chance (10.0%)" in lines[warning]


def test_callback_stop_ends_the_run_with_stopped_status(tmp_path, teacher_cache):
    result = train(student_config(tmp_path, teacher_cache, "method.name=ce"), [lambda m, c: m["epoch"] >= 2], log=quiet)
    assert result["status"] == "stopped" and result["epochs"] == 2


def test_nan_loss_ends_with_diverged_at_epoch(tmp_path, teacher_cache):
    result = train(student_config(tmp_path, teacher_cache, "method.name=ce", "optim.lr=1e30"), log=quiet)
    assert result["status"] == "diverged"
    assert result["message"].startswith("diverged at epoch 1")
    assert math.isnan(result["last_val_acc"])


def test_corrupt_or_foreign_checkpoint_fails_naming_the_file(tmp_path, teacher_cache):
    bad = tmp_path / "checkpoint.pt"
    bad.write_bytes(b"not a checkpoint")
    cfg = student_config(tmp_path / "out", teacher_cache, "method.name=ce")
    with pytest.raises(ConfigError, match=r"checkpoint .*checkpoint\.pt: unreadable or corrupt"):
        train(cfg, resume_from=bad, log=quiet)
    train(cfg, [lambda m, c: True], log=quiet)
    other = student_config(tmp_path / "other", teacher_cache, "method.name=ce", "student.arch=resnet14")
    resumed_elsewhere = r"^--resume: student\.arch is 'resnet14' here but 'resnet8' in .*checkpoint\.pt"
    with pytest.raises(ConfigError, match=resumed_elsewhere):
        train(other, resume_from=tmp_path / "out" / "checkpoint.pt", log=quiet)


def test_missing_teacher_checkpoint_is_named(tmp_path):
    cfg = load_config(overrides=FAST + [f"teacher.checkpoint={tmp_path}/nope.pth", "method.name=kd",
                                        f"out_dir={tmp_path}"])
    with pytest.raises(ConfigError, match=r"teacher\.checkpoint: .*nope\.pth not found"):
        train(cfg, log=quiet)


def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "iakd.train", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def test_command_line_prints_progress_and_writes_outputs(tmp_path, teacher_cache):
    config = tmp_path / "run.yaml"
    config.write_text(f"teacher: {{arch: resnet14, epochs: 6, cache_dir: {teacher_cache}}}\nmethod: {{name: iakd}}\n")
    proc = _cli("--config", str(config), "--out", str(tmp_path / "out"), *FAST, "optim.epochs=2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "epoch   1/2" in proc.stdout and "epoch   2/2" in proc.stdout and "finished" in proc.stdout
    assert len(json.loads((tmp_path / "out" / "metrics.json").read_text())) == 2


def test_command_line_bad_key_exits_2_with_one_line(tmp_path):
    proc = _cli("--config", "nope.yaml", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip() == "error: config file nope.yaml not found"
    config = tmp_path / "run.yaml"
    config.write_text("optim: {lrr: 0.1}\n")
    proc = _cli("--config", str(config), cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip() == "error: optim.lrr: unknown key; did you mean 'lr'?"
    assert not (tmp_path / "runs").exists()  # nothing was written


def test_an_interrupted_teacher_training_continues_from_its_last_epoch(tmp_path):
    def config(cache):
        return load_config(overrides=FAST + ["teacher.arch=resnet8", "teacher.epochs=3", f"teacher.cache_dir={cache}",
                                             "method.name=kd"])

    straight = prepare_teacher(config(tmp_path / "a"), log=quiet)

    def killed_in_epoch_2(line):
        if line.startswith("epoch   2/3"):
            raise KeyboardInterrupt  # the driver dies: epoch 1's checkpoint is on disk
    with pytest.raises(KeyboardInterrupt):
        prepare_teacher(config(tmp_path / "b"), log=killed_in_epoch_2)
    lines = []
    continued = prepare_teacher(config(tmp_path / "b"), log=lines.append)
    assert lines[0].startswith("teacher resnet8: continuing 3 epochs") and any("resumed from" in x for x in lines)
    assert sum(x.startswith("epoch ") for x in lines) == 2  # epochs 2 and 3 only
    a, b = torch.load(straight, weights_only=True), torch.load(continued, weights_only=True)
    assert a["accuracy"] == b["accuracy"]
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_a_smaller_student_training_set_keeps_the_teachers_data_and_cache_entry(tmp_path):
    from iakd.teacher_cache import _teacher_config, teacher_file

    full = load_config(overrides=[f"teacher.cache_dir={tmp_path}", "teacher.batch_size=128"])
    small = load_config(overrides=[f"teacher.cache_dir={tmp_path}", "teacher.batch_size=128", "data.train_size=100"])
    assert teacher_file(small) == teacher_file(full)  # one teacher, trained on the whole training split
    assert _teacher_config(small).data.train_size is None
    assert _teacher_config(small).optim.batch_size == 128 and small.optim.batch_size == 64


def test_a_run_is_judged_after_its_schedule_hands_over():
    history = [{"epoch": 1, "swap_prob": 0.4, "val_acc": 90.0}, {"epoch": 2, "swap_prob": 0.1, "val_acc": 95.0},
               {"epoch": 3, "swap_prob": 0.0, "val_acc": 60.0}, {"epoch": 4, "swap_prob": 0.0, "val_acc": 70.0}]
    assert [h["epoch"] for h in judged_epochs(history)] == [3, 4]
    never = [{"epoch": 1, "swap_prob": 0.5, "val_acc": 90.0}, {"epoch": 2, "swap_prob": 0.5, "val_acc": 20.0}]
    assert judged_epochs(never) == never[-1:]  # a schedule that never reaches 0 is judged at its end
    # best_val_acc: the best judged epoch (70 at epoch 4, not the 95 of epoch 2 inside hybrids), NaN skipped
    assert best_judged_epoch(history)["epoch"] == 4
    assert best_judged_epoch(history[:3] + [{"epoch": 4, "swap_prob": 0.0, "val_acc": float("nan")}])["epoch"] == 3
    assert best_judged_epoch(never)["epoch"] == 2 and best_judged_epoch([]) is None
    # Epochs that were not evaluated (evaluation.every > 1) are never judged, nor the last one when it was not
    sparse = [{"epoch": 1, "swap_prob": 0.0}, {"epoch": 2, "swap_prob": 0.0, "val_acc": 80.0},
              {"epoch": 3, "swap_prob": 0.0}]
    assert judged_epochs(sparse) == [sparse[1]] and best_judged_epoch(sparse)["epoch"] == 2


def test_best_val_acc_is_taken_after_the_handover(tmp_path, teacher_cache):
    cfg = student_config(tmp_path, teacher_cache, "optim.epochs=4", "schedule={family: constant, p0: 0.5, t_end: 0.5}")
    result = train(cfg, log=quiet)
    after = [h for h in result["history"] if h["swap_prob"] == 0.0]
    assert [h["epoch"] for h in after] == [3, 4]
    assert result["best_val_acc"] == max(h["val_acc"] for h in after)
    assert result["best_epoch"] in (3, 4)


def test_recomputed_statistics_are_the_pure_students_own_on_the_training_images():
    dataset = load_dataset("digits", image_size=8)
    student = models.build("resnet8", 10)
    recompute_bn_statistics(student, dataset.train, max_images=100)
    images = torch.cat([x for x, _ in dataset.train.batches(100, shuffle=False, augment=False)])[:100]
    with torch.no_grad():
        stem_out = student.conv1(images)
    # update_bn on one batch of 100: the first BatchNorm's mean is the batch mean of what the stem conv gives
    assert torch.allclose(student.bn1.running_mean, stem_out.mean(dim=(0, 2, 3)), atol=1e-6, rtol=1e-5)
    assert torch.allclose(student.bn1.running_var, stem_out.var(dim=(0, 2, 3)), atol=1e-6, rtol=1e-5)


def test_the_pure_student_is_evaluated_with_recomputed_statistics_and_its_running_ones_are_reported(
        tmp_path, teacher_cache):
    cfg = student_config(tmp_path, teacher_cache, "optim.epochs=2", "method.teacher_bn=batch",
                         "schedule={family: constant, p0: 1.0, t_end: 1.0}")
    recomputed = train(cfg, log=quiet)["history"]
    running = train(student_config(tmp_path / "running", teacher_cache, "optim.epochs=2", "method.teacher_bn=batch",
                                   "schedule={family: constant, p0: 1.0, t_end: 1.0}",
                                   "evaluation.student_bn=running"), log=quiet)["history"]
    # The student trained only inside all-teacher hybrids: its running statistics saw teacher features, so
    # with them the pure student is near chance, and recomputing them is what makes it measurable at all.
    assert running[0]["val_acc"] == running[0]["val_acc_running_bn"] == recomputed[0]["val_acc_running_bn"]
    assert recomputed[-1]["val_acc"] != recomputed[-1]["val_acc_running_bn"]
    assert running[-1]["train_loss"] == recomputed[-1]["train_loss"]  # evaluation does not change training


def test_a_resume_with_other_precision_says_so(tmp_path, teacher_cache):
    first = student_config(tmp_path, teacher_cache, "optim.epochs=2", "method.name=ce")
    train(first, [lambda m, c: m["epoch"] == 1], log=quiet)
    lines = []
    again = student_config(tmp_path, teacher_cache, "optim.epochs=2", "method.name=ce", "compute.channels_last=true")
    train(again, resume_from=tmp_path / "checkpoint.pt", log=lines.append)
    assert "resumed with compute.channels_last=True (the checkpoint's epochs ran with False): rounding changes here" \
        in lines
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["config"]
    assert compute_changes(saved, first) == {"compute.channels_last": (True, False)}
    assert compute_changes(saved, again) == {}


def test_ctrl_c_prints_one_line_saying_where_the_checkpoint_is_and_exits_130(tmp_path, teacher_cache):
    import signal
    import time

    config = tmp_path / "my runs" / "run.yaml"  # a space: the printed command quotes it
    config.parent.mkdir()
    config.write_text(f"teacher: {{arch: resnet14, epochs: 6, cache_dir: {teacher_cache}}}\nmethod: {{name: ce}}\n")
    out = tmp_path / "my runs" / "out"
    proc = subprocess.Popen([sys.executable, "-m", "iakd.train", "--config", str(config), "--out", str(out), *FAST,
                             "optim.epochs=500"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 300
    while not (out / "checkpoint.pt").is_file() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.strip().splitlines() == [
        f"interrupted: the last checkpoint is {out / 'checkpoint.pt'}; continue with: python -m iakd.train --config "
        f"'{config}' --out '{out}' --resume {' '.join(FAST)} optim.epochs=500"]
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] >= 1  # and it resumes from there


def test_ctrl_c_while_the_teacher_trains_says_the_same_command_continues_it(tmp_path):
    """Before the run's first checkpoint there is no run to resume, but the teacher being trained has one: the
    line says so and gives the command that starts the run again (it continues the teacher)."""
    import signal

    config = tmp_path / "run.yaml"
    config.write_text(f"teacher: {{arch: resnet14, epochs: 200, cache_dir: {tmp_path / 'teachers'}}}\n")
    args = ["--config", str(config), "--out", str(tmp_path / "out"), *FAST]
    proc = subprocess.Popen([sys.executable, "-m", "iakd.train", *args], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.startswith("epoch   2/200"):
            break
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.strip().splitlines() == [
        "interrupted before the run's first checkpoint (a teacher it was training continues from its last epoch): "
        f"start it again with: python -m iakd.train {' '.join(args)}"]
    (checkpoint,) = (tmp_path / "teachers").glob("*-run/checkpoint.pt")
    assert torch.load(checkpoint, weights_only=True)["epoch"] >= 1  # epoch 2 may have been cut short
    assert not (tmp_path / "out" / "checkpoint.pt").exists()


def test_evaluation_every_k_epochs_changes_no_weight_and_scores_only_evaluated_epochs(tmp_path, teacher_cache):
    """evaluation.every=2 over 5 epochs evaluates after epochs 2, 4 and 5 (the last always); training is the same
    computation (evaluating changes no weight and draws from no stream), so the scores it does take equal those
    of a run evaluated after every epoch."""
    extra = ("method.name=iakd", "schedule={family: linear, p0: 0.5, t_end: 0.4}")
    every = train(student_config(tmp_path / "every", teacher_cache, *extra), log=quiet)
    sparse = train(student_config(tmp_path / "sparse", teacher_cache, *extra, "evaluation.every=2"), log=quiet)
    assert [h["epoch"] for h in sparse["history"] if "val_acc" in h] == [2, 4, 5]
    assert all("test_acc" not in h and "rms_ratio_u0" not in h for h in sparse["history"] if h["epoch"] in (1, 3))
    for dense, thin in zip(every["history"], sparse["history"]):
        assert thin["train_loss"] == dense["train_loss"]  # bit for bit: the same steps
        if "val_acc" in thin:
            assert (thin["val_acc"], thin["test_acc"]) == (dense["val_acc"], dense["test_acc"])
    assert sparse["last_test_acc"] == every["last_test_acc"]
    # judged on the evaluated epochs after the handover (p = 0 from epoch 3 on): 4 and 5, not 3
    assert sparse["best_val_acc"] == max(h["val_acc"] for h in sparse["history"] if h["epoch"] in (4, 5))
    for name in ("every", "sparse"):
        assert torch.equal(torch.load(tmp_path / name / "student.pt", weights_only=True)["model"]["fc.weight"],
                           torch.load(tmp_path / "every" / "student.pt", weights_only=True)["model"]["fc.weight"])


def test_a_baseline_skips_the_running_statistics_pass_a_swapping_student_keeps(tmp_path, teacher_cache):
    """Only a swapping student's running BatchNorm statistics describe something else than itself (its hybrids):
    ce and kd are evaluated with their recomputed statistics alone."""
    seen = {}
    for method in ("ce", "iakd"):
        train(student_config(tmp_path / method, teacher_cache, f"method.name={method}", "optim.epochs=1"),
              [lambda m, c, method=method: seen.setdefault(method, m)], log=quiet)
    assert "val_acc_running_bn" not in seen["ce"] and "val_acc_running_bn" in seen["iakd"]
