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


class CollapseMonitor:
    """Records the spread of ``encoder``'s output at each forward pass in training mode.

    Args:
        encoder: the module whose output is the representation (``method.encoder``).
        threshold: a mean spread below it is a collapse; 0 disables the check.
    """

    def __init__(self, encoder: nn.Module, threshold: float = DEFAULT_THRESHOLD):
        if threshold < 0:
            raise ValueError(f"collapse threshold = {threshold} must not be negative")
        self.threshold = float(threshold)
        self._values: list[float] = []
        self.last: float | None = None
        self.collapsed = False
        self.since_step: int | None = None
        self._handle = encoder.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, inputs, output) -> None:
        if module.training and isinstance(output, torch.Tensor) and output.dim() >= 2 and output.shape[0] >= 2:
            self._values.append(feature_spread(output))

    def check(self, step: int) -> dict:
        """The mean spread since the last check, and whether it is a collapse. Returns
        ``{"feature_spread": s}`` (nothing when no forward pass was seen), with
        ``"collapse": True`` while collapsed; ``started`` is set on the first collapsed check."""
        self.started = False
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
        return out

    def message(self, method: str) -> str:
        return (f"representation collapse: the {method} encoder's features have a spread of {self.last:.2g} "
                f"(below {self.threshold:g}) since step {self.since_step}: every image gets nearly the same "
                "features. A known failure of methods without negatives (BYOL); try a lower optim.lr, a longer "
                "warm-up, a higher target momentum or weight decay")

    def close(self) -> None:
        self._handle.remove()
