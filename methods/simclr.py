"""SimCLR (Chen et al., 2020): NT-Xent between views of the same images, the other views of the
(global) batch as negatives.

Every view goes through one encoder (ResNet + a 2048-2048-128 MLP head with BatchNorm). With
more than two views (``two_view`` with ``views=N``, or ``multi_crop``) the loss is the mean of
NT-Xent over every pair of views.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .encoder import Encoder
from .heads import mlp_head
from .logs import contrast_logs, mean_logs
from .losses import nt_xent
from .method import Method, MethodOutput, pairs
from .registry import register_method


def nt_xent_logs(z1: torch.Tensor, z2: torch.Tensor) -> dict:
    """:mod:`.logs` of NT-Xent's 2N anchors over this process's 2N views (self excluded)."""
    a = F.normalize(torch.cat([z1, z2]).detach(), dim=1)
    n = z1.shape[0]
    rows = torch.arange(2 * n, device=a.device)
    exclude = torch.eye(2 * n, dtype=torch.bool, device=a.device)
    return contrast_logs(a @ a.T, (rows + n) % (2 * n), exclude)


@register_method("simclr")
class SimCLR(Method):
    views = "two_view"
    recipe = "simclr"
    in_batch_negatives = True
    training = {"optim": {"name": "lars", "lr": 0.3, "weight_decay": 1e-6, "momentum": 0.9},
                "schedule": {"kind": "cosine", "warmup_epochs": 10}, "epochs": 1000}
    paper = "Chen et al., A Simple Framework for Contrastive Learning of Visual Representations, ICML 2020"
    reported = "69.3"

    @dataclass
    class Config(Method.Config):
        hidden: int = 2048
        dim: int = 128
        temperature: float = 0.1
        gather: bool = True           # negatives from every process (and gradients through them)

    def __init__(self, config=None, **kw):
        super().__init__(config, **kw)
        c = self.config
        self.gathers = c.gather
        backbone = self.make_backbone()
        self.online = Encoder(backbone, mlp_head(backbone.num_features, c.hidden, c.dim, batch_norm=True))

    def objective(self, batch) -> MethodOutput:
        z = self.embed(self.online, self.views_to_contrast(batch, at_least=2))
        c = self.config
        loss = torch.stack([nt_xent(z[i], z[j], c.temperature, gather=c.gather)
                            for i, j in pairs(len(z))]).mean()
        return MethodOutput(loss, mean_logs([nt_xent_logs(z[i], z[j]) for i, j in pairs(len(z))]))
