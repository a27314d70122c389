"""Image–text contrast, CLIP-style (Radford et al., 2021): an image encoder and a text encoder
map matching pairs close together; the other captions (images) of the batch, from every process,
are the negatives, in both directions, with a learnable temperature.

Image: ResNet + linear projection. Text: a small transformer over UTF-8 bytes
(:mod:`clvr.methods.text_encoder`), so no vocabulary is downloaded, + linear projection. The
temperature is ``1 / exp(logit_scale)``, learned from 0.07, and kept at or above 0.01 (CLIP
clips the scale at 100): :meth:`CLIP.after_step` clamps the parameter after each optimiser step. Reads the ``image_text`` views: one image view and ``batch.text``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .encoder import Encoder
from .errors import MethodError
from .logs import contrast_logs
from .losses import pairwise_info_nce
from .method import Method, MethodOutput
from .registry import register_method
from .text_encoder import text_encoder


@register_method("clip")
class CLIP(Method):
    views = "image_text"
    recipe = "simclr"
    in_batch_negatives = True
    paper = "Radford et al., Learning Transferable Visual Models From Natural Language Supervision, ICML 2021"

    @dataclass
    class Config(Method.Config):
        text: str = "bytes"             # bytes | bytes_tiny
        text_length: int = 77           # bytes kept per caption (with BOS and EOS)
        dim: int = 1024
        temperature: float = 0.07       # initial value; learned
        min_temperature: float = 0.01
        gather: bool = True

    def __init__(self, config=None, **kw):
        super().__init__(config, **kw)
        c = self.config
        self.gathers = c.gather
        backbone = self.make_backbone()
        try:
            words = text_encoder(c.text, max_length=c.text_length)
        except ValueError as e:
            raise MethodError(f"method {self.name!r}: {e}") from None
        self.image = Encoder(backbone, nn.Linear(backbone.num_features, c.dim, bias=False))
        self.text = Encoder(words, nn.Linear(words.num_features, c.dim, bias=False))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / c.temperature)))

    @property
    def encoder(self):
        return self.image.backbone

    def temperature(self) -> torch.Tensor:
        return torch.exp(-self.logit_scale.clamp(max=self.max_logit_scale))

    @property
    def max_logit_scale(self) -> float:
        return math.log(1 / self.config.min_temperature)

    def after_step(self, step: int, total_steps: int) -> dict:
        # clamp the parameter itself (a clamp in the forward alone has no gradient above the
        # bound, so the optimiser could push it ever further up and never bring it back)
        with torch.no_grad():
            self.logit_scale.clamp_(max=self.max_logit_scale)
        return {}

    def objective(self, batch) -> MethodOutput:
        image = self.view(batch, "image", 4)
        if batch.text is None or len(batch.text) != image.shape[0]:
            raise MethodError(f"method {self.name!r} needs one caption per image (batch.text); "
                              f"{self.describe_batch(batch)}")
        zi, zt = self.image(image), self.text(batch.text)
        t = self.temperature()
        loss = pairwise_info_nce(zi, zt, t, symmetric=True, gather=self.config.gather)
        with torch.no_grad():
            sim = F.normalize(zi, dim=1) @ F.normalize(zt, dim=1).T
        logs = contrast_logs(sim, torch.arange(sim.shape[0], device=sim.device))
        logs["temperature"] = t.detach()
        return MethodOutput(loss, logs)
