"""What a contrastive step logs besides its loss, from the similarities it scored.

Every method reports the same three numbers, so runs of different methods can be compared:

==============  =================================================================================
``pos_sim``     mean similarity of each anchor with its positive
``neg_sim``     mean similarity of each anchor with its negatives
``pos_acc``     share of anchors whose positive scores strictly above every negative (the
                "accuracy" of the contrastive task; near 1/candidates at the start)
==============  =================================================================================

Similarities are cosines for the methods that normalise (all but CPC, whose scores are dot
products). They are computed without gradient, on this process's anchors.
"""

from __future__ import annotations

import torch


@torch.no_grad()
def contrast_logs(sim: torch.Tensor, positive: torch.Tensor | None = None,
                  exclude: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Logs of N anchors scored against C candidates.

    Args:
        sim: (N, C) similarity of every anchor to every candidate.
        positive: (N,) column of each anchor's positive; default column 0.
        exclude: (N, C) bool, True where a column is not a candidate of that anchor (the anchor
            itself in SimCLR, another view of the same object); neither positive nor negative.
    """
    sim = sim.detach().float()
    n, c = sim.shape
    if positive is None:
        positive = torch.zeros(n, dtype=torch.long, device=sim.device)
    is_pos = torch.zeros_like(sim, dtype=torch.bool).scatter_(1, positive[:, None], True)
    is_neg = ~is_pos if exclude is None else ~is_pos & ~exclude
    pos = sim.gather(1, positive[:, None]).squeeze(1)
    neg_count = is_neg.sum()
    neg_mean = (sim * is_neg).sum() / neg_count.clamp(min=1)
    hardest = sim.masked_fill(~is_neg, float("-inf")).amax(1)
    return {"pos_sim": pos.mean(), "neg_sim": neg_mean,
            "pos_acc": (pos > hardest).float().mean()}


def mean_logs(logs: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The key-wise mean of several logs (one per pair of views, per direction...)."""
    return {k: torch.stack([d[k] for d in logs]).mean() for k in logs[0]}
