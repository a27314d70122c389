"""InfoNCE: softmax cross-entropy of one positive against a set of negatives."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .precision import full_precision


def info_nce(query: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor,
             temperature: float = 0.07, normalize: bool = True) -> torch.Tensor:
    """Mean over queries of ``-log softmax([q.p, q.n_1, ..., q.n_K] / temperature)[0]``.

    Args: as :func:`info_nce_logits`, whose logits it scores.
    """
    return info_nce_from_logits(info_nce_logits(query, positive, negatives, temperature, normalize))


def info_nce_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """InfoNCE of (N, 1 + K) logits whose column 0 is the positive."""
    return torch.logsumexp(logits, dim=1).sub(logits[:, 0]).mean()


@full_precision
def info_nce_logits(query: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor,
                    temperature: float = 0.07, normalize: bool = True) -> torch.Tensor:
    """The (N, 1 + K) logits ``[q.p, q.n_1, ..., q.n_K] / temperature`` of InfoNCE (a method that
    also logs the similarities takes them from here rather than scoring the negatives twice).

    Args:
        query: (N, D).
        positive: (N, D), the positive of each query.
        negatives: (K, D) shared by every query (MoCo's queue), or (N, K, D) per query.
        temperature: divides the similarities.
        normalize: L2-normalise the three inputs first (cosine similarities).
    """
    if query.dim() != 2 or positive.shape != query.shape:
        raise ValueError(f"query and positive must both be (N, D); got {tuple(query.shape)} and "
                         f"{tuple(positive.shape)}")
    n, d = query.shape
    if not ((negatives.dim() == 2 and negatives.shape[1] == d)
            or (negatives.dim() == 3 and negatives.shape[0] == n and negatives.shape[2] == d)):
        raise ValueError(f"negatives must be (K, D) or (N, K, D) with N = {n}, D = {d}; got {tuple(negatives.shape)}")
    if normalize:
        query, positive, negatives = (F.normalize(t, dim=-1) for t in (query, positive, negatives))
    pos = (query * positive).sum(-1, keepdim=True)                          # (N, 1)
    if negatives.dim() == 2:
        neg = query @ negatives.T                                           # (N, K)
    else:
        neg = torch.einsum("nd,nkd->nk", query, negatives)
    return torch.cat([pos, neg], dim=1) / temperature
