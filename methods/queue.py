"""MoCo's queue of negative keys: a FIFO of K keys, filled with every process's keys.

After each step the keys of the global batch (gathered from every process, in rank order) are
enqueued, replacing the oldest. The loss of a step uses the queue *before* its own keys go in,
so a key is never its own negative. K must be a multiple of the global batch, so that a batch
never wraps around the end (MoCo requires it too); otherwise :class:`KeyQueue` raises.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .distributed import all_gather_cat


class KeyQueue(torch.nn.Module):
    def __init__(self, size: int = 65536, dim: int = 128, seed: int = 0):
        super().__init__()
        if size < 1 or dim < 1:
            raise ValueError(f"queue needs size >= 1 and dim >= 1, got {size}, {dim}")
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("keys", F.normalize(torch.randn(size, dim, generator=g), dim=1))
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))

    @property
    def size(self) -> int:
        return self.keys.shape[0]

    def negatives(self) -> torch.Tensor:
        """The queue's keys (K, D), detached: the negatives of the current step."""
        return self.keys.clone()

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Put the keys of the global batch in, oldest out (gathers from every process)."""
        keys = all_gather_cat(keys.detach().to(self.keys))
        n = keys.shape[0]
        if self.size % n:
            raise ValueError(f"the queue size {self.size} is not a multiple of the {n} keys enqueued per step "
                             "(batch per process x processes, x the key views of a symmetric or "
                             "multi-view MoCo); choose a size that is")
        p = int(self.pointer)
        self.keys[p:p + n] = keys
        self.pointer.fill_((p + n) % self.size)

