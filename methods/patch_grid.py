"""``PatchGridPool``: a backbone read the way CPC evaluates it, on the features of its patch grid.

CPC trains its backbone on patches (a G x G grid of P-px patches at stride S of an image resized
to ``side`` px); the whole image is never its input. It is evaluated on the grid of patch
features (each patch's features are the backbone's pooled output), not on the whole image.
``PatchGridPool(backbone, side, grid, patch, stride, pool)`` does that for an image batch
(B, 3, H, W)::

    x  -> resized to side x side (bilinear, antialiased: the cpc_grid view's resize)
       -> patches (B * G * G, 3, P, P), patch [i, j] at row i * S, column j * S
       -> backbone (B * G * G, D)
       -> pool = "grid": each patch's features L2-normalised, the grid concatenated row by row
                 (B, G * G * D): where a stroke is stays in the features (on the digits a 6 and
                 a 9 are the same patches in other places: kNN 58.5 on the grid, 17.0 on the mean)
          pool = "mean": the mean over the patches (B, D), a bag of patches

It has no weights of its own, and its state dict is the backbone's under the backbone's own
names, so an exported CPC encoder holds a plain backbone that any reader can load; the sidecar's
``architecture.patch_grid`` says to wrap it (:func:`clvr.methods.export.load_encoder`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..pipeline.views.cpc_grid import span_problem

#: the options of a patch grid, as the ``cpc_grid`` view names them
OPTIONS = ("side", "grid", "patch", "stride")
#: how the patches' features become one vector
POOLS = ("grid", "mean")


def check_grid(options: dict, where: str = "patch_grid") -> dict:
    """``options`` with the keys of :data:`OPTIONS` (positive integers whose grid fits in
    ``side``) and optionally ``pool`` (:data:`POOLS`, default grid); a ValueError naming
    ``where`` otherwise."""
    if not isinstance(options, dict) or not set(OPTIONS) <= set(options) <= {*OPTIONS, "pool"}:
        raise ValueError(f"{where} must give {', '.join(OPTIONS)} (and optionally pool), got {options!r}")
    pool = options.get("pool", "grid")
    if pool not in POOLS:
        raise ValueError(f"{where}: pool = {pool!r}; choose {' or '.join(POOLS)}")
    if not all(isinstance(options[k], int) and not isinstance(options[k], bool) and options[k] >= 1
               for k in OPTIONS):
        raise ValueError(f"{where}: {', '.join(OPTIONS)} must be positive integers, got {options!r}")
    problem = span_problem(**{k: options[k] for k in OPTIONS})
    if problem:
        raise ValueError(f"{where}: {problem}")
    return {**{k: int(options[k]) for k in OPTIONS}, "pool": pool}


class PatchGridPool(nn.Module):
    """``backbone``'s features of a grid of patches of the resized image, concatenated (``grid``)
    or averaged (``mean``)."""

    def __init__(self, backbone: nn.Module, side: int, grid: int, patch: int, stride: int, pool: str = "grid"):
        super().__init__()
        self.options = check_grid({"side": side, "grid": grid, "patch": patch, "stride": stride, "pool": pool})
        self.backbone = backbone
        self.num_features = backbone.num_features * (grid * grid if pool == "grid" else 1)
        # the state dict is the backbone's, under its own names (see the module docstring)
        self.register_state_dict_post_hook(_strip_prefix)
        self.register_load_state_dict_pre_hook(_add_prefix)

    def patches(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, G, G, 3, P, P), the layout of the ``cpc_grid`` view."""
        if x.dim() != 4:
            raise ValueError(f"PatchGridPool reads image batches (B, 3, H, W), got {tuple(x.shape)}")
        o = self.options
        side, g, p, s = o["side"], o["grid"], o["patch"], o["stride"]
        if x.shape[-2:] != (side, side):
            x = F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False, antialias=True)
        cells = x.unfold(2, p, s).unfold(3, p, s)[:, :, :g, :g]          # (B, 3, G, G, P, P)
        return cells.permute(0, 2, 3, 1, 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cells = self.patches(x)
        b, g = cells.shape[0], cells.shape[1]
        features = self.backbone(cells.flatten(0, 2).contiguous())
        if self.options["pool"] == "mean":
            return features.reshape(b, g * g, -1).mean(1)
        return F.normalize(features, dim=1).reshape(b, -1)


def _strip_prefix(module, state_dict, prefix, local_metadata):
    inner = prefix + "backbone."
    for key in [k for k in state_dict if k.startswith(inner)]:
        state_dict[prefix + key[len(inner):]] = state_dict.pop(key)


def _add_prefix(module, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
    inner = prefix + "backbone."
    for key in [k for k in state_dict if k.startswith(prefix) and not k.startswith(inner)]:
        state_dict[inner + key[len(prefix):]] = state_dict.pop(key)
