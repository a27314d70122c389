"""Video backbones: clips (B, T, 3, H, W) -> features (B, F), with ``num_features = F``.

- :class:`FrameBackbone` runs any 2D backbone on every frame and pools over time (mean or max);
  it sees no motion: the frames could come in any order.
- :class:`R2Plus1D`: the (2+1)D ResNet of Tran et al. 2018 ("A Closer Look at Spatiotemporal
  Convolutions for Action Recognition"). Each t x d x d 3D convolution from Nin to Nout channels
  becomes a 1 x d x d spatial convolution to M channels, BN, ReLU and a t x 1 x 1 temporal
  convolution to Nout, with M = floor(t d^2 Nin Nout / (d^2 Nin + t Nout)) so that it has about the
  parameters of the 3D convolution it replaces. Stages 2.. halve time as well as space.

Names for :func:`video_backbone`: ``r2plus1d_18``, ``r2plus1d_tiny`` (for tests) and
``frames:NAME`` (any name :func:`clvr.methods.backbones.backbone` knows, e.g. ``frames:resnet18``).
"""

from __future__ import annotations

import difflib

import torch
from torch import nn

from .backbones import BACKBONES, backbone

POOLS = ("mean", "max")


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm3d(channels)
    if kind == "layer":
        return nn.GroupNorm(1, channels)
    raise ValueError(f"norm = {kind!r}; choose 'batch' or 'layer'")


def _check_clips(x: torch.Tensor) -> None:
    if x.dim() != 5:
        raise ValueError(f"expected clips (B, T, C, H, W), got a tensor of shape {tuple(x.shape)}")


class FrameBackbone(nn.Module):
    """A 2D backbone applied to each frame (all frames in one call), then pooled over time."""

    def __init__(self, image_backbone: nn.Module, pool: str = "mean"):
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"pool = {pool!r}; choose one of {', '.join(POOLS)}")
        if not hasattr(image_backbone, "num_features"):
            raise TypeError(f"{type(image_backbone).__name__} has no num_features: not a backbone")
        self.image_backbone = image_backbone
        self.pool = pool
        self.num_features = image_backbone.num_features

    def forward(self, x):
        _check_clips(x)
        b, t = x.shape[:2]
        feats = self.image_backbone(x.reshape(b * t, *x.shape[2:])).view(b, t, -1)
        return feats.mean(dim=1) if self.pool == "mean" else feats.amax(dim=1)


def mid_channels(cin: int, cout: int, t: int = 3, d: int = 3) -> int:
    """The paper's M: the (2+1)D pair then has about the parameters of the t x d x d conv."""
    return (t * d * d * cin * cout) // (d * d * cin + t * cout)


class Conv2Plus1D(nn.Module):
    """A t x d x d convolution factorised: spatial 1 x d x d (to ``mid`` channels), norm, ReLU,
    temporal t x 1 x 1. No norm after the temporal convolution: the caller adds it."""

    def __init__(self, cin: int, cout: int, t: int = 3, d: int = 3, spatial_stride: int = 1,
                 temporal_stride: int = 1, mid: int | None = None, norm: str = "batch"):
        super().__init__()
        mid = mid_channels(cin, cout, t, d) if mid is None else mid
        self.spatial = nn.Conv3d(cin, mid, (1, d, d), (1, spatial_stride, spatial_stride),
                                 (0, d // 2, d // 2), bias=False)
        self.norm = _norm(norm, mid)
        self.temporal = nn.Conv3d(mid, cout, (t, 1, 1), (temporal_stride, 1, 1), (t // 2, 0, 0),
                                  bias=False)

    def forward(self, x):
        return self.temporal(torch.relu(self.norm(self.spatial(x))))


class Block2Plus1D(nn.Module):
    """A basic residual block of two factorised 3x3x3 convolutions; ``stride`` applies to time
    and space (kernel 3, padding 1: T = 1 or 2 becomes 1, T = 2k becomes k)."""

    def __init__(self, cin: int, cout: int, stride: int, norm: str):
        super().__init__()
        self.conv1 = Conv2Plus1D(cin, cout, spatial_stride=stride, temporal_stride=stride, norm=norm)
        self.bn1 = _norm(norm, cout)
        self.conv2 = Conv2Plus1D(cout, cout, norm=norm)
        self.bn2 = _norm(norm, cout)
        if stride == 1 and cin == cout:
            self.shortcut = nn.Identity()
        else:
            self.shortcut = nn.Sequential(nn.Conv3d(cin, cout, 1, stride, bias=False), _norm(norm, cout))

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class R2Plus1D(nn.Module):
    """R(2+1)D ResNet. Stem: factorised 3 x 7 x 7 convolution, stride 2 in space only, with the
    paper's 45 middle channels at ``width`` 64 (``45 * width // 64`` otherwise); then stages of
    ``width * 2**i`` channels, each after the first starting with stride 2 in time and space;
    global average pool over (T, H, W)."""

    def __init__(self, layers=(2, 2, 2, 2), width: int = 64, norm: str = "batch"):
        super().__init__()
        layers = tuple(layers)
        if not layers or any(int(n) != n or n < 1 for n in layers):
            raise ValueError(f"layers = {layers!r}; give one positive block count per stage")
        if width < 1:
            raise ValueError(f"width = {width!r}; must be a positive number of channels")
        self.stem = nn.Sequential(
            Conv2Plus1D(3, width, t=3, d=7, spatial_stride=2, mid=max(1, 45 * width // 64), norm=norm),
            _norm(norm, width), nn.ReLU(inplace=True))
        stages, cin = [], width
        for i, n in enumerate(layers):
            w = width * 2 ** i
            blocks = []
            for j in range(n):
                blocks.append(Block2Plus1D(cin, w, 2 if (j == 0 and i > 0) else 1, norm))
                cin = w
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.num_features = cin
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        _check_clips(x)
        if x.shape[2] != 3:
            raise ValueError(f"expected clips (B, T, 3, H, W), got a tensor of shape {tuple(x.shape)}")
        x = x.permute(0, 2, 1, 3, 4)                     # (B, 3, T, H, W) for Conv3d
        return self.stages(self.stem(x)).mean(dim=(2, 3, 4))


VIDEO_BACKBONES = {
    "r2plus1d_18": dict(layers=(2, 2, 2, 2), width=64),
    "r2plus1d_tiny": dict(layers=(1, 1, 1, 1), width=8),
}


def video_backbone(name: str, **options) -> nn.Module:
    """A video backbone by name: ``r2plus1d_18``, ``r2plus1d_tiny`` or ``frames:NAME``.

    Options go to :class:`R2Plus1D` (``norm``, or ``layers``/``width`` to override the name's);
    for ``frames:NAME``, ``pool`` goes to :class:`FrameBackbone` and the rest to the image
    backbone, e.g. ``video_backbone("frames:resnet18", pool="max", stem="cifar")``."""
    if name.startswith("frames:"):
        pool = options.pop("pool", "mean")
        if pool not in POOLS:      # before building a possibly large image backbone
            raise ValueError(f"pool = {pool!r}; choose one of {', '.join(POOLS)}")
        return FrameBackbone(backbone(name[len("frames:"):], **options), pool=pool)
    if name not in VIDEO_BACKBONES:
        known = list(VIDEO_BACKBONES) + [f"frames:{n}" for n in BACKBONES]
        near = difflib.get_close_matches(name, known, n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise ValueError(f"unknown video backbone {name!r}; choose one of "
                         f"{', '.join(VIDEO_BACKBONES)} or frames:NAME (NAME an image backbone){hint}")
    return R2Plus1D(**{**VIDEO_BACKBONES[name], **options})
