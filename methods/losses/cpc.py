"""CPC's loss: InfoNCE between predicted and true patch embeddings, k rows ahead.

The grid of patch embeddings ``targets`` is (B, H, W, D) (CPC's grid is square, H = W = G).
``predictions[k - 1]`` is (B, H - s - k, W, D): its row ``i`` predicts row ``i + s + k`` of the
targets from the context of the rows up to ``i``, for k = 1 .. K, K + s < H, where ``s`` (``skip``)
rows next to the context are not predicted (Greedy InfoMax's ``skip_step``: overlapping patches
share pixels with the context's last row, a shortcut rather than a prediction). Every prediction is scored against
every target patch of the batch (B * H * W candidates); its own target is the positive, the
others are its negatives. The loss is the mean
over predictions of the cross-entropy, averaged over the steps k.
"""

from __future__ import annotations

import torch

from .precision import full_precision


@full_precision
def cpc(predictions: list[torch.Tensor], targets: torch.Tensor, temperature: float = 1.0,
        skip: int = 0) -> torch.Tensor:
    """Mean over the steps k = 1..len(predictions) of the InfoNCE of the predictions
    ``skip + k`` rows ahead."""
    if targets.dim() != 4:
        raise ValueError(f"targets must be (B, H, W, D), got {tuple(targets.shape)}")
    if skip < 0:
        raise ValueError(f"skip must be >= 0, got {skip}")
    B, G, G2, D = targets.shape
    if not predictions or len(predictions) + skip >= G:
        raise ValueError(f"give predictions for k = 1 .. K with 1 <= K < H - skip = {G - skip} rows "
                         f"(H = {G}, skip = {skip}); got {len(predictions)}")
    flat = targets.reshape(B * G * G2, D)
    cells = torch.arange(B * G * G2, device=targets.device).reshape(B, G, G2)
    losses = []
    for k, pred in enumerate(predictions, start=1):
        ahead = skip + k
        if pred.shape != (B, G - ahead, G2, D):
            raise ValueError(f"predictions[{k - 1}] must be (B, H - {ahead}, W, D) = {(B, G - ahead, G2, D)}, "
                             f"got {tuple(pred.shape)}")
        logits = pred.reshape(-1, D) @ flat.T / temperature                # (B*(G-a)*G, B*G*G)
        pos = cells[:, ahead:, :].reshape(-1)                               # the true patch a rows on
        losses.append((torch.logsumexp(logits, 1) - logits[torch.arange(logits.shape[0]), pos]).mean())
    return torch.stack(losses).mean()
