import json

import pytest
import torch
import torch.nn.functional as F
import torchvision
from conftest import REFERENCE

from iakd import models
from iakd.errors import ConfigError

CIFAR_ARCHS = [a for a in models.ARCHS if a not in ("resnet18", "resnet34", "resnet50")]


@pytest.fixture(scope="module")
def reference():
    return json.loads(REFERENCE.read_text())


@pytest.mark.parametrize("arch", CIFAR_ARCHS)
def test_cifar_state_dict_keys_and_shapes_equal_reference_zoo(arch, reference):
    model = models.build(arch, 100)
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert shapes == reference[arch]["keys"]
    assert sum(p.numel() for p in model.parameters()) == reference[arch]["params"]


@pytest.mark.parametrize("arch", CIFAR_ARCHS)
def test_cifar_model_maps_batch_to_logits(arch):
    assert models.build(arch, 7)(torch.randn(2, 3, 32, 32)).shape == (2, 7)


@pytest.mark.parametrize("arch", CIFAR_ARCHS)
def test_repdistiller_format_checkpoint_loads_strictly(arch, tmp_path):
    source = models.build(arch, 100)
    torch.save({"model": source.state_dict(), "epoch": 240}, tmp_path / "ckpt_epoch_240.pth")
    target = models.build(arch, 100)
    target.load_state_dict(torch.load(tmp_path / "ckpt_epoch_240.pth", weights_only=True)["model"], strict=True)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(source.eval()(x), target.eval()(x))


@pytest.mark.parametrize("arch", ["resnet18", "resnet34", "resnet50"])
def test_imagenet_resnet_keys_match_torchvision_and_forward_is_the_same(arch):
    model = models.build(arch, 1000).eval()
    reference = getattr(torchvision.models, arch)(weights=None).eval()
    reference.load_state_dict(model.state_dict(), strict=True)  # a torchvision weights file loads as it is
    x = torch.randn(1, 3, 224, 224)
    out = model(x)
    assert out.shape == (1, 1000)
    assert torch.allclose(out, reference(x), atol=1e-5)


def test_wrn_forward_is_the_preactivation_network_computed_by_hand():
    m = models.build("wrn_16_2", 10).eval()
    x = torch.randn(2, 3, 32, 32)

    def block(b, x):
        pre = F.relu(b.bn1(x))
        out = b.conv2(F.relu(b.bn2(b.conv1(pre))))
        return out + (x if b.convShortcut is None else b.convShortcut(pre))

    h = m.conv1(x)
    for stage in (m.block1, m.block2, m.block3):
        for b in stage.layer:
            h = block(b, h)
    expected = m.fc(F.avg_pool2d(F.relu(m.bn1(h)), 8).flatten(1))
    assert torch.allclose(m(x), expected, atol=1e-6)


def test_vgg_forward_is_groups_relu_and_pools_computed_by_hand():
    m = models.build("vgg13", 10).eval()
    x = torch.randn(2, 3, 32, 32)
    h = x
    for i in range(5):
        h = F.relu(getattr(m, f"block{i}")(h))
        if i < 3:
            h = F.max_pool2d(h, 2, 2)
    expected = m.classifier(F.adaptive_avg_pool2d(h, 1).flatten(1))
    assert torch.allclose(m(x), expected, atol=1e-6)


def test_resnet_forward_is_stem_blocks_and_pool_computed_by_hand():
    m = models.build("resnet20", 10).eval()
    x = torch.randn(2, 3, 32, 32)
    h = F.relu(m.bn1(m.conv1(x)))
    for layer in (m.layer1, m.layer2, m.layer3):
        for b in layer:
            m_out = b.bn2(b.conv2(F.relu(b.bn1(b.conv1(h)))))
            h = F.relu(m_out + (h if b.downsample is None else b.downsample(h)))
    expected = m.fc(F.avg_pool2d(h, 8).flatten(1))
    assert torch.allclose(m(x), expected, atol=1e-6)


def test_unknown_architecture_lists_the_known_ones():
    with pytest.raises(ConfigError, match="unknown architecture 'resnet9'.*resnet8.*wrn_40_2.*vgg13"):
        models.build("resnet9", 10)
