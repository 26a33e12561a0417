import pytest
import torch

from iakd import methods, models
from iakd.hybrid import HybridNet


def hybrid(student="resnet20", teacher="resnet56", granularity="stage"):
    return HybridNet(models.build(student, 10), models.build(teacher, 10), granularity)


def test_no_swap_and_all_false_swap_are_exactly_the_student():
    net = hybrid("wrn_40_1", "wrn_40_2", 2).eval()
    x = torch.randn(4, 3, 32, 32)
    expected = net.student(x)
    assert torch.equal(net(x), expected)
    assert torch.equal(net(x, [False] * net.num_units), expected)


def test_all_true_swap_is_student_stem_teacher_stages_student_head():
    net = hybrid("resnet20", "resnet56", "stage").eval()
    x = torch.randn(3, 3, 32, 32)
    t = net.teacher
    by_hand = net.student.forward_head(t.layer3(t.layer2(t.layer1(net.student.forward_stem(x)))))
    assert torch.allclose(net(x, [True, True, True]), by_hand, atol=1e-6)
    assert not torch.allclose(net(x, [True, True, True]), net.student(x))


def test_connectors_only_where_widths_differ():
    narrow = hybrid("wrn_40_1", "wrn_40_2", "stage")
    assert sorted(narrow.to_teacher) == ["1", "2"]  # the stems agree at 16 channels, so unit 0 needs none
    assert sorted(narrow.to_student) == ["1", "2", "3"]
    assert narrow.to_teacher["1"][0].weight.shape == (32, 16, 1, 1)
    assert narrow.to_student["3"][0].weight.shape == (64, 128, 1, 1)
    matched = hybrid("resnet20", "resnet56")
    assert len(matched.to_teacher) == 0 and len(matched.to_student) == 0


@pytest.mark.parametrize("names", [("wrn_40_1", "wrn_40_2"), ("resnet20", "resnet56")])
def test_hybrid_runs_for_every_swap_pattern(names):
    net = hybrid(*names, "stage").train()
    x = torch.randn(2, 3, 32, 32)
    for code in range(2**net.num_units):
        swap = [bool(code >> i & 1) for i in range(net.num_units)]
        assert net(x, swap).shape == (2, 10)


def test_teacher_stays_in_eval_mode_whatever_train_is_called_with():
    net = hybrid().train()
    assert net.student.training and not net.teacher.training
    assert not any(m.training for m in net.teacher.modules())


def _step(method, x, y, swap_prob):
    method.train()
    method.swap_prob = swap_prob
    opt = torch.optim.SGD(method.trainable_parameters(), lr=0.1, momentum=0.9)
    logits, losses = method.forward_train(x, y)
    sum(losses.values()).backward()
    opt.step()
    return logits


@pytest.mark.parametrize("names", [("wrn_40_1", "wrn_40_2"), ("resnet8", "resnet20")])
def test_optimizer_step_leaves_teacher_untouched_and_reaches_the_student_stem(names):
    student, teacher = models.build(names[0], 10), models.build(names[1], 10)
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    stem_before = student.conv1.weight.clone()
    method = methods.build("iakd+kd", student, teacher, granularity="stage")
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    _step(method, x, y, swap_prob=1.0)
    assert method.last_swap == (True,) * method.num_units
    for key, value in teacher.state_dict().items():
        assert torch.equal(value, teacher_before[key]), key  # weights and BN running statistics
    assert all(p.grad is None for p in teacher.parameters())
    assert student.conv1.weight.grad is not None and student.conv1.weight.grad.abs().sum() > 0
    assert not torch.equal(student.conv1.weight, stem_before)


def test_connectors_receive_gradient_and_train_with_the_student():
    method = methods.build("iakd", models.build("wrn_40_1", 10), models.build("wrn_40_2", 10))
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    _step(method, x, y, swap_prob=1.0)
    connector = method.hybrid.to_student["3"][0].weight
    assert connector.grad is not None and connector.grad.abs().sum() > 0
    assert any(p is connector for p in method.trainable_parameters())


def test_swap_frequency_matches_p_within_binomial_tolerance():
    net = hybrid("resnet20", "resnet56", "block")
    gen = torch.Generator().manual_seed(0)
    draws = 2000
    counts = torch.zeros(net.num_units)
    for _ in range(draws):
        counts += torch.tensor(net.draw_swap(0.3, gen), dtype=torch.float32)
    sigma = (0.3 * 0.7 / draws) ** 0.5
    assert torch.all((counts / draws - 0.3).abs() < 4 * sigma)


def test_per_unit_probabilities_are_honoured():
    net = hybrid("resnet20", "resnet56", "stage")
    gen = torch.Generator().manual_seed(0)
    masks = [net.draw_swap([0.0, 1.0, 0.5], gen) for _ in range(400)]
    assert all(not m[0] and m[1] for m in masks)
    assert 0.4 < sum(m[2] for m in masks) / 400 < 0.6


