"""Momentum (EMA) encoders: MoCo's key encoder and BYOL's target network.

After each optimiser step the target's parameters move towards the online ones,
``t <- m * t + (1 - m) * o``, and its buffers (BatchNorm statistics) are copied. ``m`` is a
constant (MoCo: 0.999) or follows BYOL's schedule ``1 - (1 - m0) * (cos(pi * k / K) + 1) / 2``,
from ``m0`` (0.996) at step 0 to 1 at the last step K.
"""

from __future__ import annotations

import copy
import math

import torch


def byol_momentum(step: int, total_steps: int, base: float = 0.996) -> float:
    """BYOL's cosine schedule: ``base`` at step 0, 1.0 at ``total_steps``."""
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    k = min(max(step, 0), total_steps)
    return 1.0 - (1.0 - base) * (math.cos(math.pi * k / total_steps) + 1.0) / 2.0


class MomentumEncoder(torch.nn.Module):
    """A frozen copy of ``online`` that follows it by exponential moving average."""

    def __init__(self, online: torch.nn.Module):
        super().__init__()
        self.target = copy.deepcopy(online)
        for p in self.target.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, online: torch.nn.Module, momentum: float) -> None:
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        tp, op = list(self.target.parameters()), list(online.parameters())
        if len(tp) != len(op):
            raise ValueError("the online network does not match the momentum encoder's copy")
        torch._foreach_mul_(tp, momentum)
        torch._foreach_add_(tp, [o.detach() for o in op], alpha=1.0 - momentum)
        for tb, ob in zip(self.target.buffers(), online.buffers()):
            tb.copy_(ob)

    def forward(self, *args, **kwargs):
        with torch.no_grad():
            return self.target(*args, **kwargs)
