"""Optimisers by the papers' recipes: SGD (InstDisc, PIRL, MoCo), LARS (SimCLR, BYOL), AdamW.

LARS (You et al. 2017, in the form SimCLR and BYOL use) is SGD with momentum whose step for each
parameter tensor is scaled by a trust ratio. For a tensor ``w`` with gradient ``g``, in a group
with learning rate ``lr``, momentum ``m``, weight decay ``wd`` and coefficient ``eta``::

    g     <- g + wd * w
    trust  = eta * ||w|| / ||g||    if ||w|| > 0 and ||g|| > 0, else 1
    v     <- m * v + lr * trust * g     (v starts at 0)
    w     <- w - v                      (nesterov: w <- w - (m * v + lr * trust * g))

with ``||.||`` the L2 norm of the whole tensor and ``g`` the decayed gradient. The learning rate is
inside the momentum buffer ``v`` (as in SimCLR's implementation), so a scheduled lr changes only
new contributions; at a constant lr it equals torch's SGD form ``b <- m * b + g; w <- w - lr * b``
(``v = lr * b``), up to rounding.

Groups with ``lars_exclude=True`` skip both the weight decay and the trust ratio (``trust = 1``):
they follow plain SGD with momentum. SimCLR and BYOL exclude BatchNorm parameters and biases;
:func:`parameter_groups` builds such groups.

The papers' learning rates are for a batch of 256 and grow with the global batch
(:func:`scaled_lr`): SimCLR uses LARS at ``0.3 * batch / 256``, BYOL ``0.2 * batch / 256``.
"""

from __future__ import annotations

import difflib
import math

