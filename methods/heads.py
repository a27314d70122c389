"""Projection and prediction heads, by the papers' recipes.

=================  ===================================================================
``linear``         one linear layer (InstDisc, MoCo v1: features -> 128)
``mlp``            Linear - ReLU - Linear (MoCo v2: 2048 -> 2048 -> 128)
``mlp_bn``         Linear - BN - ReLU - Linear (SimCLR: 2048 -> 2048 -> 128; BYOL's projector
                   4096 -> 256 and predictor 4096 -> 256 have the same shape)
=================  ===================================================================
"""

from __future__ import annotations

from torch import nn


def linear_head(in_dim: int, out_dim: int = 128) -> nn.Module:
    return nn.Linear(in_dim, out_dim)


def mlp_head(in_dim: int, hidden: int = 2048, out_dim: int = 128, batch_norm: bool = False,
             layers: int = 2) -> nn.Module:
    """``layers`` linear layers; ReLU (after BatchNorm when ``batch_norm``) between them."""
    if layers < 2:
        raise ValueError(f"an MLP head has at least 2 layers, got {layers}")
    mods, d = [], in_dim
    for _ in range(layers - 1):
        mods.append(nn.Linear(d, hidden, bias=not batch_norm))
        if batch_norm:
            mods.append(nn.BatchNorm1d(hidden))
        mods.append(nn.ReLU(inplace=True))
        d = hidden
    mods.append(nn.Linear(d, out_dim))
    return nn.Sequential(*mods)


HEADS = {
    "linear": lambda in_dim, out_dim=128: linear_head(in_dim, out_dim),
    "mlp": lambda in_dim, hidden=2048, out_dim=128: mlp_head(in_dim, hidden, out_dim),
    "mlp_bn": lambda in_dim, hidden=2048, out_dim=128: mlp_head(in_dim, hidden, out_dim, batch_norm=True),
}


def head(name: str, in_dim: int, **options) -> nn.Module:
    if name not in HEADS:
        raise ValueError(f"unknown head {name!r}; choose one of {', '.join(HEADS)}")
    return HEADS[name](in_dim, **options)
