"""BYOL's loss: the normalised mean squared error ``2 - 2 cos(p, z)`` between the online
prediction and the target projection of the other view, with no gradient into the target."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .precision import full_precision


@full_precision
def byol(p1: torch.Tensor, p2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """``mean(2 - 2 cos(p1, sg(z2))) + mean(2 - 2 cos(p2, sg(z1)))``, symmetrised as in the paper.

    ``p1, p2``: (N, D) online predictions of views 1 and 2; ``z1, z2``: (N, D) target projections
    of views 1 and 2 (detached here: the target network learns only through its moving average).
    """
    shapes = {tuple(t.shape) for t in (p1, p2, z1, z2)}
    if len(shapes) != 1 or p1.dim() != 2:
        raise ValueError(f"p1, p2, z1, z2 must all be the same (N, D); got {[tuple(t.shape) for t in (p1, p2, z1, z2)]}")

    def one(p, z):
        return (2 - 2 * (F.normalize(p, dim=-1) * F.normalize(z.detach(), dim=-1)).sum(-1)).mean()
    return one(p1, z2) + one(p2, z1)
