"""CPC v1 (van den Oord et al., 2018) and v2 (Hénaff et al., 2019): predict the embeddings of
patches further down the image from the context of the patches above.

The image is cut into a 7 x 7 grid of overlapping 64-px patches (the ``cpc_grid`` views); the
backbone embeds each patch (mean-pooled), a masked context network reads the rows above and
predicts each of the ``steps`` rows after the next ``skip`` (:class:`~clvr.methods.cpc_context.CPCContext`),
and InfoNCE scores each prediction against every patch of the batch (:func:`clvr.methods.losses.cpc`).
The prediction maps start at zero (``predict_init``): with random ones, the random predictions
scored the patches with noise, and the encoder's quickest way to lower that loss was to give
every patch the same embedding; it collapsed in the first epoch and escaped after 16 to 33
epochs, by seed (the digits benchmark: kNN 74.4 to 93.3). From zero, the maps first learn to
predict from the random features, and the encoder learns from a useful signal.
Rows whose patches overlap the context's last row are skipped (``skip = 1``, Greedy InfoMax's
``skip_step``: with 64-px patches at stride 32 the next row shares half its pixels with the
context, and predicting it is copying, not understanding); training refuses a grid whose first
predicted row would still overlap.

Evaluation reads the representation CPC's way: the image is resized to the grid's side, cut into
the same grid, and the features of the patches are the representation (:class:`PatchGridPool`,
the grid of L2-normalised patch features, written into the exported encoder's sidecar), not the
whole small image the backbone never saw in training.

v1: one direction (top to bottom), no normalisation in the backbone (the paper used none), a
random crop and no colour augmentation. v2: LayerNorm instead of BatchNorm (batch statistics
would leak information between the patches of an image), predictions from four directions
(the grid turned by 0, 180, 90 and 270 degrees), patch-level augmentation.

The papers' backbones (ResNet-v2-101, ResNet-161) are not in clvr; the default is ResNet-50.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..pipeline.views.cpc_grid import CpcGrid
from .cpc_context import PREDICT_INITS, CPCContext
from .errors import MethodError
from .logs import contrast_logs
from .losses import cpc
from .method import Method, MethodOutput
from .patch_grid import OPTIONS
from .registry import register_method

LOG_ANCHORS = 256      # the logs score at most this many predictions (the loss scores all)


def grid_options(view_options: dict | None) -> dict:
    """side, grid, patch and stride of the ``cpc_grid`` view: its defaults under ``view_options``."""
    defaults = CpcGrid.Options()
    return {k: int((view_options or {}).get(k, getattr(defaults, k))) for k in OPTIONS}


@register_method("cpc_v1")
class CPCv1(Method):
    views = "cpc_grid"
    view_options = {"patch_augment": False}
    recipe = "cpc-v1"
    in_batch_negatives = True
    paper = "van den Oord et al., Representation Learning with Contrastive Predictive Coding, 2018"
    reported = "48.7 (ResNet-v2-101)"

    @dataclass
    class Config(Method.Config):
        norm: str = "none"
        steps: int = 5
        context_layers: int = 3
        directions: int = 1
        temperature: float = 1.0
        skip: int = 1                 # rows after the context that are not predicted (they overlap it)
        predict_init: str = "zero"    # the prediction maps W_k start at zero (or random; cpc_context.PREDICT_INITS)

    @classmethod
    def check_config(cls, config) -> None:
        super().check_config(config)
        if config.directions not in (1, 2, 4) or config.steps < 1 or config.context_layers < 1:
            raise MethodError(f"method {cls.name!r}: directions must be 1, 2 or 4, steps and context_layers "
                              f"positive; got {config.directions}, {config.steps}, {config.context_layers}")
        if config.skip < 0:
            raise MethodError(f"method {cls.name!r}: skip = {config.skip} must be 0 or more (rows not predicted)")
        if config.predict_init not in PREDICT_INITS:
            raise MethodError(f"method {cls.name!r}: predict_init must be one of {', '.join(PREDICT_INITS)}, "
                              f"got {config.predict_init!r}")

    @classmethod
    def check_training(cls, config, batch_size: int, world_size: int = 1, view_options: dict | None = None) -> None:
        """The first predicted row must not share pixels with the context's last row, and the grid
        must leave a row to predict."""
        from .train_config import ConfigError
        super().check_training(config, batch_size, world_size, view_options)
        o = grid_options(view_options)
        ahead = config.skip + 1
        if o["patch"] > ahead * o["stride"]:
            need = -(-o["patch"] // o["stride"]) - 1
            raise ConfigError(f"config model.skip = {config.skip}: {o['patch']}-px patches at stride {o['stride']} "
                              f"overlap the context's last row {ahead} row(s) ahead, so the prediction can copy "
                              f"shared pixels; set model.skip to at least {need}, or data.view_options.stride "
                              f"to at least {-(-o['patch'] // ahead)}")
        if o["grid"] <= ahead:
            raise ConfigError(f"config data.view_options.grid = {o['grid']} leaves no row to predict "
                              f"{ahead} row(s) below the context (model.skip = {config.skip}); use a grid of at "
                              f"least {ahead + 1} rows")

    @classmethod
    def evaluation_grid(cls, view_options: dict | None) -> dict | None:
        """CPC is evaluated on its patch grid's features (see the module docstring)."""
        return {**grid_options({**cls.view_options, **(view_options or {})}), "pool": "grid"}

    def __init__(self, config=None, **kw):
        super().__init__(config, **kw)
        c = self.config
        self.backbone = self.make_backbone()
        self.context = CPCContext(self.backbone.num_features, c.steps, c.context_layers, c.directions, c.skip,
                                  predict_init=c.predict_init)

    def objective(self, batch) -> MethodOutput:
        patches = self.view(batch, "patches", 6)                   # (B, G, G, 3, P, P)
        b, g1, g2 = patches.shape[:3]
        if g1 < 2:
            raise MethodError(f"method {self.name!r} needs a grid of at least 2 rows, got {g1}")
        grid = self.backbone(patches.flatten(0, 2)).reshape(b, g1, g2, -1)
        directions = self.context(grid)
        c = self.config
        loss = torch.stack([cpc(preds, targets, c.temperature, c.skip) for preds, targets in directions]).mean()
        return MethodOutput(loss, self.logs(*directions[0]))

    @torch.no_grad()
    def logs(self, predictions, targets) -> dict:
        """The nearest predictions (``skip + 1`` rows ahead) of the first direction, scored like the loss."""
        b, g1, g2, d = targets.shape
        pred = predictions[0].reshape(-1, d)[:LOG_ANCHORS]
        cells = torch.arange(b * g1 * g2, device=targets.device).reshape(b, g1, g2)
        positive = cells[:, self.config.skip + 1:, :].reshape(-1)[:LOG_ANCHORS]
        return contrast_logs(pred @ targets.reshape(-1, d).T, positive)


@register_method("cpc_v2")
class CPCv2(CPCv1):
    view_options = {"patch_augment": True}
    recipe = "cpc-v2"
    paper = "Hénaff et al., Data-Efficient Image Recognition with Contrastive Predictive Coding, 2019"
    reported = "63.8 (ResNet-50); 71.5 (ResNet-161)"

    @dataclass
    class Config(CPCv1.Config):
        norm: str = "layer"
        directions: int = 4
