"""The memory bank of InstDisc and PIRL: one L2-normalised D-vector per sample of the data set.

Slot ``i`` belongs to the sample whose global index (``ViewBatch.index``, written by ``clvr
shard``) is ``i``, so the bank works the same on one process or many. After each step the slots
of the batch move towards the new features, ``v <- normalize(m * v + (1 - m) * f)`` (InstDisc and
PIRL use m = 0.5), with the features of every process (:meth:`update` gathers them). Negatives
are drawn uniformly from the whole bank.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .distributed import all_gather_cat, any_across_processes


class MemoryBank(torch.nn.Module):
    def __init__(self, num_samples: int, dim: int, momentum: float = 0.5, seed: int = 0):
        super().__init__()
        if num_samples < 1 or dim < 1:
            raise ValueError(f"memory bank needs num_samples >= 1 and dim >= 1, got {num_samples}, {dim}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"memory bank momentum must be in [0, 1), got {momentum}")
        self.momentum = momentum
        g = torch.Generator().manual_seed(seed)
        # uniform in [-1/sqrt(D/3), 1/sqrt(D/3)] as InstDisc, then normalised
        bound = 1.0 / math.sqrt(dim / 3)
        init = (torch.rand(num_samples, dim, generator=g) * 2 - 1) * bound
        self.register_buffer("bank", F.normalize(init, dim=1))

    @property
    def num_samples(self) -> int:
        return self.bank.shape[0]

    def get(self, index: torch.Tensor) -> torch.Tensor:
        """The stored vectors of samples ``index`` (no gradient)."""
        self._check(index)
        return self.bank[index.to(self.bank.device)]

    def negatives(self, count: int, generator: torch.Generator | None = None, batch: int | None = None,
                  replacement: bool = True, exclude: torch.Tensor | None = None):
        """Indices of noise rows, drawn uniformly (on the CPU, so that a seed gives the same rows
        on every device):

        - ``exclude`` (B,) given: (B, count), each row drawn from the other N - 1 rows than its
          sample's own, with replacement (one draw per sample, as InstDisc's code);
        - ``batch`` given: (batch, count), from all rows, with replacement;
        - else (count,), one draw shared by a batch: with replacement, or without it (each row
          at most once; all N rows when ``count >= N``).
        """
        n = self.num_samples
        if exclude is not None:
            if n < 2:
                raise ValueError("a memory bank of 1 row has no row other than the sample's own to draw")
            own = exclude.detach().to("cpu", torch.long)[:, None]
            drawn = torch.randint(n - 1, (len(own), count), generator=generator, device="cpu")
            return (drawn + (drawn >= own)).to(self.bank.device)      # skips the own row
        if batch is not None:
            return torch.randint(n, (batch, count), generator=generator, device="cpu").to(self.bank.device)
        if not replacement:
            return torch.randperm(n, generator=generator, device="cpu")[:count].to(self.bank.device)
        return torch.randint(n, (count,), generator=generator, device="cpu").to(self.bank.device)

    @torch.no_grad()
    def update(self, index: torch.Tensor, features: torch.Tensor) -> None:
        """Move slots ``index`` towards ``features`` (gathered from every process first)."""
        index = all_gather_cat(index.to(self.bank.device))
        features = all_gather_cat(features.detach().to(self.bank))
        self._check(index, collective=False)    # every process holds the same gathered indices
        mixed = self.momentum * self.bank[index] + (1 - self.momentum) * features
        self.bank[index] = F.normalize(mixed, dim=1)

    def _check(self, index: torch.Tensor, collective: bool = True) -> None:
        bad = index[(index < 0) | (index >= self.num_samples)]
        # every process learns of a bad index on any, so none is left waiting in a gather (after
        # a gather, every process sees the same indices and no collective is needed)
        found = any_across_processes(bool(bad.numel()), index.device) if collective else bool(bad.numel())
        if found:
            if not bad.numel():
                raise IndexError("a sample index outside the memory bank on another process")
            raise IndexError(f"sample index {int(bad[0])} outside the memory bank of "
                             f"{self.num_samples} samples (is it the bank of this shard set?)")

