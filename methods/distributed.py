"""Gathering across processes, with gradients that are right.

``torch.distributed.all_gather`` does not carry gradients. :func:`all_gather_with_grad` does: its
backward all-reduces (sums) the gradient of the gathered tensor over the processes and returns
this process's slice. That is what makes W processes that each compute a loss over the gathered
tensor, averaged by DDP, equal to one process with the whole batch. (Returning only the local
slice of the local gradient, as several libraries did, is right only when every process computes
the whole global loss; otherwise gradients come out W times too small.)
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _AllGather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        world = dist.get_world_size()
        out = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(out, x.contiguous())
        return tuple(out)

    @staticmethod
    def backward(ctx, *grads):
        grad = torch.stack(grads)
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[dist.get_rank()]


def all_gather_with_grad(x: torch.Tensor) -> list[torch.Tensor]:
    """Every process's ``x`` (same shape on all), in rank order, differentiable. One process (or
    no process group): ``[x]``."""
    if rank_and_world()[1] == 1:
        return [x]
    return list(_AllGather.apply(x))


@torch.no_grad()
def all_gather_cat(x: torch.Tensor) -> torch.Tensor:
    """Every process's ``x`` concatenated on the first axis in rank order, without gradient
    (for state: memory-bank updates, queue keys). One process: ``x``."""
    if rank_and_world()[1] == 1:
        return x
    out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out)

