"""The frozen teacher: BatchNorm folded into the convolutions it follows, same logits, same anatomy."""

import copy
import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from iakd import methods, models
from iakd.frozen import UnfoldedWarning, fold_batchnorm, foldable_pairs, freeze_teacher
from iakd.hybrid import HybridNet
from iakd.models import ZooModel

IMAGENET_ARCHS = ("resnet18", "resnet34", "resnet50")


def _randomize_batchnorm(model: nn.Module) -> nn.Module:
    """Running statistics and affine parameters far from (0, 1), so that folding changes every weight."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
    return model


def _teacher(arch: str, num_classes: int = 100) -> ZooModel:
    return _randomize_batchnorm(models.build(arch, num_classes)).eval()


def _count_bn(model: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def _assert_same_logits(actual: torch.Tensor, expected: torch.Tensor) -> None:
    # 1e-5 relative; the absolute part scales with the logits, so that near-zero entries do not fail on rounding.
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())


@pytest.mark.parametrize("arch", models.ARCHS)
def test_folded_teacher_gives_the_same_logits(arch):
    teacher = _teacher(arch)
    size = 64 if arch in IMAGENET_ARCHS else 32
    x = torch.randn(4, 3, size, size)
    with torch.no_grad():
        expected = teacher(x)
        actual = freeze_teacher(teacher)(x)
    assert expected.shape == (4, 100)
    _assert_same_logits(actual, expected)


def test_folded_vgg_gives_the_same_logits_on_the_input_size_where_group_3_pools():
    teacher = _teacher("vgg13")
    x = torch.randn(2, 3, 64, 64)  # group 3 pools only at 8x8, i.e. on 64x64 inputs: the other branch of tracing
    with torch.no_grad():
        _assert_same_logits(freeze_teacher(teacher)(x), teacher(x))


@pytest.mark.parametrize("arch, before, after", [
    ("resnet20", 21, 0),  # stem, 2 per block (9 blocks), 2 downsample branches: all follow a conv
    ("wrn_16_2", 13, 7),  # per block bn2 folds; bn1 (pre-activation, 6 blocks) and the head's BN stay
    ("vgg8", 5, 0),       # one conv-BN-ReLU per group
])
def test_folding_removes_exactly_the_batchnorms_that_follow_a_conv(arch, before, after):
    teacher = _teacher(arch)
    frozen = freeze_teacher(teacher)
    assert (_count_bn(teacher), _count_bn(frozen)) == (before, after)


def test_pre_activation_batchnorms_are_the_ones_kept():
    frozen = freeze_teacher(_teacher("wrn_16_2"))
    kept = sorted(name for name, m in frozen.named_modules() if isinstance(m, nn.BatchNorm2d))
    blocks = [f"block{s}.layer.{b}.bn1" for s in (1, 2, 3) for b in (0, 1)]
    assert kept == sorted(["bn1", *blocks])


def test_the_frozen_copy_has_no_trainable_parameter_and_is_in_eval_mode():
    frozen = freeze_teacher(models.build("resnet20", 10).train())
    assert not any(p.requires_grad for p in frozen.parameters())
    assert not any(m.training for m in frozen.modules())


def test_the_given_teacher_is_left_untouched():
    teacher = _teacher("resnet20")
    state = {k: v.clone() for k, v in teacher.state_dict().items()}
    freeze_teacher(teacher)
    assert teacher.state_dict().keys() == state.keys()
    assert all(torch.equal(teacher.state_dict()[k], v) for k, v in state.items())
    assert _count_bn(teacher) == 21


def test_folded_convs_carry_a_bias_and_the_state_dict_loses_the_folded_batchnorms():
    frozen = freeze_teacher(_teacher("resnet8"))
    keys = frozen.state_dict().keys()
    assert "conv1.bias" in keys and "layer2.0.downsample.0.bias" in keys
    assert not any(".bn" in k or k.startswith("bn") or "downsample.1" in k for k in keys)


def test_vgg_layer_views_see_the_folded_modules():
    frozen = freeze_teacher(_teacher("vgg11"))
    for i, stage in enumerate(frozen.stages()):
        group = getattr(frozen, f"block{i}")
        for j, layer in enumerate(stage):
            assert layer.conv is group[3 * j] and isinstance(layer.bn, nn.Identity)


def test_the_anatomy_is_kept():
    teacher = _teacher("resnet32")
    frozen = freeze_teacher(teacher)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        y = frozen.forward_stem(x)
        for stage in frozen.stages():
            for block in stage:
                y = block(y)
        _assert_same_logits(frozen.forward_head(y), teacher(x))
    assert [len(s) for s in frozen.stages()] == [len(s) for s in teacher.stages()]


@pytest.mark.parametrize("student_arch, teacher_arch", [("resnet8", "resnet32"), ("wrn_16_1", "wrn_16_2")])
def test_a_hybrid_on_the_folded_teacher_gives_the_same_output(student_arch, teacher_arch):
    teacher = _teacher(teacher_arch)
    student = _randomize_batchnorm(models.build(student_arch, 100))
    # folding is for the frozen mode (the engine folds only then): the teacher's units on their running statistics
    plain = HybridNet(copy.deepcopy(student), teacher, "stage", teacher_bn="frozen").train()
    folded = HybridNet(copy.deepcopy(student), freeze_teacher(teacher), "stage", teacher_bn="frozen").train()
    folded.to_teacher.load_state_dict(plain.to_teacher.state_dict())  # wrn_16_1 -> wrn_16_2 has connectors
    folded.to_student.load_state_dict(plain.to_student.state_dict())
    x = torch.randn(4, 3, 32, 32)
    for swap in itertools.product((False, True), repeat=plain.num_units):
        _assert_same_logits(folded(x, swap), plain(x, swap))


def test_a_method_keeps_the_folded_teacher_in_eval_mode():
    teacher = freeze_teacher(_teacher("wrn_16_2"))  # keeps 7 BNs: their statistics must not move
    stats = {k: v.clone() for k, v in teacher.state_dict().items() if "running" in k}
    method = methods.build("iakd+kd", models.build("wrn_16_1", 100), teacher, granularity="stage").train()
    method.swap_prob = 1.0
    _, losses = method.forward_train(torch.randn(4, 3, 32, 32), torch.randint(0, 100, (4,)))
    sum(losses.values()).backward()
    assert not any(m.training for m in teacher.modules())
    assert all(torch.equal(teacher.state_dict()[k], v) for k, v in stats.items())
    assert all(p.grad is None for p in teacher.parameters())


# Toy anatomies for the safety rules: a BN is folded only where it reads a conv output that nothing else reads.


class _Block(nn.Module):
    def __init__(self, forward, **modules):
        super().__init__()
        for name, module in modules.items():
            setattr(self, name, module)
        self._forward = forward

    def forward(self, x):
        return self._forward(self, x)


class _Toy(ZooModel):
    def __init__(self, *blocks):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)

    def forward_stem(self, x):
        return x

    def stages(self):
        return [list(self.blocks)]

    def forward_head(self, x):
        return x.mean((2, 3))


def _conv():
    return nn.Conv2d(3, 3, 3, padding=1)


def _bn():
    return _randomize_batchnorm(nn.BatchNorm2d(3))


def _check_toy(model: _Toy, folded: int) -> None:
    model.eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        expected = model(x)
        frozen = freeze_teacher(model)
        _assert_same_logits(frozen(x), expected)
    assert len(foldable_pairs(model)) == folded


def test_a_conv_output_that_is_also_read_elsewhere_is_not_folded():
    def forward(b, x):
        y = b.conv(x)
        return b.bn(y) + y  # the residual needs the conv's own output

    _check_toy(_Toy(_Block(forward, conv=_conv(), bn=_bn())), 0)


def test_a_conv_called_twice_is_not_folded():
    _check_toy(_Toy(_Block(lambda b, x: b.bn(b.conv(x)) + b.conv(x), conv=_conv(), bn=_bn())), 0)


def test_a_batchnorm_after_a_function_of_the_conv_output_is_not_folded():
    _check_toy(_Toy(_Block(lambda b, x: b.bn(F.relu(b.conv(x))), conv=_conv(), bn=_bn())), 0)


def test_a_batchnorm_called_twice_is_not_folded():
    _check_toy(_Toy(_Block(lambda b, x: b.bn(b.bn(b.conv(x))), conv=_conv(), bn=_bn())), 0)


def test_a_conv_and_batchnorm_in_different_blocks_are_not_folded():
    # The block boundary is where the hybrid may put a student unit: never fold across it.
    _check_toy(_Toy(_Block(lambda b, x: b.conv(x), conv=_conv()), _Block(lambda b, x: b.bn(x), bn=_bn())), 0)


def test_a_conv_batchnorm_pair_on_one_branch_only_is_not_folded():
    def forward(b, x):
        y = b.conv(x)
        return b.bn(y) if x.shape[-1] == 8 else y  # a data-dependent branch: some paths skip the BN

    _check_toy(_Toy(_Block(forward, conv=_conv(), bn=_bn())), 0)


def test_a_plain_conv_batchnorm_block_is_folded():
    model = _Toy(_Block(lambda b, x: F.relu(b.bn(b.conv(x))), conv=_conv(), bn=_bn()))
    _check_toy(model, 1)
    assert fold_batchnorm(model) == 1 and isinstance(model.blocks[0].bn, nn.Identity)


def test_a_block_that_cannot_be_traced_keeps_its_batchnorms_and_says_so():
    def untraceable(b, x):
        y = b.bn(b.conv(x))
        return torch.stack([row for row in y])  # iterating over a traced tensor: torch.fx cannot trace it

    model = _Toy(_Block(lambda b, x: F.relu(b.bn(b.conv(x))), conv=_conv(), bn=_bn()),
                 _Block(untraceable, conv=_conv(), bn=_bn()))
    with pytest.warns(UnfoldedWarning, match=r"_Toy's stage 1 block 2 cannot be traced .*BatchNorms are not folded"):
        _check_toy(model, 1)  # the first block folds, the second keeps its BN, the logits stay the same
    with pytest.warns(UnfoldedWarning):
        frozen = freeze_teacher(model)
    assert isinstance(frozen.blocks[0].bn, nn.Identity) and isinstance(frozen.blocks[1].bn, nn.BatchNorm2d)


def test_every_zoo_model_folds_without_a_warning():
    import warnings

    for arch in models.ARCHS:
        with warnings.catch_warnings():
            warnings.simplefilter("error", UnfoldedWarning)
            foldable_pairs(models.build(arch, 10))


def test_a_method_on_the_folded_teacher_trains_and_saves_the_same_state():
    # The teacher is never part of a checkpoint, so folding it changes nothing that is saved or resumed.
    teacher = _teacher("wrn_16_2")
    plain = methods.build("iakd", models.build("wrn_16_1", 100), teacher, granularity="stage")
    folded = methods.build("iakd", models.build("wrn_16_1", 100), freeze_teacher(teacher), granularity="stage")
    assert plain.trainable_state_dict().keys() == folded.trainable_state_dict().keys()
    assert [p.shape for p in plain.trainable_parameters()] == [p.shape for p in folded.trainable_parameters()]
