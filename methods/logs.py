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
    # a few passes over sim (it can be the (B, 65536) scores of MoCo's queue)
    sim = sim.detach()
    n, c = sim.shape
    if positive is None:
        positive = torch.zeros(n, dtype=torch.long, device=sim.device)
    pos = sim.gather(1, positive[:, None])
    neg_sum = sim.sum(dtype=torch.float64) - pos.sum(dtype=torch.float64)
    neg_count = n * (c - 1)
    negatives = sim.scatter(1, positive[:, None], float("-inf"))          # a copy: only negatives left
    if exclude is not None:
        exclude = exclude.scatter(1, positive[:, None], False)            # the positive stays positive
        neg_sum = neg_sum - torch.where(exclude, sim, 0).sum(dtype=torch.float64)
        neg_count = neg_count - exclude.sum()
        negatives.masked_fill_(exclude, float("-inf"))
    hardest = negatives.amax(1, keepdim=True)
    neg_mean = neg_sum / neg_count if isinstance(neg_count, int) and neg_count else neg_sum / max(int(neg_count), 1)
    return {"pos_sim": pos.float().mean(), "neg_sim": neg_mean.float(),
            "pos_acc": (pos > hardest).float().mean()}


def mean_logs(logs: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The key-wise mean of several logs (one per pair of views, per direction...)."""
    return {k: torch.stack([d[k] for d in logs]).mean() for k in logs[0]}
