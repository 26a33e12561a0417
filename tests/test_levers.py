"""The levers of swapping-in (issue 26, docs/iakd-levers.md): each exact where its definition says so, refused at
the door where it cannot apply, and met by the search's baselines from the same initialisation."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from iakd import methods, models, schedules
from iakd.analysis.results import Confirmed, SweepResults
from iakd.config import load_config, read_yaml
from iakd.errors import ConfigError
from iakd.hybrid import HybridNet
from iakd.judging import judged_epochs
from iakd.losses import kd_loss
from iakd.search.runner import confirm_candidates
from iakd.search.summary import TrialSummary
from iakd.tracking import baseline_label
from iakd.transplant import transplant, transplant_plan

torch.set_num_threads(1)


def _net(arch: str, seed: int) -> models.ZooModel:
    torch.manual_seed(seed)
    net = models.build(arch, 10)
    with torch.no_grad():  # BatchNorm statistics and affine parameters away from their initial 1 / 0
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
    return net


# ---------------------------------------------------------------------------------------------------------
# student.init: teacher


def test_transplant_copies_stem_first_blocks_and_classifier_and_leaves_the_rest():
    student, teacher = _net("resnet14", 0), _net("resnet20", 1)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    copied = transplant(student, teacher)
    assert copied == ["conv1", "bn1", "stage 1 block 1", "stage 1 block 2", "stage 2 block 1", "stage 2 block 2",
                      "stage 3 block 1", "stage 3 block 2", "fc"]
    s, t = student.state_dict(), teacher.state_dict()
    for key in s:  # resnet14 has two blocks per stage: both are the teacher's first two, BN statistics included
        assert torch.equal(s[key], t[key]), key
    assert any(not torch.equal(before[k], s[k]) for k in s)
    assert transplant_plan("resnet14", "resnet20") == tuple(copied)


def test_transplant_copies_only_the_parts_whose_shapes_match():
    student, teacher = _net("wrn_16_1", 0), _net("wrn_40_2", 1)  # widths 16/32/64 against 32/64/128
    before = {k: v.clone() for k, v in student.state_dict().items()}
    assert transplant(student, teacher) == ["conv1"]  # 3 -> 16 in both; nothing else has the student's shapes
    s, t = student.state_dict(), teacher.state_dict()
    assert torch.equal(s["conv1.weight"], t["conv1.weight"])
    assert all(torch.equal(before[k], s[k]) for k in s if k != "conv1.weight")


def _blocks(*counts: int) -> tuple[str, ...]:
    return tuple(f"stage {s} block {b}" for s, n in enumerate(counts, start=1) for b in range(1, n + 1))


STEM, RESNET_STEM = ("conv1",), ("conv1", "bn1")
SHIPPED_PLANS = {  # docs/iakd-levers.md, "What student.init: teacher copies, for each shipped pair"
    "digits.yaml": RESNET_STEM + _blocks(1, 1, 1) + ("fc",),
    "fashion_mnist.yaml": RESNET_STEM + _blocks(1, 1, 1) + ("fc",),
    "digits_smoke.yaml": RESNET_STEM + _blocks(2, 2, 2) + ("fc",),
    "cifar100_resnet56_resnet20.yaml": RESNET_STEM + _blocks(3, 3, 3) + ("fc",),
    "cifar100_resnet110_resnet32.yaml": RESNET_STEM + _blocks(5, 5, 5) + ("fc",),
    "cifar100_resnet32x4_resnet8x4.yaml": RESNET_STEM + _blocks(1, 1, 1) + ("fc",),
    "cifar100_wrn_40_2_wrn_16_2.yaml": STEM + _blocks(2, 2, 2) + ("bn1", "fc"),
    "cifar100_wrn_40_2_wrn_40_1.yaml": STEM,
    "cifar100_vgg13_vgg8.yaml": _blocks(1, 1, 1, 1, 1) + ("classifier",),
}


@pytest.mark.parametrize("name", sorted(SHIPPED_PLANS))
def test_what_the_teacher_init_copies_for_each_shipped_pair(name):
    path = Path(__file__).resolve().parents[1] / "tune" / "configs" / name
    run = read_yaml(path)["run"]
    classes = 100 if name.startswith("cifar100") else 10
    assert transplant_plan(run["student"]["arch"], run["teacher"]["arch"], classes) == SHIPPED_PLANS[name]


def test_every_shipped_search_config_is_in_the_table_of_copied_parts():
    shipped = {p.name for p in (Path(__file__).resolve().parents[1] / "tune" / "configs").glob("*.yaml")}
    assert shipped == set(SHIPPED_PLANS)


def test_the_door_refuses_a_teacher_init_where_nothing_can_be_copied():
    with pytest.raises(ConfigError, match=r"^student.init: 'teacher' is not allowed; no part of teacher.arch "
                                          r"'resnet32x4' has the shapes of student.arch 'resnet8'"):
        load_config(None, ["student.init=teacher", "teacher.arch=resnet32x4"])
    with pytest.raises(ConfigError, match=r"^student.init: 'teachr' is not one of 'scratch', 'teacher'"):
        load_config(None, ["student.init=teachr"])
    assert load_config(None, ["student.init=teacher", "method.name=ce"]).student.init == "teacher"


# ---------------------------------------------------------------------------------------------------------
# method.mixing: blend


@pytest.mark.parametrize("teacher_arch", ["resnet20", "resnet8x4"])  # equal widths; widths that need connectors
def test_blend_is_the_student_at_0_and_the_teacher_unit_at_1(teacher_arch):
    student, teacher = _net("resnet8", 0), _net(teacher_arch, 1)
    hybrid = HybridNet(student, teacher, "stage").eval()
    x = torch.randn(4, 3, 16, 16)
    n = hybrid.num_units
    with torch.no_grad():
        pure = hybrid(x)
        assert torch.equal(hybrid(x, (True,) * n, blend=torch.zeros(n)), pure)  # lerp at 0 returns the student
        for i in range(n):  # a = 1 on unit i alone is the Bernoulli hybrid that swaps unit i alone
            only = tuple(j == i for j in range(n))
            assert torch.equal(hybrid(x, only, blend=torch.ones(n)), hybrid(x, only)), i
        # a weight between: unit 0's output is (1 - a) student + a teacher, which the rest of the student takes
        a = 0.3
        stem = student.forward_stem(x)
        s_out, t_out = hybrid._student_units[0](stem), hybrid._teacher_unit(0, stem)
        y = torch.lerp(s_out, t_out, torch.tensor(a))
        for unit in hybrid._student_units[1:]:
            y = unit(y)
        expected = student.forward_head(y)
        blended = hybrid(x, (True,) + (False,) * (n - 1), blend=torch.tensor([a] + [0.0] * (n - 1)))
        torch.testing.assert_close(blended, expected, rtol=0, atol=0)
        assert not torch.allclose(blended, pure)


def test_blend_draws_nothing_and_blends_the_units_with_a_positive_weight():
    method = methods.build("iakd", _net("resnet8", 0), _net("resnet20", 1), mixing="blend")
    state = method.swap_generator.get_state()
    method.swap_prob = [0.5, 0.25, 0.0]
    assert method.draw_swap() == (True, True, False)
    assert torch.equal(method.blend_weights, torch.tensor([0.5, 0.25, 0.0]))
    assert torch.equal(method.swap_generator.get_state(), state)
    assert "blend_weights" not in method.trainable_state_dict()  # set from the schedule, not trained


# ---------------------------------------------------------------------------------------------------------
# method.hybrid_weight and method.kd_on


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(8, 3, 16, 16, generator=g), torch.randint(0, 10, (8,), generator=g)


def test_the_auxiliary_loss_is_its_two_terms():
    student, teacher = _net("resnet8", 0), _net("resnet20", 1)
    method = methods.build("iakd+kd", student, teacher, ce_weight=0.1, kd_weight=0.9, temperature=4.0,
                           hybrid_weight=0.5).train()
    image, target = _batch()
    swap = (True, False, True)
    logits, losses = method.forward_train(image, target, swap)
    with torch.no_grad():
        s_logits, h_logits, t_logits = student(image), method.hybrid(image, swap), method.teacher(image)
    assert set(losses) == {"loss_ce", "loss_kd", "loss_hybrid"}
    torch.testing.assert_close(logits, s_logits, rtol=0, atol=0)  # the pure student carries the method's loss
    torch.testing.assert_close(losses["loss_ce"], 0.1 * F.cross_entropy(s_logits, target), rtol=0, atol=0)
    torch.testing.assert_close(losses["loss_kd"], 0.9 * kd_loss(s_logits, t_logits, 4.0), rtol=0, atol=0)
    torch.testing.assert_close(losses["loss_hybrid"], 0.5 * F.cross_entropy(h_logits, target), rtol=0, atol=0)
    # a mask that swaps nothing has no hybrid: the auxiliary term is 0 instead of the student's CE again
    _, losses = method.forward_train(image, target, (False,) * 3)
    assert losses["loss_hybrid"].item() == 0.0


def test_kd_on_the_student_moves_only_the_kd_term():
    student, teacher = _net("resnet8", 0), _net("resnet20", 1)
    method = methods.build("iakd+kd", student, teacher, kd_weight=0.9, kd_on="student").train()
    image, target = _batch()
    swap = (False, True, False)
    logits, losses = method.forward_train(image, target, swap)
    with torch.no_grad():
        s_logits, h_logits, t_logits = student(image), method.hybrid(image, swap), method.teacher(image)
    torch.testing.assert_close(logits, h_logits, rtol=0, atol=0)  # CE stays on the hybrid
    torch.testing.assert_close(losses["loss_ce"], F.cross_entropy(h_logits, target), rtol=0, atol=0)
    torch.testing.assert_close(losses["loss_kd"], 0.9 * kd_loss(s_logits, t_logits, 4.0), rtol=0, atol=0)
    assert methods.build("iakd+kd", _net("resnet8", 0), teacher, hybrid_weight=0.5).kd_on == "student"
    assert methods.build("iakd+kd", _net("resnet8", 0), teacher).kd_on == "hybrid"


@pytest.mark.parametrize("overrides, message", [
    (["method.name=kd", "method.mixing=blend"], "method.mixing: 'blend' is not allowed; method.name=kd does not swap"),
    (["method.name=ce", "method.hybrid_weight=0.5"], "method.hybrid_weight: 0.5 is not allowed; method.name=ce does "
                                                     "not swap"),
    (["method.name=iakd", "method.kd_on=student"], "method.kd_on: 'student' is not allowed; method.name=iakd has no "
                                                   "KD term"),
    (["method.hybrid_weight=-0.5"], "method.hybrid_weight: -0.5 is not allowed; must be >= 0"),
    (["method.mixing=blnd"], "method.mixing: 'blnd' is not one of 'bernoulli', 'blend'"),
    (["schedule.t_start=0.8"], "schedule.t_start: 0.8 is outside [0, t_end) = [0, 0.8)"),
    (["schedule.t_start=-0.1"], "schedule.t_start: -0.1 is outside [0, t_end)"),
])
def test_the_door_refuses_levers_that_cannot_apply(overrides, message):
    with pytest.raises(ConfigError) as error:
        load_config(None, overrides)
    assert str(error.value).startswith(message)


# ---------------------------------------------------------------------------------------------------------
# schedule.t_start


def test_a_warm_up_holds_p_at_0_then_runs_the_schedule_over_the_rest():
    linear = schedules.build({"family": "linear", "p0": 0.6, "t_end": 0.8, "t_start": 0.2})
    assert [linear(t) for t in (0.0, 0.1999, 0.2, 0.5, 0.8, 1.0)] == pytest.approx([0, 0, 0.6, 0.3, 0, 0], abs=1e-12)
    assert not linear.ended(0.1) and linear.ended(0.8)  # a warm-up has not handed over
    step = schedules.build({"family": "step", "p0": 0.8, "t_end": 1.0, "t_start": 0.2, "interval": 0.25})
    assert [step(t) for t in (0.1, 0.2, 0.44, 0.45, 0.7)] == pytest.approx([0, 0.8, 0.8, 0.4, 0.2])
    assert schedules.build({"family": "cosine", "p0": 0.5, "t_end": 0.8})(0.0) == 0.5  # t_start 0: as before


def test_warm_up_epochs_are_not_judged():
    history = [{"epoch": 1, "swap_prob": 0.0, "handed_over": 0.0, "val_acc": 99.0},  # the warm-up
               {"epoch": 2, "swap_prob": 0.3, "handed_over": 0.0, "val_acc": 50.0},
               {"epoch": 3, "swap_prob": 0.0, "handed_over": 1.0, "val_acc": 80.0}]
    assert [h["epoch"] for h in judged_epochs(history)] == [3]


# ---------------------------------------------------------------------------------------------------------
# the search: baselines from every initialisation, each configuration against its own


def test_the_confirmation_trains_the_baselines_from_each_initialisation():
    best = TrialSummary("search_1", {"student.init": "teacher", "method.name": "iakd"}, 90.0, 89.0, 10, None)
    candidates = confirm_candidates([best], 1, ["ce", "kd"], ["scratch", "teacher"])
    assert list(candidates) == ["search_1", "ce", "ce.teacher-init", "kd", "kd.teacher-init"]
    assert candidates["kd.teacher-init"]["student.init"] == "teacher"
    assert candidates["kd"]["method.name"] == "kd" and candidates["kd"]["student.init"] == "scratch"


def test_a_configuration_is_compared_with_kd_from_its_own_initialisation():
    def confirmed(name, method, init, test):
        return Confirmed(name, name == baseline_label(method, init), {"method": method, "init": init},
                         dict(test), dict(test))

    answer = SweepResults(pd.DataFrame(), [
        confirmed("search_1", "iakd", "teacher", {1: 95.0, 2: 96.0}),
        confirmed("search_2", "iakd", "scratch", {1: 91.0, 2: 92.0}),
        confirmed("kd", "kd", "scratch", {1: 93.0, 2: 93.0}),
        confirmed("kd.teacher-init", "kd", "teacher", {1: 94.0, 2: 97.0}),
    ])
    assert answer.difference("search_1", "kd").mean == pytest.approx(0.0)  # 95 - 94, 96 - 97
    assert answer.difference("search_2", "kd").mean == pytest.approx(-1.5)
    assert answer.difference("kd.teacher-init", "kd") is None  # a baseline is its own reference
