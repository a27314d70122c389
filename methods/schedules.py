"""Learning-rate schedules, stepped once per optimiser step, as multipliers of the peak lr.

For optimiser step ``s`` (0-based) of a run of ``T`` steps with ``W`` warm-up steps, the lr is
``peak * warm(s) * decay(s)`` with ``warm(s) = min(1, (s + 1) / W)`` (1 when ``W = 0``), so the
first step already trains and step ``W - 1`` reaches the peak, and ``decay`` by ``kind``:

============  ===========================================================================
``cosine``    1 during warm-up, then ``final + (1 - final) * (1 + cos(pi * t)) / 2`` with
              ``t = (s - W) / (T - W)`` (MoCo v2, SimCLR, BYOL); ``final`` at ``s = T``
``step``      ``gamma ** (number of milestones <= s)``, milestones in steps (InstDisc,
              MoCo v1: x0.1 at epochs 120 and 160 of 200)
``constant``  1
============  ===========================================================================

``s = T`` is the value a scheduler holds after the last step (steps beyond ``T`` count as ``T``).
The papers give warm-up and milestones in epochs (SimCLR, BYOL: 10 warm-up epochs);
:func:`epochs_to_steps` converts them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

KINDS = ("cosine", "step", "constant")


def lr_multiplier(step: int, total_steps: int, warmup_steps: int = 0, kind: str = "cosine",
                  milestones: Sequence[int] = (), gamma: float = 0.1, final: float = 0.0) -> float:
    """The lr multiplier at optimiser step ``step`` (0-based; see the module docstring)."""
    _check(total_steps, warmup_steps, kind, milestones, gamma, final)
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    s = min(step, total_steps)
    warm = min(1.0, (s + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    if kind == "constant":
        return warm
    if kind == "step":
        return warm * gamma ** sum(1 for m in milestones if m <= s)
    if s < warmup_steps:
        return warm
    t = 1.0 if s == total_steps else (s - warmup_steps) / (total_steps - warmup_steps)
    c = (1.0 + math.cos(math.pi * t)) / 2.0
    return c + final * (1.0 - c)      # = final + (1 - final) * c; exact at c = 1, 1/2 and 0


def _check(total_steps, warmup_steps, kind, milestones, gamma, final) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown lr schedule {kind!r}; choose one of {', '.join(KINDS)}")
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"warmup_steps must be in [0, total_steps={total_steps}], got {warmup_steps}")
    if not 0.0 <= final <= 1.0:
        raise ValueError(f"final must be in [0, 1], got {final}")
    if final != 0.0 and kind != "cosine":
        raise ValueError(f"final={final} applies only to kind='cosine', got kind={kind!r}")
    if kind == "step":
        if not milestones:
            raise ValueError("kind='step' needs milestones (steps at which the lr drops), got none")
        if any(not 0 < m < total_steps for m in milestones):
            raise ValueError(f"milestones must be in (0, total_steps={total_steps}), got {list(milestones)}")
        if any(a >= b for a, b in zip(milestones, milestones[1:])):
            raise ValueError(f"milestones must be strictly increasing, got {list(milestones)}")
        if not 0.0 < gamma <= 1.0:
            raise ValueError(f"gamma must be in (0, 1], got {gamma}")
    elif milestones:
        raise ValueError(f"milestones apply only to kind='step', got kind={kind!r} "
                         f"with milestones {list(milestones)}")


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int,
                    kind: str, milestones: Sequence[int] = (), gamma: float = 0.1,
                    final: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR of :func:`lr_multiplier`; call its ``step()`` after each optimiser step.

    Its state_dict holds the step count; to resume, build it again with the same arguments and
    load the state."""
    milestones = tuple(milestones)
    _check(total_steps, warmup_steps, kind, milestones, gamma, final)

    def multiplier(step: int) -> float:
        return lr_multiplier(step, total_steps, warmup_steps, kind, milestones, gamma, final)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)


def epochs_to_steps(epochs: float | Sequence[float], steps_per_epoch: int) -> int | list[int]:
    """``round(epochs * steps_per_epoch)``, for one value or each of a list (warm-up, milestones)."""
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
    if isinstance(epochs, Sequence):
        return [epochs_to_steps(e, steps_per_epoch) for e in epochs]
    if not epochs >= 0:
        raise ValueError(f"epochs must be >= 0, got {epochs}")
    return round(epochs * steps_per_epoch)
