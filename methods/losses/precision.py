"""Losses run in float32 (at least), also under mixed precision.

Contrastive losses divide similarities by small temperatures (0.07-0.2) and take log-sum-exps
over thousands of candidates; in bfloat16 (8 bits of mantissa) the logits round to steps of
about 0.06 at 10, enough to change the loss visibly. :func:`full_precision` turns autocast off
inside a loss and lifts float16/bfloat16 inputs to float32; float32 and float64 inputs are left
as they are (the tests compare in float64).
"""

from __future__ import annotations

import functools

import torch

HALF = (torch.float16, torch.bfloat16)


def _lift(x):
    if isinstance(x, torch.Tensor) and x.dtype in HALF:
        return x.float()
    if isinstance(x, (list, tuple)):
        return type(x)(_lift(v) for v in x)
    return x


def _device(args, kwargs) -> str:
    for a in (*args, *kwargs.values()):
        if isinstance(a, torch.Tensor):
            return a.device.type
        if isinstance(a, (list, tuple)) and a and isinstance(a[0], torch.Tensor):
            return a[0].device.type
    return "cpu"


def full_precision(fn):
    """Decorator: run ``fn`` without autocast, with half-precision tensor arguments in float32."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with torch.autocast(device_type=_device(args, kwargs), enabled=False):
            return fn(*(_lift(a) for a in args), **{k: _lift(v) for k, v in kwargs.items()})
    return wrapper
