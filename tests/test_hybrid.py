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
