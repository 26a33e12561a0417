import re

import pytest
import torch
import torch.nn.functional as F

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


@pytest.mark.parametrize("name, keys", [("ce", {"loss_ce"}), ("kd", {"loss_ce", "loss_kd"}), ("iakd", {"loss_ce"}),
                                        ("iakd+kd", {"loss_ce", "loss_kd"})])
def test_forward_train_returns_logits_and_named_losses(name, keys):
    method = build(name).train()
    logits, losses = method.forward_train(torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,)))
    assert logits.shape == (4, 10) and set(losses) == keys
    assert all(v.ndim == 0 and torch.isfinite(v) for v in losses.values())


def _saved_tensors(fn) -> int:
    """How many tensors autograd saves for backward while ``fn`` runs."""
    count = 0

    def pack(tensor):
        nonlocal count
        count += 1
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        fn()
    return count


@pytest.mark.parametrize("name", ["kd", "iakd+kd"])
def test_the_kd_term_keeps_no_graph_through_the_teacher(name):
    """The graph of forward_train is exactly the student's (or hybrid's) forward plus the two loss terms."""
    method = build(name).train()
    # Frozen weights alone would keep autograd out of the teacher; let them ask for gradients, so that only the
    # method's own no-grad forward of the teacher is what is tested.
    method.teacher.requires_grad_(True)
    if name == "iakd+kd":
        method.swap_prob = 0.0  # the hybrid is then the pure student: any further saved tensor is the teacher's
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    with torch.no_grad():
        teacher_logits = method.teacher(x)

    def by_hand():
        logits = method.student(x)
        torch.nn.functional.cross_entropy(logits, y) + kd_loss(logits, teacher_logits, 4.0)

    outputs = []
    handle = method.teacher.register_forward_hook(lambda module, args, out: outputs.append(out))
    assert _saved_tensors(lambda: method.forward_train(x, y)) == _saved_tensors(by_hand)
    handle.remove()
    assert len(outputs) == 1 and outputs[0].grad_fn is None and not outputs[0].requires_grad


def test_kd_uses_hinton_weights():
    method = build("kd").train()
    assert (method.ce_weight, method.kd_weight, method.temperature) == (0.1, 0.9, 4.0)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    logits, losses = method.forward_train(x, y)
    with torch.no_grad():
        t = method.teacher(x)
    assert losses["loss_kd"].item() == pytest.approx(0.9 * kd_loss(logits, t, 4.0).item(), rel=1e-5)
    assert losses["loss_ce"].item() == pytest.approx(0.1 * F.cross_entropy(logits, y).item(), rel=1e-5)


def test_an_all_student_step_without_kd_term_never_calls_the_teacher():
    method = build("iakd").train()
    method.swap_prob = 0.0
    calls = []
    hooks = [m.register_forward_hook(lambda *a: calls.append(1)) for m in method.teacher.modules()]
    method.forward_train(torch.randn(2, 3, 32, 32), torch.randint(0, 10, (2,)))
    for h in hooks:
        h.remove()
    assert calls == []


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


def test_the_registry_states_what_each_method_needs():
    facts = {name: (cls.uses_teacher, cls.uses_swap, cls.has_kd_term, cls.default_ce_weight, cls.default_kd_weight)
             for name, cls in methods.METHODS.items()}
    assert facts == {"ce": (False, False, False, 1.0, 0.0), "kd": (True, False, True, 0.1, 0.9),
                     "iakd": (True, True, False, 1.0, 0.0), "iakd+kd": (True, True, True, 1.0, 0.9)}
    assert methods.kd_methods() == {"kd", "iakd+kd"}


def test_ce_holds_no_teacher_even_when_given_one():
    method = methods.build("ce", models.build("resnet8", 10), models.build("resnet20", 10))
    assert method.teacher is None
    assert set(method.trainable_state_dict()) == {f"student.{k}" for k in method.student.state_dict()}


@pytest.mark.parametrize("name, kd_weight, reason", [
    ("iakd", 0.5, "it has no KD term"), ("ce", 0.5, "it has no KD term"),
    ("iakd+kd", 0.0, "its KD term needs kd_weight > 0")])
def test_a_kd_weight_that_contradicts_the_name_is_refused(name, kd_weight, reason):
    with pytest.raises(ValueError, match=rf"^method '{re.escape(name)}' with kd_weight {kd_weight}: {reason}$"):
        methods.build(name, models.build("resnet8", 10), models.build("resnet20", 10), kd_weight=kd_weight)


def test_unknown_method_and_missing_teacher_are_refused():
    with pytest.raises(ValueError, match=r"^unknown method 'fitnet'; known: ce, kd, iakd, iakd\+kd$"):
        methods.build("fitnet", models.build("resnet8", 10))
    with pytest.raises(ValueError, match=r"^method 'kd' needs a teacher$"):
        methods.build("kd", models.build("resnet8", 10))


def test_the_python_api_and_the_run_config_build_the_same_method_by_default():
    """One home per default: the teacher's BatchNorm mode and the mixing (iakd.hybrid), the loss weights (each
    method class). A method built directly, through methods.build and from the run config's defaults is the same."""
    import typing

    from iakd.config import MethodConfig, load_config
    from iakd.hybrid import DEFAULT_MIXING, DEFAULT_TEACHER_BN, MIXINGS, TEACHER_BN_MODES, HybridNet

    hints = typing.get_type_hints(MethodConfig)
    assert typing.get_args(hints["teacher_bn"]) == TEACHER_BN_MODES
    assert typing.get_args(hints["mixing"]) == MIXINGS
    literal, none = typing.get_args(hints["kd_on"])  # Literal[...] | None
    assert typing.get_args(literal) == methods.KD_TARGETS and none is type(None)
    cfg = load_config(None, [])
    assert cfg.method.teacher_bn == DEFAULT_TEACHER_BN == "batch" and cfg.method.mixing == DEFAULT_MIXING
    assert HybridNet(models.build("resnet8", 10), models.build("resnet20", 10), "stage").teacher_bn == "batch"
    expected = {"ce": (1.0, 0.0), "kd": (0.1, 0.9), "iakd": (1.0, 0.0), "iakd+kd": (1.0, 0.9)}
    for name, cls in methods.METHODS.items():
        student, teacher = models.build("resnet8", 10), models.build("resnet20", 10)
        built = methods.build(name, student, teacher, ce_weight=cfg.method.ce_weight, kd_weight=cfg.method.kd_weight)
        direct = cls(models.build("resnet8", 10), models.build("resnet20", 10))
        if name != "ce":  # CE has no weights: its loss is the cross-entropy alone
            assert (built.ce_weight, built.kd_weight) == (direct.ce_weight, direct.kd_weight) == expected[name], name
        if cls.uses_swap:
            assert built.hybrid.teacher_bn == direct.hybrid.teacher_bn == cfg.method.teacher_bn, name
            assert built.mixing == direct.mixing == cfg.method.mixing, name
