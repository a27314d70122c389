"""CPC's loss: InfoNCE between predicted and true patch embeddings, k rows ahead.

The grid of patch embeddings ``targets`` is (B, H, W, D) (CPC's grid is square, H = W = G).
``predictions[k - 1]`` is (B, H - k, W, D): its row ``i`` predicts row ``i + k`` of the targets
from the context of the rows up to ``i``, for k = 1 .. K < H. Every prediction is scored against
every target patch of the batch (B * H * W candidates); its own target is the positive, the
others are its negatives. The loss is the mean
over predictions of the cross-entropy, averaged over the steps k.
"""

from __future__ import annotations

import torch

from .precision import full_precision


@full_precision
def cpc(predictions: list[torch.Tensor], targets: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Mean over the steps k = 1..len(predictions) of the InfoNCE of the k-step predictions."""
    if targets.dim() != 4:
        raise ValueError(f"targets must be (B, H, W, D), got {tuple(targets.shape)}")
    B, G, G2, D = targets.shape
    if not predictions or len(predictions) >= G:
        raise ValueError(f"give predictions for k = 1 .. K with 1 <= K < H = {G} rows; got {len(predictions)}")
    flat = targets.reshape(B * G * G2, D)
    cells = torch.arange(B * G * G2, device=targets.device).reshape(B, G, G2)
    losses = []
    for k, pred in enumerate(predictions, start=1):
        if pred.shape != (B, G - k, G2, D):
            raise ValueError(f"predictions[{k - 1}] must be (B, H - {k}, W, D) = {(B, G - k, G2, D)}, "
                             f"got {tuple(pred.shape)}")
        logits = pred.reshape(-1, D) @ flat.T / temperature                # (B*(G-k)*G, B*G*G)
        pos = cells[:, k:, :].reshape(-1)                                   # the true patch k rows on
        losses.append((torch.logsumexp(logits, 1) - logits[torch.arange(logits.shape[0]), pos]).mean())
    return torch.stack(losses).mean()
