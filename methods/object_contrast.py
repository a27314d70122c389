"""Object-level contrast: two views of each object (a box of the image) are positives; the other
objects of the batch, from every process, are negatives.

Reads the ``object_crops`` views (B, K, 2, 3, S, S) with their ``mask`` (objects that exist),
``parent`` (the image) and ``source`` (which box of the image). One encoder (ResNet + MLP head)
embeds both views; the loss is the symmetric in-batch InfoNCE of
:func:`clvr.methods.losses.pairwise_info_nce`. Two picks of the same box (an image with fewer
boxes than K) are not each other's negatives. With ``image_weight`` > 0 an image-level term is
added: the mean embedding of an image's objects in one view against the other view's, the other
images as negatives.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .encoder import Encoder
from .errors import MethodError
from .heads import mlp_head
from .logs import contrast_logs
from .losses import pairwise_info_nce
from .method import Method, MethodOutput
from .registry import register_method


@register_method("object_contrast")
class ObjectContrast(Method):
    views = "object_crops"
    recipe = "simclr"
    in_batch_negatives = True
    paper = "object-level contrast over boxes, in the spirit of DetCon / SoCo / ORL"

    @dataclass
    class Config(Method.Config):
        hidden: int = 2048
        dim: int = 128
        temperature: float = 0.1
        gather: bool = True
        image_weight: float = 0.0

    @classmethod
    def check_config(cls, config) -> None:
        super().check_config(config)
        if config.image_weight < 0:
            raise MethodError(f"method {cls.name!r}: image_weight must be >= 0, got {config.image_weight}")

    def __init__(self, config=None, **kw):
        super().__init__(config, **kw)
        c = self.config
        self.gathers = c.gather
        backbone = self.make_backbone()
        self.online = Encoder(backbone, mlp_head(backbone.num_features, c.hidden, c.dim, batch_norm=True))

    def objective(self, batch) -> MethodOutput:
        c = self.config
        objects = self.view(batch, "objects", 6)                    # (B, K, 2, 3, S, S)
        b, k = objects.shape[:2]
        mask = self.view(batch, "mask", 2)
        za, zb = self.embed(self.online, [objects[:, :, 0].flatten(0, 1), objects[:, :, 1].flatten(0, 1)])
        valid = mask.flatten()
        group = self.object_identity(batch, b, k)
        loss = pairwise_info_nce(za, zb, c.temperature, gather=c.gather, valid=valid, group=group)
        logs = self.logs(za, zb, valid, group)
        if c.image_weight > 0:
            w = mask.to(za.dtype)[:, :, None]
            ia = (za.reshape(b, k, -1) * w).sum(1) / w.sum(1).clamp(min=1)
            ib = (zb.reshape(b, k, -1) * w).sum(1) / w.sum(1).clamp(min=1)
            image_loss = pairwise_info_nce(ia, ib, c.temperature, gather=c.gather, valid=mask.any(1))
            logs["loss_image"] = image_loss.detach()
            loss = loss + c.image_weight * image_loss
        return MethodOutput(loss, logs)

    @staticmethod
    def object_identity(batch, b: int, k: int) -> torch.Tensor:
        """(B*K,) one id per distinct object: image index and box row (without a ``source``
        extra, every pick counts as its own object)."""
        source = batch.extras.get("source")
        if source is None:
            source = torch.arange(k, device=batch.index.device).expand(b, k)
        return (batch.index[:, None] * (1 << 20) + source).flatten()

    @staticmethod
    @torch.no_grad()
    def logs(za, zb, valid, group) -> dict:
        a, p = F.normalize(za[valid], dim=1), F.normalize(zb[valid], dim=1)
        g = group[valid]
        n = a.shape[0]
        if n == 0:      # no object in this batch: the logs say so rather than vanish
            nan = torch.tensor(float("nan"), device=za.device)
            return {"pos_sim": nan, "neg_sim": nan, "pos_acc": nan}
        eye = torch.eye(n, dtype=torch.bool, device=a.device)
        return contrast_logs(a @ p.T, torch.arange(n, device=a.device), (g[:, None] == g[None, :]) & ~eye)
