"""The model zoo: the CIFAR networks of RepDistiller / mdistiller, and torchvision's ImageNet ResNets.

Every CIFAR model has exactly the state_dict keys and shapes of the reference zoo (so the teachers users
already have, ``<arch>_vanilla/ckpt_epoch_240.pth`` with ``{"model": state_dict}``, load strictly) and computes
the same function: same layer order, activations and pooling. The only liberty taken is global average
pooling instead of a fixed ``AvgPool2d(8)``, which is the same operation at 32x32 and also works on smaller
inputs.

Every model also exposes its anatomy, the view that swapping-in needs: ``forward_stem``, ``stages()`` (a list
of stages, each a list of blocks that are called in order) and ``forward_head``; ``forward`` is exactly
``forward_head(blocks(forward_stem(x)))``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from iakd.errors import ConfigError

__all__ = ["ARCHS", "ZooModel", "build", "blocks_per_stage"]


class ZooModel(nn.Module):
    """A classifier cut into stem, stages of blocks and head."""

    input_size: int = 32

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def stages(self) -> list[list[nn.Module]]:
        raise NotImplementedError

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_stem(x)
        for stage in self.stages():
            for block in stage:
                x = block(x)
        return self.forward_head(x)


def _init_weights(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


# ---------------------------------------------------------------------------------------------------------
# CIFAR ResNets (post-activation basic blocks): resnet8 ... resnet110, resnet8x4, resnet32x4


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(out + shortcut)


class CifarResNet(ZooModel):
    def __init__(self, depth: int, widths: tuple[int, int, int, int], num_classes: int):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"resnet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        in_planes = widths[0]
        for i, (planes, stride) in enumerate(zip(widths[1:], (1, 2, 2)), start=1):
            blocks = [BasicBlock(in_planes if j == 0 else planes, planes, stride if j == 0 else 1) for j in range(n)]
            setattr(self, f"layer{i}", nn.Sequential(*blocks))
            in_planes = planes
        self.fc = nn.Linear(widths[3], num_classes)
        _init_weights(self)

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn1(self.conv1(x)))

    def stages(self) -> list[list[nn.Module]]:
        return [list(self.layer1), list(self.layer2), list(self.layer3)]

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


# ---------------------------------------------------------------------------------------------------------
# Wide ResNets (pre-activation): wrn_16_1, wrn_16_2, wrn_40_1, wrn_40_2


class PreActBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.equal_in_out = in_planes == planes
        self.convShortcut = None if self.equal_in_out else nn.Conv2d(in_planes, planes, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn1(x))
        out = self.conv2(F.relu(self.bn2(self.conv1(pre))))
        # Like the reference zoo: an identity shortcut carries the raw input, a projection the pre-activated one.
        shortcut = x if self.equal_in_out else self.convShortcut(pre)
        return out + shortcut


class _WideStage(nn.Module):
    """Holds a stage under the attribute ``layer`` so that keys read ``block1.layer.0...`` as in the zoo."""

    def __init__(self, blocks: list[nn.Module]):
        super().__init__()
        self.layer = nn.Sequential(*blocks)


class WideResNet(ZooModel):
    def __init__(self, depth: int, widen: int, num_classes: int):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"wrn depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        for i, stride in enumerate((1, 2, 2), start=1):
            blocks = [PreActBlock(widths[i - 1] if j == 0 else widths[i], widths[i], stride if j == 0 else 1)
                      for j in range(n)]
            setattr(self, f"block{i}", _WideStage(blocks))
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes)
        _init_weights(self)
        nn.init.zeros_(self.fc.bias)

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv1(x)

    def stages(self) -> list[list[nn.Module]]:
        return [list(self.block1.layer), list(self.block2.layer), list(self.block3.layer)]

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


# ---------------------------------------------------------------------------------------------------------
# VGG with BatchNorm: vgg8, vgg11, vgg13, vgg16, vgg19. A stage is one conv group ``block{i}``; its blocks
# are the group's conv-BN-ReLU layers. The group's last layer has no ReLU module (the zoo drops it and
# applies F.relu in forward), and a max-pool follows groups 0-2 (and 3 on 64x64 inputs).

_VGG_GROUPS = {
    "vgg8": [[64], [128], [256], [512], [512]],
    "vgg11": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "vgg16": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    "vgg19": [[64, 64], [128, 128], [256] * 4, [512] * 4, [512] * 4],
}


class _VggLayer(nn.Module):
    """One conv-BN-ReLU of a group, a view over the group's modules; a group's last layer also pools."""

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d, pool: str):
        super().__init__()
        self.conv, self.bn, self.pool = conv, bn, pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.conv(x)))
        # The zoo pools after groups 0-2 always, and after group 3 only for 64x64 inputs (8x8 there).
        if self.pool == "always" or (self.pool == "if_8x8" and x.shape[-1] == 8):
            x = F.max_pool2d(x, 2, 2)
        return x


class VGG(ZooModel):
    def __init__(self, groups: list[list[int]], num_classes: int):
        super().__init__()
        in_ch = 3
        for i, widths in enumerate(groups):
            layers: list[nn.Module] = []
            for w in widths:
                layers += [nn.Conv2d(in_ch, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
                in_ch = w
            setattr(self, f"block{i}", nn.Sequential(*layers[:-1]))
        self.classifier = nn.Linear(in_ch, num_classes)
        _init_weights(self)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.classifier.weight, 0.0, 0.01)
        # A plain list is not registered by nn.Module, so the views add no state_dict keys.
        self._views = [self._group_views(i, len(groups)) for i in range(len(groups))]

    def _group_views(self, i: int, num_groups: int) -> list[nn.Module]:
        group = getattr(self, f"block{i}")
        n = (len(group) + 1) // 3
        last_pool = "always" if i < 3 else ("if_8x8" if i == 3 and num_groups == 5 else "never")
        return [_VggLayer(group[3 * j], group[3 * j + 1], last_pool if j == n - 1 else "never") for j in range(n)]

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def stages(self) -> list[list[nn.Module]]:
        return [list(views) for views in self._views]

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


# ---------------------------------------------------------------------------------------------------------
# torchvision ImageNet ResNets, with torchvision's own state_dict keys


@functools.cache
def imagenet_resnet_class() -> type[ZooModel]:
    """torchvision's ResNet cut into stem, stages and head. Made on first use: importing torchvision takes
    seconds, which every process (each trial, each command) would pay for the three ImageNet architectures."""
    import torchvision

    class ImageNetResNet(torchvision.models.ResNet, ZooModel):
        input_size = 224

        def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
            return self.maxpool(self.relu(self.bn1(self.conv1(x))))

        def stages(self) -> list[list[nn.Module]]:
            return [list(self.layer1), list(self.layer2), list(self.layer3), list(self.layer4)]

        def forward_head(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.flatten(self.avgpool(x), 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return ZooModel.forward(self, x)

    return ImageNetResNet


def _imagenet_resnet(block: str, layers: list[int], num_classes: int) -> ZooModel:
    import torchvision

    return imagenet_resnet_class()(getattr(torchvision.models.resnet, block), layers, num_classes=num_classes)


_BUILDERS: dict[str, Callable[[int], ZooModel]] = {
    **{f"resnet{d}": (lambda c, d=d: CifarResNet(d, (16, 16, 32, 64), c)) for d in (8, 14, 20, 32, 44, 56, 110)},
    "resnet8x4": lambda c: CifarResNet(8, (32, 64, 128, 256), c),
    "resnet32x4": lambda c: CifarResNet(32, (32, 64, 128, 256), c),
    **{f"wrn_{d}_{k}": (lambda c, d=d, k=k: WideResNet(d, k, c)) for d in (16, 40) for k in (1, 2)},
    **{name: (lambda c, g=groups: VGG(g, c)) for name, groups in _VGG_GROUPS.items()},
    "resnet18": lambda c: _imagenet_resnet("BasicBlock", [2, 2, 2, 2], c),
    "resnet34": lambda c: _imagenet_resnet("BasicBlock", [3, 4, 6, 3], c),
    "resnet50": lambda c: _imagenet_resnet("Bottleneck", [3, 4, 6, 3], c),
}

ARCHS: tuple[str, ...] = tuple(_BUILDERS)


def build(arch: str, num_classes: int) -> ZooModel:
    """Build a zoo model with freshly initialised weights (nothing is downloaded)."""
    if arch not in _BUILDERS:
        raise ConfigError(f"unknown architecture {arch!r}; known: {', '.join(ARCHS)}")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"num_classes must be a positive integer, got {num_classes!r}")
    return _BUILDERS[arch](num_classes)


@functools.cache
def blocks_per_stage(arch: str) -> tuple[int, ...]:
    """The number of blocks in each stage of ``arch`` (what granularities are checked against)."""
    return tuple(len(stage) for stage in build(arch, 10).stages())
