"""CPC's autoregressive context network over a grid of patch embeddings.

The context of row ``i`` sees only rows ``0 .. i`` of the grid (masked, PixelCNN-style
convolutions: each layer pads the top so that its kernel never looks down). From the context at
row ``i``, a linear map per step ``k`` predicts the embedding of row ``i + skip + k`` (``skip``
rows next to the context are left out: their patches overlap the context's). CPC v1 predicts
downwards only; CPC v2 does it from several directions: the grid is turned by 90, 180 and 270
degrees, and each direction has its own network. The linear maps start at zero
(:data:`PREDICT_INITS`).

:meth:`CPCContext.forward` returns, per direction, ``(predictions, targets)`` in the layout of
:func:`clvr.methods.losses.cpc`.
"""

from __future__ import annotations

import torch
from torch import nn


class CausalRowConv(nn.Module):
    """A convolution whose output at row i depends on input rows i - (k - 1) .. i only."""

    def __init__(self, dim: int, kernel: int = 3):
        super().__init__()
        self.pad = nn.ZeroPad2d((kernel // 2, kernel // 2, kernel - 1, 0))   # left, right, top, bottom
        self.conv = nn.Conv2d(dim, dim, kernel)

    def forward(self, x):
        return self.conv(self.pad(x))


class ContextNet(nn.Module):
    """Residual stack of causal row convolutions on (B, D, H, W)."""

    def __init__(self, dim: int, layers: int = 3):
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.ReLU(), CausalRowConv(dim), nn.ReLU(), nn.Conv2d(dim, dim, 1)) for _ in range(layers))

    def forward(self, x):
        for block in self.blocks:
            x = x + block(x)
        return x


#: how the prediction maps W_k start: ``zero`` (every score 0, the loss at log N, and no gradient
#: reaches the encoder until W_k has learnt something to predict from its random features) or
#: ``random`` (torch's default for a Linear layer: random predictions score the patches with
#: noise, and the quickest way to lower that loss is to make every patch embedding alike: the
#: encoder collapsed in its first epoch and escaped after 16 to 33 epochs, by seed)
PREDICT_INITS = ("zero", "random")


class CPCContext(nn.Module):
    def __init__(self, dim: int, steps: int = 5, layers: int = 3, directions: int = 1, skip: int = 0,
                 predict_init: str = "zero"):
        super().__init__()
        if directions not in (1, 2, 4):
            raise ValueError(f"directions must be 1 (v1: downwards), 2 or 4 (v2), got {directions}")
        if predict_init not in PREDICT_INITS:
            raise ValueError(f"predict_init must be one of {', '.join(PREDICT_INITS)}, got {predict_init!r}")
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        if skip < 0:
            raise ValueError(f"skip must be >= 0, got {skip}")
        self.steps, self.directions, self.skip = steps, directions, skip
        self.context = nn.ModuleList(ContextNet(dim, layers) for _ in range(directions))
        self.predict = nn.ModuleList(nn.ModuleList(nn.Linear(dim, dim) for _ in range(steps))
                                     for _ in range(directions))
        if predict_init == "zero":
            for layer in self.predict.modules():
                if isinstance(layer, nn.Linear):
                    nn.init.zeros_(layer.weight)
                    nn.init.zeros_(layer.bias)

    def forward(self, grid: torch.Tensor) -> list[tuple[list[torch.Tensor], torch.Tensor]]:
        """``grid``: (B, H, W, D) patch embeddings. Per direction: (predictions for k = 1 ..
        min(steps, H - 1 - skip), each (B, H - skip - k, W, D); the turned grid as targets
        (B, H', W', D))."""
        out = []
        for d in range(self.directions):
            turns = (0, 2, 1, 3)[d]                     # down, up, then the two sideways
            g = torch.rot90(grid, turns, dims=(1, 2))   # predict "downwards" in the turned grid
            ctx = self.context[d](g.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)   # (B, H, W, D)
            H = g.shape[1]
            s = self.skip
            if H - 1 - s < 1:
                raise ValueError(f"a grid of {H} rows leaves no row to predict {s + 1} rows ahead (skip = {s})")
            preds = [self.predict[d][k - 1](ctx[:, :H - s - k]) for k in range(1, min(self.steps, H - 1 - s) + 1)]
            out.append((preds, g))
        return out
