"""NT-Xent (SimCLR): every view is an anchor; its positive is the other view of its image, and
its negatives are all the other views of the batch (of every process, with ``gather=True``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .precision import full_precision


@full_precision
def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.1, gather: bool = False) -> torch.Tensor:
    """Mean over the 2N local anchors of ``-log(exp(s_pos / t) / sum_{k != anchor} exp(s_k / t))``.

    Args:
        z1, z2: (N, D) embeddings of the two views of the same N images (row i of each is image i);
            they are L2-normalised here.
        temperature: divides the cosine similarities.
        gather: take the candidates (positives and negatives) from every process of the default
            ``torch.distributed`` group. The gradient flows back to every process's embeddings,
            so W processes of batch N give the loss and gradients of one process of batch W*N.
    """
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"z1 and z2 must both be (N, D); got {tuple(z1.shape)} and {tuple(z2.shape)}")
    n = z1.shape[0]
    anchors = F.normalize(torch.cat([z1, z2]), dim=1)                       # (2N, D): views 1, then 2
    rank, world = 0, 1
    if gather:
        from ..distributed import all_gather_with_grad, rank_and_world
        rank, world = rank_and_world()
        # candidates: every process's [z1; z2], concatenated in rank order
        candidates = torch.cat(all_gather_with_grad(anchors))               # (W * 2N, D)
    else:
        candidates = anchors
    logits = anchors @ candidates.T / temperature                          # (2N, W * 2N)
    base = rank * 2 * n                                                     # this process's block
    rows = torch.arange(2 * n, device=z1.device)
    self_col = base + rows
    pos_col = base + (rows + n) % (2 * n)
    logits = logits.masked_fill(
        torch.zeros_like(logits, dtype=torch.bool).scatter_(1, self_col[:, None], True), float("-inf"))
    return (torch.logsumexp(logits, dim=1) - logits[rows, pos_col]).mean()
