"""Binary noise-contrastive estimation as InstDisc uses it.

With a uniform noise ``Pn = 1 / num_samples`` and ``m`` noise samples per data sample, the model
density of a similarity ``s = v . f`` is ``Pm = exp(s / t) / Z`` and

    h(s) = P(D = 1 | s) = Pm / (Pm + m * Pn)
    loss = mean over the batch of  -log h(s_pos) - sum_j log(1 - h(s_neg_j)).

``Z`` is a constant: InstDisc estimates it once, on the first batch, as
``num_samples * mean(exp(s / t))`` over the negatives (:func:`nce_log_z`), and keeps it. Both
logs are computed with ``logaddexp`` from ``log Pm = s / t - log Z``, so nothing overflows.

``keep`` (B, m) leaves out noise entries that are not noise for a row: when one draw is shared by
a batch, a sample's own bank row may be among it, and counting it would make the positive its own
negative. Row ``i`` then has ``m_i = keep[i].sum()`` noise samples, and ``m * Pn`` becomes
``m_i * Pn``.
"""

from __future__ import annotations

import math

import torch

from .precision import full_precision


def nce_log_z(negatives: torch.Tensor, temperature: float, num_samples: int,
              keep: torch.Tensor | None = None) -> torch.Tensor:
    """``log(num_samples * mean(exp(s / t)))`` over ``negatives`` (any shape; with ``keep``, a
    bool tensor of its shape, over the entries it marks), computed stably."""
    s = negatives.detach() / temperature
    count = s.numel()
    if keep is not None:
        s = s.masked_fill(~keep, float("-inf"))
        count = int(keep.sum())
    return torch.logsumexp(s.flatten(), 0) - math.log(max(count, 1)) + math.log(num_samples)


@full_precision
def nce(positive: torch.Tensor, negatives: torch.Tensor, log_z, temperature: float,
        num_samples: int, keep: torch.Tensor | None = None) -> torch.Tensor:
    """InstDisc's NCE loss.

    Args:
        positive: (B,) similarities of each sample with its own memory-bank entry.
        negatives: (B, m) similarities with m noise entries drawn uniformly from the bank.
        log_z: ``log Z`` (a float or 0-d tensor), held fixed; see :func:`nce_log_z`.
        temperature: the ``t`` of ``exp(s / t)``.
        num_samples: how many bank rows the noise is drawn from (so ``Pn = 1 / num_samples``).
        keep: (B, m) bool, True where a noise entry counts for that row (None: all do).
    """
    if negatives.dim() != 2 or positive.shape != negatives.shape[:1]:
        raise ValueError(f"positive must be (B,) and negatives (B, m); got {tuple(positive.shape)} "
                         f"and {tuple(negatives.shape)}")
    m = negatives.shape[1]
    if isinstance(log_z, torch.Tensor):
        log_z = log_z.detach()                                              # Z is held fixed
    log_pm_pos = positive / temperature - log_z
    log_pm_neg = negatives / temperature - log_z
    if keep is None:
        log_noise = torch.full_like(log_pm_pos, math.log(m) - math.log(num_samples))     # log(m * Pn)
    else:
        if keep.shape != negatives.shape:
            raise ValueError(f"keep must be {tuple(negatives.shape)} like negatives; got {tuple(keep.shape)}")
        counts = keep.sum(1).clamp_min(1).to(positive.dtype)
        log_noise = torch.log(counts) - math.log(num_samples)                           # log(m_i * Pn)
    log_h_pos = log_pm_pos - torch.logaddexp(log_pm_pos, log_noise)
    log_1mh_neg = log_noise[:, None] - torch.logaddexp(log_pm_neg, log_noise[:, None].expand_as(log_pm_neg))
    if keep is not None:
        log_1mh_neg = torch.where(keep, log_1mh_neg, torch.zeros_like(log_1mh_neg))
    return -(log_h_pos + log_1mh_neg.sum(1)).mean()
