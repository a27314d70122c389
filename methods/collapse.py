"""Collapse: a representation that maps every image to (nearly) the same point.

A method without negatives (BYOL) can fall into it, and so can any method with a bad setting;
its loss may even look fine. clvr watches the encoder's output during training instead of
finding out at evaluation:

``feature_spread(h)`` of a batch of representations h (B, D) is the mean over dimensions of the
standard deviation over the batch, divided by the root mean square of h::

    spread = mean_d std_b(h[:, d]) / sqrt(mean_{b,d} h[b, d]^2)

It is 0 when every image gets the same features, whatever their scale, and of the order of 0.1
to 1 for a working encoder (measured: about 0.47 for a freshly initialised ResNet-18 or ResNet-50
on a batch of noise, in training mode; about 0.5 for one on the digits). :class:`CollapseMonitor` hooks the encoder the method evaluates (``method.encoder``),
records the spread of its output at every training forward pass, and :meth:`CollapseMonitor.check`
says, once per logging interval, whether the mean spread of the interval is below the threshold.
The trainer then names it in the progress bar and in ``metrics.jsonl`` (``"collapse": true``,
and one ``{"event": "collapse"}`` line when it starts), and stops when ``on_collapse = stop``.

Dimensional collapse: features can keep a healthy spread while they live in a few dimensions of
their space (BYOL on the digits: spread 0.56-0.63, but 18-21 effective dimensions of 128 where a
random network has about 60). ``effective_rank(h)`` (Roy & Vetterli, 2007) of the centred batch
is the exponential of the entropy of its normalised singular values σ::

    p_i  = σ_i / Σ_j σ_j,      rank = exp(-Σ_i p_i log p_i)

1 for features on one line, ``min(B, D)`` for features spread evenly over every direction. The
monitor measures it on the encoder's output and on the head's (the features the loss compares),
once per check on the latest 256 rows seen, and reports ``dimensional collapse`` by name when the
encoder's rank falls below ``rank_fraction`` (default 1/4) of the most the batch can hold,
``min(B, D)``. The head's rank is reported beside it (BYOL's projector collapsing to about 6
dimensions shows there first) but not judged: a working head can be narrower than its encoder.
"""

from __future__ import annotations

import torch
from torch import nn

#: below this spread a representation is reported as collapsed (a constant gives 0, a freshly
#: initialised ResNet about 0.47)
DEFAULT_THRESHOLD = 0.01


@torch.no_grad()
def feature_spread(h: torch.Tensor) -> float:
    """The scale-free spread of a batch of features (B, D) (or (B, ...), flattened): the mean
    per-dimension standard deviation over the batch over the features' root mean square.
    0 for a batch of identical rows (or of all-zero features); needs B >= 2."""
    h = h.detach().float().flatten(1)
    if h.shape[0] < 2:
        raise ValueError(f"the spread of features needs a batch of at least 2, got {h.shape[0]}")
    rms = h.pow(2).mean().sqrt()
    if not torch.isfinite(rms) or float(rms) == 0.0:
        return 0.0
    return float(h.std(dim=0, unbiased=False).mean() / rms)


#: a rank below this fraction of min(rows, features) is a dimensional collapse (measured on the
#: digits, ResNet-18 width 16, 128 features, 128 rows: a random network about 60, SimCLR 59-65,
#: a collapsing BYOL 18-21)
DEFAULT_RANK_FRACTION = 0.25
#: the rows an effective rank is measured on: the latest outputs, across forward passes (BYOL's
#: two views are two passes of 64), so that methods are compared on as many rows; an SVD per check
RANK_ROWS = 256


@torch.no_grad()
def effective_rank(h: torch.Tensor) -> float:
    """exp of the entropy of the normalised singular values of the centred batch ``h`` (B, D)
    (or (B, ...), flattened); between 1 and min(B, D). 0 for a batch of identical rows."""
    h = h.detach().float().flatten(1)
    if h.shape[0] < 2:
        raise ValueError(f"the effective rank of features needs a batch of at least 2, got {h.shape[0]}")
    if not bool(torch.isfinite(h).all()):
        return 0.0
    h = h.double()
    scale = float(torch.linalg.vector_norm(h))
    h = h - h.mean(0, keepdim=True)
    s = torch.linalg.svdvals(h)
    total = s.sum()
    if float(total) <= 1e-6 * scale:              # identical rows, up to rounding
        return 0.0
    p = s / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


class _Rank:
    """The latest :data:`RANK_ROWS` rows of a module's training-mode outputs, for one effective
    rank per check."""

    def __init__(self, module: nn.Module):
        self.recent: list[torch.Tensor] = []
        self.rows = 0
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output) -> None:
        if module.training and isinstance(output, torch.Tensor) and output.dim() >= 2 and output.shape[0] >= 2:
            h = output.detach().flatten(1)[:RANK_ROWS]
            if self.recent and self.recent[-1].shape[1] != h.shape[1]:
                self.recent, self.rows = [], 0
            self.recent.append(h)
            self.rows += h.shape[0]
            while self.rows - self.recent[0].shape[0] >= RANK_ROWS:
                self.rows -= self.recent.pop(0).shape[0]

    def take(self) -> tuple[float, int] | None:
        """(effective rank, most possible) of the latest rows, forgotten afterwards."""
        if not self.recent:
            return None
        h = torch.cat(self.recent[::-1])[:RANK_ROWS]
        self.recent, self.rows = [], 0
        return effective_rank(h), min(h.shape)


