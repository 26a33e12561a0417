import pytest
import torch

from iakd import methods, models
from iakd.losses import kd_loss


def build(name, student="resnet8", teacher="resnet20"):
    return methods.build(name, models.build(student, 10), None if name == "ce" else models.build(teacher, 10))


def test_kd_loss_is_zero_for_equal_logits_and_matches_kl_by_hand():
    a = torch.randn(5, 10)
    assert kd_loss(a, a, 4.0).item() == pytest.approx(0.0, abs=1e-6)
    b = torch.randn(5, 10)
    p, q = torch.softmax(b / 4, 1), torch.softmax(a / 4, 1)
    by_hand = (p * (p.log() - q.log())).sum(1).mean() * 16
    assert kd_loss(a, b, 4.0).item() == pytest.approx(by_hand.item(), rel=1e-5)


@pytest.mark.parametrize("name, keys", [("ce", {"loss_ce"}), ("kd", {"loss_ce", "loss_kd"}), ("iakd", {"loss_ce"}), ("iakd+kd", {"loss_ce", "loss_kd"})])
def test_forward_train_returns_logits_and_named_losses(name, keys):
    method = build(name).train()
    logits, losses = method.forward_train(torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,)))
    assert logits.shape == (4, 10) and set(losses) == keys
    assert all(v.ndim == 0 and torch.isfinite(v) for v in losses.values())


def test_kd_uses_hinton_weights_and_builds_no_graph_through_the_teacher():
    method = build("kd").train()
    assert (method.ce_weight, method.kd_weight, method.temperature) == (0.1, 0.9, 4.0)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    logits, losses = method.forward_train(x, y)
    with torch.no_grad():
        t = method.teacher(x)
    assert losses["loss_kd"].item() == pytest.approx(0.9 * kd_loss(logits, t, 4.0).item(), rel=1e-5)
    sum(losses.values()).backward()
    assert all(p.grad is None for p in method.teacher.parameters())


def test_eval_forward_is_the_pure_student():
    method = build("iakd+kd").eval()
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(method(x), method.student(x))


def test_iakd_with_zero_probability_trains_the_student_alone():
    method = build("iakd").train()
    method.swap_prob = 0.0
    for _ in range(5):
        method.forward_train(torch.randn(2, 3, 32, 32), torch.randint(0, 10, (2,)))
        assert method.last_swap == (False,) * method.num_units


def test_trainable_state_excludes_the_teacher_and_holds_connectors_once():
    method = build("iakd", "wrn_40_1", "wrn_40_2")
    state = method.trainable_state_dict()
    assert not any(k.startswith(("teacher.", "hybrid.teacher.")) for k in state)
    assert any(k.startswith("hybrid.to_student.") for k in state)
    assert sum(k.startswith("student.") for k in state) == len(method.student.state_dict())
    assert not any(k.startswith("hybrid.student.") for k in state)


def test_trainable_state_round_trips_into_a_fresh_method():
    a, b = build("iakd", "wrn_40_1", "wrn_40_2"), build("iakd", "wrn_40_1", "wrn_40_2")
    b.load_trainable_state_dict(a.trainable_state_dict())
    for key, value in a.trainable_state_dict().items():
        assert torch.equal(value, b.trainable_state_dict()[key])


def test_unknown_method_and_missing_teacher_are_refused():
    with pytest.raises(ValueError, match="unknown method 'fitnet'"):
        methods.build("fitnet", models.build("resnet8", 10))
    with pytest.raises(ValueError, match="needs a teacher"):
        methods.build("kd", models.build("resnet8", 10))