def test_same_generator_seed_gives_the_same_masks():
    net = hybrid("resnet20", "resnet56", "block")
    ga, gb, gc = (torch.Generator().manual_seed(s) for s in (7, 7, 8))
    seq_a = [net.draw_swap(0.5, ga) for _ in range(20)]
    seq_b = [net.draw_swap(0.5, gb) for _ in range(20)]
    seq_c = [net.draw_swap(0.5, gc) for _ in range(20)]
    assert seq_a == seq_b
    assert seq_a != seq_c


def test_wrong_mask_length_is_refused():
    with pytest.raises(ValueError, match="swap has 2 entries for 3 units"):
        hybrid()(torch.randn(1, 3, 32, 32), [True, False])


def _batch_stat_reference(teacher, x):
    """The teacher's units by hand with BatchNorm on batch statistics: a copy in train mode, momentum 0."""
    import copy

    ref = copy.deepcopy(teacher).train()
    for m in ref.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = 0.0
    return ref.layer3(ref.layer2(ref.layer1(x)))


def test_batch_mode_teacher_units_normalise_with_the_batch_statistics():
    student, teacher = models.build("resnet8", 10), models.build("resnet20", 10).eval()
    with torch.no_grad():  # running statistics far from a batch's, so that the two modes differ
        for m in teacher.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 4)
    net = HybridNet(student, teacher, "stage", teacher_bn="batch").eval()
    x = torch.randn(8, 3, 32, 32)
    stem = student.forward_stem(x)
    expected = student.forward_head(_batch_stat_reference(teacher, stem))
    # the same float32 operations in the same order as the reference: equal up to reassociation in the kernels
    assert torch.allclose(net(x, [True, True, True]), expected, rtol=1e-5, atol=1e-5)
    frozen = HybridNet(student, teacher, "stage", teacher_bn="frozen").eval()
    assert not torch.allclose(frozen(x, [True, True, True]), expected, atol=1e-2)


def test_batch_mode_never_changes_the_teachers_weights_or_statistics_and_leaves_the_given_teacher_alone():
    teacher = models.build("resnet20", 10).eval()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    method = methods.build("iakd+kd", models.build("resnet8", 10), teacher, teacher_bn="batch")
    hybrid_before = {k: v.clone() for k, v in method.hybrid.teacher.state_dict().items()}
    optimizer = torch.optim.SGD(method.trainable_parameters(), lr=0.5, momentum=0.9)
    method.train()
    for _ in range(3):
        _, losses = method.forward_train(torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,)), (True, False, True))
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())
    assert all(torch.equal(v, hybrid_before[k]) for k, v in method.hybrid.teacher.state_dict().items())
    assert not any(p.requires_grad for p in method.hybrid.teacher.parameters())
    # the standalone teacher (the KD term's logits) is the one given, with its BatchNorm layers in eval mode
    assert method.teacher is teacher and any(isinstance(m, torch.nn.BatchNorm2d) for m in teacher.modules())
    x = torch.randn(4, 3, 32, 32)
    reference = models.build("resnet20", 10).eval()
    reference.load_state_dict(before)
    assert torch.equal(method.teacher(x), reference(x))
    # the hybrid's copy of the teacher is not part of what the method trains and saves
    assert not any(k.startswith("hybrid.teacher.") for k in method.trainable_state_dict())


def test_unknown_teacher_bn_mode_is_refused():
    with pytest.raises(ValueError, match="teacher_bn: 'running' is not one of frozen, batch"):
        HybridNet(models.build("resnet8", 10), models.build("resnet20", 10), "stage", teacher_bn="running")


def test_rms_ratio_is_one_where_teacher_units_compute_what_student_units_do():
    student = models.build("resnet20", 10)
    teacher = models.build("resnet20", 10)
    teacher.load_state_dict(student.state_dict())
    net = HybridNet(student, teacher, "stage", teacher_bn="frozen").eval()  # both on the same running statistics
    ratios = net.unit_rms_ratios(torch.randn(4, 3, 32, 32))
    assert ratios == [1.0, 1.0, 1.0]  # the same weights on the same input: the same numbers


def test_rms_ratio_measures_the_scale_of_the_student_output_against_the_teachers():
    student = models.build("resnet8", 10)
    teacher = models.build("resnet8", 10)
    teacher.load_state_dict(student.state_dict())
    with torch.no_grad():  # the teacher's last unit: the residual branch and the shortcut doubled
        block = teacher.layer3[0]
        block.bn2.weight.mul_(2)
        block.bn2.bias.mul_(2)
        block.downsample[1].weight.mul_(2)
        block.downsample[1].bias.mul_(2)
    net = HybridNet(student, teacher, "stage", teacher_bn="frozen").eval()
    ratios = net.unit_rms_ratios(torch.randn(4, 3, 32, 32))
    assert ratios[:2] == [1.0, 1.0]
    assert ratios[2] == pytest.approx(0.5, rel=1e-5)  # relu(2 z) = 2 relu(z): exactly half, up to rounding
