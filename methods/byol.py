"""BYOL (Grill et al., 2020): the online network predicts the target network's projection of
another view; the target is a slowly moving average of the online network. No negatives.

Online: ResNet + projector (4096 -> 256, BatchNorm) + predictor (4096 -> 256). Target: a copy of
backbone + projector whose momentum follows a cosine from 0.996 to 1 over training
(:func:`clvr.methods.momentum.byol_momentum`), updated in :meth:`BYOL.after_step`. With more than
two views the loss is the mean over pairs of views of the symmetrised loss. Each view goes
through the networks on its own (``per_view_bn``), so BatchNorm normalises it by its own batch.

Logs: the positive similarity is ``cos(p_i, z'_i)`` (prediction vs the target of the other
view); the negative one pairs a prediction with other images' targets. BYOL never uses them, but
they show collapse (all similarities near 1) at a glance.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .encoder import Encoder
from .errors import MethodError
from .heads import mlp_head
from .logs import contrast_logs, mean_logs
from .losses import byol
from .method import Method, MethodOutput, pairs
from .momentum import MomentumEncoder, byol_momentum
from .registry import register_method


def byol_logs(p: torch.Tensor, z: torch.Tensor) -> dict:
    sim = F.normalize(p.detach(), dim=1) @ F.normalize(z.detach(), dim=1).T
    return contrast_logs(sim, torch.arange(p.shape[0], device=p.device))


@register_method("byol")
class BYOL(Method):
    views = "two_view"
    recipe = "byol"
    training = {"optim": {"name": "lars", "lr": 0.2, "weight_decay": 1.5e-6, "momentum": 0.9},
                "schedule": {"kind": "cosine", "warmup_epochs": 10}, "epochs": 1000}
    paper = "Grill et al., Bootstrap Your Own Latent, NeurIPS 2020"
    reported = "74.3"
    collapse_hint = ("a known failure of methods without negatives under a wrong optimiser or lr: try optim.name=lars, "
                     "model.per_view_bn=true, a lower optim.lr or a higher model.base_momentum; when every view of an "
                     "image keeps a property the augmentation does not change (its brightness, contrast or colours), "
                     "BYOL learns that first: try model.input_norm=image (clvr.methods.small_images)")

    @dataclass
    class Config(Method.Config):
        hidden: int = 4096
        dim: int = 256
        predictor_hidden: int = 4096
        base_momentum: float = 0.996
        # each view through BatchNorm on its own, as the reference code runs them: with both views
        # in one batch, the statistics a view is normalised by carry the other view's content
        per_view_bn: bool = True
        # the predictor's lr as a multiple of optim.lr (1 in the paper; a faster predictor, as in
        # DirectPred and SimSiam's fixed-lr predictor, follows the changing targets)
        predictor_lr: float = 1.0

    @classmethod
    def check_config(cls, config) -> None:
        super().check_config(config)
        if not 0.0 <= config.base_momentum <= 1.0:
            raise MethodError(f"method {cls.name!r}: base_momentum must be in [0, 1], got {config.base_momentum}")
        if not config.predictor_lr > 0:
            raise MethodError(f"method {cls.name!r}: predictor_lr = {config.predictor_lr} must be positive "
                              "(a multiple of optim.lr)")

    def __init__(self, config=None, **kw):
        super().__init__(config, **kw)
        c = self.config
        backbone = self.make_backbone()
        self.online = Encoder(backbone, mlp_head(backbone.num_features, c.hidden, c.dim, batch_norm=True))
        self.predictor = mlp_head(c.dim, c.predictor_hidden, c.dim, batch_norm=True)
        self.target = MomentumEncoder(self.online)

    def objective(self, batch) -> MethodOutput:
        views = self.views_to_contrast(batch, at_least=2)
        apart = self.config.per_view_bn
        p = self.embed(lambda x: self.predictor(self.online(x)), views, separately=apart)
        z = self.embed(self.target, views, separately=apart)
        loss = torch.stack([byol(p[i], p[j], z[i], z[j]) for i, j in pairs(len(views))]).mean()
        logs = mean_logs([byol_logs(p[i], z[j]) for i, j in pairs(len(views), ordered=True)])
        return MethodOutput(loss, logs)

    def lr_scales(self) -> dict:
        return {self.predictor: self.config.predictor_lr}

    def after_step(self, step: int, total_steps: int) -> dict:
        m = byol_momentum(step, total_steps, self.config.base_momentum)
        self.target.update(self.online, m)
        return {"momentum": m}