import torch
from torch import nn


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise trust ratios (see the module docstring for the update).

    Per-group options: ``lr``, ``momentum``, ``weight_decay``, ``eta``, ``nesterov`` and
    ``lars_exclude`` (default False; True: no weight decay and no trust ratio for the group)."""

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 eta: float = 0.001, nesterov: bool = False):
        _check_lars_options(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta,
                            nesterov=nesterov)
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta,
                        nesterov=nesterov, lars_exclude=False)
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        g = self.param_groups[-1]
        _check_lars_options(lr=g["lr"], momentum=g["momentum"], weight_decay=g["weight_decay"],
                            eta=g["eta"], nesterov=g["nesterov"])

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, m, eta = group["lr"], group["momentum"], group["eta"]
            exclude = group["lars_exclude"]
            wd = 0.0 if exclude else group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise ValueError("LARS does not support sparse gradients")
                g = p.grad
                if wd != 0.0:
                    g = g.add(p, alpha=wd)
                if exclude:
                    d = g.mul(lr)
                else:
                    w_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(g)
                    trust = torch.where((w_norm > 0) & (g_norm > 0), eta * w_norm / g_norm,
                                        torch.ones_like(w_norm))
                    d = g.mul(trust * lr)
                if m != 0.0:
                    state = self.state[p]
                    if "momentum_buffer" not in state:
                        state["momentum_buffer"] = torch.zeros_like(p)
                    v = state["momentum_buffer"]
                    v.mul_(m).add_(d)
                    d = d.add(v, alpha=m) if group["nesterov"] else v
                p.sub_(d)
        return loss


def _check_lars_options(lr, momentum, weight_decay, eta, nesterov) -> None:
    if not lr >= 0.0:
        raise ValueError(f"LARS lr must be >= 0, got {lr}")
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"LARS momentum must be in [0, 1), got {momentum}")
    if not weight_decay >= 0.0:
        raise ValueError(f"LARS weight_decay must be >= 0, got {weight_decay}")
    if not eta > 0.0:
        raise ValueError(f"LARS eta must be > 0, got {eta}")
    if nesterov and momentum == 0.0:
        raise ValueError("LARS nesterov=True needs momentum > 0, got momentum 0")


def parameter_groups(model: nn.Module, weight_decay: float, exclude_bn_and_bias: bool,
                     lr_scales: dict | None = None, lr: float | None = None) -> list[dict]:
    """The trainable parameters of ``model`` as optimiser groups.

    With ``exclude_bn_and_bias``: ``[{"params": weights, "weight_decay": weight_decay},
    {"params": rest, "weight_decay": 0.0, "lars_exclude": True}]``, where "rest" is every
    parameter with ``ndim <= 1``: the gains and shifts of BatchNorm, LayerNorm and GroupNorm, every
    bias, and scalars such as a learnable temperature. Otherwise one group with ``weight_decay``.
    Parameters with ``requires_grad=False`` are left out; empty groups are dropped.

    ``lr_scales`` maps modules of ``model`` to a multiple of ``lr`` for their parameters (BYOL's
    predictor may learn faster than the rest); each group is then split by scale, the scaled
    groups carrying their own ``lr`` (a scheduler multiplies every group's lr alike)."""
    if not weight_decay >= 0.0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    params = [p for p in model.parameters() if p.requires_grad]
    if not exclude_bn_and_bias:
        groups = [{"params": params, "weight_decay": weight_decay}]
    else:
        groups = [{"params": [p for p in params if p.ndim > 1], "weight_decay": weight_decay},
                  {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0,
                   "lars_exclude": True}]
    scale = {}
    for module, factor in (lr_scales or {}).items():
        if not factor > 0:
            raise ValueError(f"an lr scale must be positive, got {factor}")
        if factor != 1.0:
            if lr is None:
                raise ValueError("lr_scales needs the base lr")
            scale.update({id(p): float(factor) for p in module.parameters()})
    if scale:
        split = []
        for g in groups:
            for factor in sorted({scale.get(id(p), 1.0) for p in g["params"]}):
                part = {**g, "params": [p for p in g["params"] if scale.get(id(p), 1.0) == factor]}
                if factor != 1.0:
                    part["lr"] = lr * factor
                split.append(part)
        groups = split
    return [g for g in groups if g["params"]]


SCALING_RULES = ("linear", "sqrt", "none")


def scaled_lr(base_lr: float, global_batch: int, rule: str = "linear") -> float:
    """The learning rate for ``global_batch`` from the papers' lr for a batch of 256:
    ``linear``: ``base * batch / 256``; ``sqrt``: ``base * sqrt(batch / 256)`` (SimCLR's choice
    for small batches); ``none``: ``base``."""
    if rule not in SCALING_RULES:
        raise ValueError(f"unknown lr scaling rule {rule!r}; choose one of {', '.join(SCALING_RULES)}")
    if global_batch < 1:
        raise ValueError(f"global_batch must be >= 1, got {global_batch}")
    if not base_lr >= 0.0:
        raise ValueError(f"base_lr must be >= 0, got {base_lr}")
    if rule == "linear":
        return base_lr * global_batch / 256
    if rule == "sqrt":
        return base_lr * math.sqrt(global_batch / 256)
    return base_lr


OPTIMIZERS = ("sgd", "adamw", "lars")


def build_optimizer(name: str, model: nn.Module, lr: float, weight_decay: float,
                    momentum: float = 0.9, nesterov: bool = False, betas=(0.9, 0.999),
                    eps: float = 1e-8, eta: float = 0.001,
                    exclude_bn_and_bias: bool | None = None, lr_scales: dict | None = None) -> torch.optim.Optimizer:
    """``sgd`` (torch SGD: ``momentum``, ``nesterov``), ``adamw`` (torch AdamW: ``betas``,
    ``eps``) or ``lars`` (:class:`LARS`: ``momentum``, ``nesterov``, ``eta``) over the trainable
    parameters of ``model``, grouped by :func:`parameter_groups`. ``exclude_bn_and_bias``
    (no weight decay, and for LARS no trust ratio, on norm parameters and biases) defaults to
    True for ``lars`` and False otherwise."""
    if name not in OPTIMIZERS:
        near = difflib.get_close_matches(str(name).lower(), OPTIMIZERS, n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}{hint}")
    if exclude_bn_and_bias is None:
        exclude_bn_and_bias = name == "lars"
    groups = parameter_groups(model, weight_decay, exclude_bn_and_bias, lr_scales, lr)
    if not groups:
        raise ValueError("the model has no trainable parameters (all have requires_grad=False)")
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov,
                               weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)
    return LARS(groups, lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta,
                nesterov=nesterov)
