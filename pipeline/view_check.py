"""The view check: can a trivial feature tell which two views come from the same image?

Contrastive learning asks the network to find a view's partner among the batch. If a feature
that needs no learning already finds it (the image's colours, its rough layout), the network can
learn that shortcut and nothing else. On the digits, drawn in random colours, the generic 32-px
CIFAR recipe leaves the colours recognisable: the colour pair below finds a view's partner 10%
of the time among 256 (25 times chance), and SimCLR trained on it reaches kNN 13% (chance 10%);
the digits' own recipe (every view's colours distorted) leaves 1.4%, and reaches 94%.

``check_views(a, b)`` takes the two views of the same images, (N, 3, H, W) each (row i of ``a``
and of ``b`` come from one image), and for each trivial feature measures how often a view's
nearest neighbour (Euclidean) among the other view's N rows is its partner, averaged over both
directions. Chance is 1 / N. The features (:data:`FEATURES`):

* ``colour``: the 10th and 90th percentile of each channel (6 numbers: the ink and the paper);
* ``thumbnail``: the view shrunk to 4 x 4 (48 numbers: the layout, with its colours).

A rate of at least :data:`STRONG` times chance (per feature) is a strong shortcut; :class:`ViewCheck` says so,
naming the recipe keys that remove it (:data:`REMEDIES`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

#: a rate of at least this many times chance is a strong shortcut. Measured on the digits, 256
#: pairs, seeds 0, 1 and 5: simclr-cifar at 32 px (SimCLR learns nothing: kNN 13%): colour 23-33x
#: chance, thumbnail 20-32x; the digits' recipe at 16 px (kNN 94%): colour 3-4.5x, thumbnail 11-15x
#: (a thumbnail also keeps the layout, which is the content the views share)
STRONG = {"colour": 10.0, "thumbnail": 20.0}
#: pairs the check draws (one batch of this many images, or the data set when smaller)
PAIRS = 256


def colour_features(x: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) -> (N, 6): each channel's 10th and 90th percentile."""
    q = torch.quantile(x.float().flatten(2), torch.tensor([0.1, 0.9], device=x.device), dim=2)   # (2, N, 3)
    return q.permute(1, 0, 2).flatten(1)


def thumbnail_features(x: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) -> (N, 48): the view averaged down to 4 x 4."""
    return F.adaptive_avg_pool2d(x.float(), 4).flatten(1)


FEATURES = {"colour": colour_features, "thumbnail": thumbnail_features}

#: what takes each shortcut away, as recipe keys
REMEDIES = {
    "colour": "jitter.p (towards 1: every view's colours distorted), jitter.hue and jitter.saturation "
              "(larger), grayscale.p",
    "thumbnail": "crop.scale (a smaller minimum: crops that move and rescale the content), flip.p "
                 "(where a mirrored image is still the same thing)",
}


def partner_rate(a: torch.Tensor, b: torch.Tensor) -> float:
    """How often row i of ``a``'s nearest row of ``b`` is row i, and the other way round
    (the mean of both); ``a`` and ``b`` are (N, D) features of the two views."""
    if a.shape != b.shape or a.dim() != 2 or a.shape[0] < 2:
        raise ValueError(f"the two views' features must be the same (N, D) with N >= 2, got "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")
    d = torch.cdist(a.double(), b.double())
    rows = torch.arange(a.shape[0], device=a.device)
    return 0.5 * (float((d.argmin(1) == rows).double().mean()) + float((d.argmin(0) == rows).double().mean()))


@dataclass
class ViewCheck:
    """The rates of each trivial feature on ``pairs`` pairs of views (see the module docstring)."""
    pairs: int
    rates: dict = field(default_factory=dict)
    recipe: str = ""

    @property
    def chance(self) -> float:
        return 1.0 / self.pairs

    def strong(self) -> list[str]:
        """The features whose rate is a strong shortcut."""
        return [k for k, r in self.rates.items() if r >= STRONG[k] * self.chance]

    def text(self) -> str:
        """One line for the plan."""
        rates = ", ".join(f"{k} {100 * r:.1f}% ({r / self.chance:.1f}x chance)" for k, r in self.rates.items())
        return f"a view's partner among {self.pairs} found by trivial features: {rates}"

    def warnings(self) -> list[str]:
        return [f"WARNING: the views keep a {k} shortcut: {k} features alone find a view's partner "
                f"{100 * self.rates[k]:.1f}% of the time among {self.pairs} ({self.rates[k] / self.chance:.0f}x "
                f"chance), so the network can match views without learning what the images show. Change the "
                f"recipe{f' ({self.recipe})' if self.recipe else ''}: {REMEDIES[k]}" for k in self.strong()]

    def to_dict(self) -> dict:
        return {"pairs": self.pairs, "chance": self.chance, "rates": dict(self.rates), "strong": self.strong()}


def check_views(a: torch.Tensor, b: torch.Tensor, recipe: str = "") -> ViewCheck:
    """The :class:`ViewCheck` of two views of the same images, (N, 3, H, W) each."""
    if a.dim() != 4 or a.shape != b.shape:
        raise ValueError(f"the view check takes two image views of one shape (N, 3, H, W), got "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")
    return ViewCheck(pairs=a.shape[0], rates={k: partner_rate(f(a), f(b)) for k, f in FEATURES.items()},
                     recipe=recipe)


def image_pair(batch) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The first two image views of one shape in a ViewBatch (valid rows only), or None when
    the batch has no such pair (jigsaw patches, CPC grids)."""
    views = [v for v in batch.views if v.dim() == 4 and v.shape[1] == 3]
    if len(views) < 2 or views[0].shape != views[1].shape:
        return None
    keep = batch.valid.to(views[0].device)
    return views[0][keep], views[1][keep]
