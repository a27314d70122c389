"""PIRL (Misra & van der Maaten, 2020): the representation of an image and of its jigsaw-shuffled
patches should both match the image's memory-bank entry.

Image branch: ResNet + linear head (``head = mlp_bn``: an MLP with BatchNorm) -> f (128-d). Jigsaw branch: the same ResNet on each of the 9
patches, a linear head per patch (128-d), the 9 concatenated in their shuffled order (1152-d) and a
linear map to g (128-d). Both are L2-normalised. With the bank entry m of each image and noise
entries drawn from the bank (32000; each term draws its own, as VISSL does, and never the
image's own row: see :mod:`clvr.methods.instdisc`),

    loss = lambda * NCE(m, g) + (1 - lambda) * NCE(m, f),   lambda = 0.5,

and the bank then moves towards f. Both NCE terms share one Z (as VISSL's PIRL), fixed on the
first batch from both terms' noise similarities.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .errors import MethodError
from .instdisc import MemoryBankMethod
from .method import Method, MethodOutput
from .registry import register_method


@register_method("pirl")
class PIRL(MemoryBankMethod):
    views = "jigsaw"
    recipe = "pirl"
    paper = "Misra & van der Maaten, Self-Supervised Learning of Pretext-Invariant Representations, CVPR 2020"
    reported = "63.6"

    @dataclass
    class Config(Method.Config):
        dim: int = 128
        negatives: int = 32000
        temperature: float = 0.07
        bank_momentum: float = 0.5
        shared_negatives: bool = True
        jigsaw_weight: float = 0.5      # lambda
        loss: str = "nce"               # nce (the paper's) | softmax (see clvr.methods.instdisc)
        head: str = "linear"            # the image branch's head: linear (the paper's) | mlp_bn
        hidden: int = 2048              # the mlp_bn head's hidden width

    @classmethod
    def check_config(cls, config) -> None:
        super().check_config(config)
        if not 0.0 <= config.jigsaw_weight <= 1.0:
            raise MethodError(f"method {cls.name!r}: jigsaw_weight must be in [0, 1], got {config.jigsaw_weight}")

    def __init__(self, config=None, **kw):
        super().__init__(config, **kw)
        c = self.config
        self.backbone = self.make_backbone()
        width = self.backbone.num_features
        self.image_head = self.projection(width)
        self.patch_head = nn.Linear(width, c.dim)
        self.jigsaw_head = nn.Linear(9 * c.dim, c.dim)
        self.make_bank(c.dim)
        # one Z for both NCE terms (VISSL's PIRL), estimated on the first batch from both terms' noise
        self.register_buffer("log_z_value", torch.tensor(math.nan))

    @property
    def projection_head(self) -> nn.Module:
        return self.image_head

    def objective(self, batch) -> MethodOutput:
        c = self.config
        image = self.view(batch, "image", 4)
        patches = self.view(batch, "patches", 5)
        b, cells = patches.shape[:2]
        if cells != 9:
            raise MethodError(f"method {self.name!r} needs 9 jigsaw patches per image, got {cells}")
        f = F.normalize(self.image_head(self.backbone(image)), dim=1)
        per_patch = self.patch_head(self.backbone(patches.flatten(0, 1)))
        g = F.normalize(self.jigsaw_head(per_patch.reshape(b, 9 * c.dim)), dim=1)

        memory = self.bank.get(batch.index)
        # each term draws its own noise (VISSL's PIRL), never the sample's own row
        noise_g, keep_g = self.noise(batch.index)
        noise_f, keep_f = self.noise(batch.index)
        pos_g, neg_g = (g * memory).sum(1), self.similarities(g, noise_g)
        pos_f, neg_f = (f * memory).sum(1), self.similarities(f, noise_f)
        if c.loss == "nce":
            both_keep = None if keep_g is None else torch.cat([keep_g, keep_f])
            self.log_z(self.log_z_value, torch.cat([neg_g, neg_f]), both_keep)
        loss_jigsaw = self.contrast(pos_g, neg_g, keep_g, self.log_z_value)
        loss_image = self.contrast(pos_f, neg_f, keep_f, self.log_z_value)
        loss = c.jigsaw_weight * loss_jigsaw + (1 - c.jigsaw_weight) * loss_image
        self.bank.update(batch.index, f)
        logs = self.scored(pos_g, neg_g, keep_g)
        logs.update(loss_jigsaw=loss_jigsaw.detach(), loss_image=loss_image.detach())
        return MethodOutput(loss, logs)
