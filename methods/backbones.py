"""Backbones: ResNet-18/50 written here (clvr does not need torchvision), a tiny conv net for
tests, and any timm model by name when timm is installed.

Every backbone maps (B, 3, H, W) images to (B, F) features and says ``num_features = F``.

- ``stem="imagenet"``: 7x7 stride-2 convolution and max-pool, as in the paper;
  ``stem="cifar"``: one 3x3 stride-1 convolution and no pool, the usual choice for 32 px images.
- ``norm="batch"`` (default), ``"layer"``: LayerNorm over each sample's (C, H, W), as CPC v2
  uses (GroupNorm with one group), or ``"none"`` (CPC v1 used no normalisation).
- ``input_norm="image"``: each image is standardised by its own statistics before the first
  layer (:func:`standardize_images`); ``"none"`` (default) leaves the input as it comes. It is
  part of the network, so an exported encoder applies it wherever it is evaluated.
"""

from __future__ import annotations

import difflib

import torch
from torch import nn


INPUT_NORMS = ("none", "image")


def standardize_images(x: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """Each image of ``x`` (B, C, H, W) minus its own mean per channel, divided by its own
    standard deviation over (C, H, W) after that (``eps`` added to it): what is left is the
    image's pattern, without its mean colour, brightness and contrast."""
    x = x - x.mean(dim=(2, 3), keepdim=True)
    return x / (x.flatten(1).std(dim=1)[:, None, None, None] + eps)


def _check_input_norm(kind: str) -> str:
    if kind not in INPUT_NORMS:
        raise ValueError(f"input_norm = {kind!r}; choose {' or '.join(map(repr, INPUT_NORMS))}")
    return kind


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "layer":
        return nn.GroupNorm(1, channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"norm = {kind!r}; choose 'batch', 'layer' or 'none'")


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin, width, stride, norm):
        super().__init__()
        cout = width * self.expansion
        self.conv1 = nn.Conv2d(cin, width, 3, stride, 1, bias=False)
        self.bn1 = _norm(norm, width)
        self.conv2 = nn.Conv2d(width, cout, 3, 1, 1, bias=False)
        self.bn2 = _norm(norm, cout)
        self.shortcut = _shortcut(cin, cout, stride, norm)

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin, width, stride, norm):
        super().__init__()
        cout = width * self.expansion
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = _norm(norm, width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)      # stride here (v1.5)
        self.bn2 = _norm(norm, width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = _norm(norm, cout)
        self.shortcut = _shortcut(cin, cout, stride, norm)

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.bn2(self.conv2(y)))
        return torch.relu(self.bn3(self.conv3(y)) + self.shortcut(x))


def _shortcut(cin, cout, stride, norm):
    if stride == 1 and cin == cout:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), _norm(norm, cout))


class ResNet(nn.Module):
    def __init__(self, block, layers, stem: str = "imagenet", norm: str = "batch", width: int = 64,
                 input_norm: str = "none"):
        super().__init__()
        self.input_norm = _check_input_norm(input_norm)
        if stem == "imagenet":
            self.stem = nn.Sequential(nn.Conv2d(3, width, 7, 2, 3, bias=False), _norm(norm, width),
                                      nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
        elif stem == "cifar":
            self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), _norm(norm, width),
                                      nn.ReLU(inplace=True))
        else:
            raise ValueError(f"stem = {stem!r}; choose 'imagenet' or 'cifar'")
        stages, cin = [], width
        for i, n in enumerate(layers):
            w = width * 2 ** i
            blocks = []
            for j in range(n):
                blocks.append(block(cin, w, 2 if (j == 0 and i > 0) else 1, norm))
                cin = w * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.num_features = cin
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        if self.input_norm == "image":
            x = standardize_images(x)
        return self.stages(self.stem(x)).mean(dim=(2, 3))


class TinyConvNet(nn.Module):
    """Three strided convolutions: a backbone for fast tests."""

    def __init__(self, width: int = 16, norm: str = "batch", input_norm: str = "none"):
        super().__init__()
        self.input_norm = _check_input_norm(input_norm)
        layers, cin = [], 3
        for w in (width, 2 * width, 4 * width):
            layers += [nn.Conv2d(cin, w, 3, 2, 1, bias=False), _norm(norm, w), nn.ReLU(inplace=True)]
            cin = w
        self.body = nn.Sequential(*layers)
        self.num_features = cin

    def forward(self, x):
        if self.input_norm == "image":
            x = standardize_images(x)
        return self.body(x).mean(dim=(2, 3))


BACKBONES = {
    "resnet18": lambda **kw: ResNet(BasicBlock, [2, 2, 2, 2], **kw),
    "resnet34": lambda **kw: ResNet(BasicBlock, [3, 4, 6, 3], **kw),
    "resnet50": lambda **kw: ResNet(Bottleneck, [3, 4, 6, 3], **kw),
    "tiny": lambda stem=None, **kw: TinyConvNet(**kw),      # one stem for every size
}


def backbone(name: str, **options) -> nn.Module:
    """A backbone by name: ``resnet18``, ``resnet34``, ``resnet50``, ``tiny``, or ``timm:NAME``
    (any timm model, without its classifier; needs ``pip install timm``)."""
    if name.startswith("timm:"):
        try:
            import timm
        except ImportError:
            raise ValueError(f"backbone {name!r} needs timm: pip install 'clvr[timm]'") from None
        model = timm.create_model(name[5:], pretrained=False, num_classes=0, **options)
        return model
    if name not in BACKBONES:
        near = difflib.get_close_matches(name, BACKBONES, n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)} or timm:NAME{hint}")
    return BACKBONES[name](**options)
