"""``PatchGridPool``: a backbone read the way CPC evaluates it, on the mean of its patch grid.

CPC trains its backbone on patches (a G x G grid of P-px patches at stride S of an image resized
to ``side`` px); the whole image is never its input. Its papers evaluate the pooled features of
that grid. ``PatchGridPool(backbone, side, grid, patch, stride)`` does exactly that for an image
batch (B, 3, H, W)::

    x  -> resized to side x side (bilinear, antialiased: the cpc_grid view's resize)
       -> patches (B * G * G, 3, P, P), patch [i, j] at row i * S, column j * S
       -> backbone (B * G * G, D) -> mean over the G * G patches (B, D)

It has no weights of its own, and its state dict is the backbone's under the backbone's own
names, so an exported CPC encoder holds a plain backbone that any reader can load; the sidecar's
``architecture.patch_grid`` says to wrap it (:func:`clvr.methods.export.load_encoder`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: the options of a patch grid, as the ``cpc_grid`` view names them
OPTIONS = ("side", "grid", "patch", "stride")


def check_grid(options: dict, where: str = "patch_grid") -> dict:
    """``options`` with exactly the keys of :data:`OPTIONS`, positive integers whose grid fits in
    ``side``; a ValueError naming ``where`` otherwise."""
    if not isinstance(options, dict) or set(options) != set(OPTIONS):
        raise ValueError(f"{where} must give {', '.join(OPTIONS)}, got {options!r}")
    if not all(isinstance(options[k], int) and not isinstance(options[k], bool) and options[k] >= 1
               for k in OPTIONS):
        raise ValueError(f"{where}: {', '.join(OPTIONS)} must be positive integers, got {options!r}")
    span = (options["grid"] - 1) * options["stride"] + options["patch"]
    if span > options["side"]:
        raise ValueError(f"{where}: a {options['grid']}x{options['grid']} grid of {options['patch']}-px patches "
                         f"at stride {options['stride']} spans {span} px, more than side = {options['side']}")
    return {k: int(options[k]) for k in OPTIONS}


class PatchGridPool(nn.Module):
    """``backbone``'s features averaged over a grid of patches of the resized image."""

    def __init__(self, backbone: nn.Module, side: int, grid: int, patch: int, stride: int):
        super().__init__()
        self.options = check_grid({"side": side, "grid": grid, "patch": patch, "stride": stride})
        self.backbone = backbone
        self.num_features = backbone.num_features
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
        return features.reshape(b, g * g, -1).mean(1)


def _strip_prefix(module, state_dict, prefix, local_metadata):
    inner = prefix + "backbone."
    for key in [k for k in state_dict if k.startswith(inner)]:
        state_dict[prefix + key[len(inner):]] = state_dict.pop(key)


def _add_prefix(module, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
    inner = prefix + "backbone."
    for key in [k for k in state_dict if k.startswith(prefix) and not k.startswith(inner)]:
        state_dict[inner + key[len(prefix):]] = state_dict.pop(key)
