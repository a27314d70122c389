"""Binary noise-contrastive estimation as InstDisc uses it.

With a uniform noise ``Pn = 1 / num_samples`` and ``m`` noise samples per data sample, the model
density of a similarity ``s = v . f`` is ``Pm = exp(s / t) / Z`` and

    h(s) = P(D = 1 | s) = Pm / (Pm + m * Pn)
    loss = mean over the batch of  -log h(s_pos) - sum_j log(1 - h(s_neg_j)).

``Z`` is a constant: InstDisc estimates it once, on the first batch, as
``num_samples * mean(exp(s / t))`` over the negatives (:func:`nce_log_z`), and keeps it. Both
logs are computed with ``logaddexp`` from ``log Pm = s / t - log Z``, so nothing overflows.
"""

from __future__ import annotations

import math

import torch

from .precision import full_precision


def nce_log_z(negatives: torch.Tensor, temperature: float, num_samples: int) -> torch.Tensor:
    """``log(num_samples * mean(exp(s / t)))`` over ``negatives`` (any shape), computed stably."""
    s = negatives.detach().flatten() / temperature
    return torch.logsumexp(s, 0) - math.log(s.numel()) + math.log(num_samples)


@full_precision
def nce(positive: torch.Tensor, negatives: torch.Tensor, log_z, temperature: float,
        num_samples: int) -> torch.Tensor:
    """InstDisc's NCE loss.

    Args:
        positive: (B,) similarities of each sample with its own memory-bank entry.
        negatives: (B, m) similarities with m noise entries drawn uniformly from the bank.
        log_z: ``log Z`` (a float or 0-d tensor), held fixed; see :func:`nce_log_z`.
        temperature: the ``t`` of ``exp(s / t)``.
        num_samples: the size N of the data set (so ``Pn = 1 / N``).
    """
    if negatives.dim() != 2 or positive.shape != negatives.shape[:1]:
        raise ValueError(f"positive must be (B,) and negatives (B, m); got {tuple(positive.shape)} "
                         f"and {tuple(negatives.shape)}")
    m = negatives.shape[1]
    if isinstance(log_z, torch.Tensor):
        log_z = log_z.detach()                                              # Z is held fixed
    log_noise = math.log(m) - math.log(num_samples)                         # log(m * Pn)
    log_pm_pos = positive / temperature - log_z
    log_pm_neg = negatives / temperature - log_z
    log_h_pos = log_pm_pos - torch.logaddexp(log_pm_pos, torch.full_like(log_pm_pos, log_noise))
    log_1mh_neg = log_noise - torch.logaddexp(log_pm_neg, torch.full_like(log_pm_neg, log_noise))
    return -(log_h_pos + log_1mh_neg.sum(1)).mean()
