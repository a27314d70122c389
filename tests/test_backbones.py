"""Backbones: shapes, the published parameter counts of ResNet-18/50, stems, norms, names."""

from __future__ import annotations

import pytest
import torch

from clvr.methods.backbones import backbone


def params(m):
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("name,features,count", [
    # torchvision's published counts without the 1000-way classifier (fc: F*1000 + 1000)
    ("resnet18", 512, 11_689_512 - (512 * 1000 + 1000)),
    ("resnet50", 2048, 25_557_032 - (2048 * 1000 + 1000)),
])
def test_resnets_match_the_published_architecture(name, features, count):
    m = backbone(name)
    assert m.num_features == features
    assert params(m) == count
    m.eval()
    out = m(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, features) and torch.isfinite(out).all()


def test_cifar_stem_keeps_resolution_for_small_images():
    img = torch.randn(2, 3, 32, 32)
    cifar, imagenet = backbone("resnet18", stem="cifar"), backbone("resnet18")
    feats = {}
    cifar.stages.register_forward_hook(lambda m, i, o: feats.__setitem__("cifar", o.shape))
    imagenet.stages.register_forward_hook(lambda m, i, o: feats.__setitem__("imagenet", o.shape))
    cifar(img), imagenet(img)
    assert feats["cifar"][-1] == 4 and feats["imagenet"][-1] == 1    # 32/8 vs 32/32


def test_layer_norm_makes_samples_independent():
    m = backbone("tiny", norm="layer").train()
    x = torch.randn(4, 3, 24, 24)
    alone = m(x[:1])
    together = m(x)[:1]
    assert torch.allclose(alone, together, atol=1e-5)
    b = backbone("tiny", norm="batch").train()
    assert not torch.allclose(b(x[:1].repeat(2, 1, 1, 1))[:1], b(x)[:1], atol=1e-3)


def test_unknown_names_and_options_are_errors():
    with pytest.raises(ValueError, match="did you mean 'resnet18'"):
        backbone("resnet-18")
    with pytest.raises(ValueError, match="stem"):
        backbone("resnet18", stem="tiny")
    with pytest.raises(ValueError, match="norm"):
        backbone("tiny", norm="instance")


def test_gradients_reach_the_first_layer():
    m = backbone("resnet18", stem="cifar")
    m(torch.randn(2, 3, 16, 16)).sum().backward()
    assert m.stem[0].weight.grad is not None and m.stem[0].weight.grad.abs().sum() > 0