class CollapseMonitor:
    """Records the spread of ``encoder``'s output at each forward pass in training mode.

    Args:
        encoder: the module whose output is the representation (``method.encoder``).
        threshold: a mean spread below it is a collapse; 0 disables the check.
        head: the projection head whose output the loss compares (``method.projection_head``), or None.
        rank_fraction: an effective rank below this fraction of min(B, D) is a dimensional
            collapse; 0 disables that check (the ranks are still reported).
    """

    def __init__(self, encoder: nn.Module, threshold: float = DEFAULT_THRESHOLD, head: nn.Module | None = None,
                 rank_fraction: float = DEFAULT_RANK_FRACTION):
        if threshold < 0:
            raise ValueError(f"collapse threshold = {threshold} must not be negative")
        if not 0 <= rank_fraction <= 1:
            raise ValueError(f"collapse rank fraction = {rank_fraction} must be in [0, 1]")
        self.threshold = float(threshold)
        self.rank_fraction = float(rank_fraction)
        self._values: list[float] = []
        self.last: float | None = None
        self.collapsed = False
        self.since_step: int | None = None
        #: the last effective ranks, "backbone" and "head": (rank, most possible)
        self.ranks: dict[str, tuple[float, int]] = {}
        #: the parts whose rank is below the fraction (empty: none)
        self.narrow: list[str] = []
        self.dimensional = False
        self.dimensional_started = False
        self.dimensional_since: int | None = None
        self._handle = encoder.register_forward_hook(self._hook)
        self._rank = {"backbone": _Rank(encoder)}
        if head is not None and not isinstance(head, nn.Identity):
            self._rank["head"] = _Rank(head)

    def _hook(self, module: nn.Module, inputs, output) -> None:
        if module.training and isinstance(output, torch.Tensor) and output.dim() >= 2 and output.shape[0] >= 2:
            self._values.append(feature_spread(output))

    def check(self, step: int) -> dict:
        """The mean spread since the last check and the effective ranks of the latest rows, and
        whether they are a collapse. Returns ``{"feature_spread": s, "rank_backbone": r,
        "rank_head": r}`` (nothing when no forward pass was seen), with ``"collapse": True`` while
        collapsed and ``"dimensional_collapse": [parts]`` while a rank is too low; ``started``
        and ``dimensional_started`` are set on the first such check."""
        self.started = self.dimensional_started = False
        if not self._values:
            return {}
        self.last = sum(self._values) / len(self._values)
        self._values.clear()
        was = self.collapsed
        self.collapsed = self.threshold > 0 and self.last < self.threshold
        if self.collapsed and not was:
            self.started, self.since_step = True, step
        out = {"feature_spread": self.last}
        if self.collapsed:
            out["collapse"] = True
        for part, rank in self._rank.items():
            taken = rank.take()
            if taken is not None:
                self.ranks[part] = taken
                out[f"rank_{part}"] = round(taken[0], 2)
        # only the representation is judged: a head's rank is reported, but a healthy one can be
        # low (SimCLR's on the digits: 39 of 128, against 59 for its backbone); and a complete
        # collapse, which says more, is named without it
        rank, most = self.ranks.get("backbone", (0.0, 0))
        narrow = not self.collapsed and most >= 4 and rank < self.rank_fraction * most
        self.narrow = ["backbone"] if narrow else []
        was = self.dimensional
        self.dimensional = bool(self.narrow)
        if self.dimensional and not was:
            self.dimensional_started, self.dimensional_since = True, step
        if self.dimensional:
            out["dimensional_collapse"] = list(self.narrow)
        return out

    def dimensional_message(self, method: str, hint: str = "") -> str:
        """What the dimensional collapse is, and ``hint``: what to try for this method
        (``Method.collapse_hint``)."""
        parts = "; ".join(f"the {p} features' effective rank is {self.ranks[p][0]:.1f} of at most "
                          f"{self.ranks[p][1]} (below {self.rank_fraction:g} of it)" for p in self.narrow)
        return (f"dimensional collapse since step {self.dimensional_since}: {parts}. The {method} features "
                "still differ between images but live in a few directions, and linear or kNN accuracy suffers"
                + (f"; {hint}" if hint else ""))

    def message(self, method: str, hint: str = "") -> str:
        """What the collapse is, and ``hint`` (``Method.collapse_hint``)."""
        return (f"representation collapse: the {method} encoder's features have a spread of {self.last:.2g} "
                f"(below {self.threshold:g}) since step {self.since_step}: every image gets nearly the same "
                "features" + (f"; {hint}" if hint else ""))

    def close(self) -> None:
        self._handle.remove()
        for rank in self._rank.values():
            rank.handle.remove()
