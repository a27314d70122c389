"""``Encoder``: a backbone followed by a projection head, the network most methods train.

``Encoder(x)`` maps images (or clips) to projections; ``encoder.backbone`` alone gives the
representation that evaluation and export use. Methods with a momentum (key or target) copy
copy the whole ``Encoder`` (:class:`clvr.methods.momentum.MomentumEncoder`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Encoder(nn.Module):
    def __init__(self, backbone: nn.Module, head: nn.Module | None = None, normalize: bool = False):
        super().__init__()
        self.backbone = backbone
        self.head = head if head is not None else nn.Identity()
        self.normalize = normalize

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.head(self.backbone(x))
        return F.normalize(z, dim=1) if self.normalize else z
