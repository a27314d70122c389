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


def any_across_processes(flag: bool, device=None) -> bool:
    """True on every process when ``flag`` is True on any (a collective: every process must call
    it). Lets one process's bad batch stop every process, instead of leaving the others waiting
    in a gather. One process: ``flag``."""
    if rank_and_world()[1] == 1:
        return bool(flag)
    t = torch.tensor([1 if flag else 0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def max_across_processes(values: list[int], device=None) -> list[int]:
    """The element-wise maximum of ``values`` over the processes (a collective). One process:
    ``values``."""
    if rank_and_world()[1] == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.tolist()


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



# ----------------------------------------------------------------------------- MoCo's shuffle-BN

def _check_equal_rows(x: torch.Tensor, what: str) -> None:
    """All-gather (rows, elements per row, dims) of ``x`` and raise ValueError on every process if
    they differ. The message is the same everywhere; the check is one fixed-size collective, so
    it cannot hang on the shapes it checks."""
    here = torch.tensor([x.shape[0] if x.dim() else -1, x[0].numel() if x.dim() and len(x) else -1, x.dim()],
                        dtype=torch.long, device=x.device)
    sizes = [torch.empty_like(here) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, here)
    sizes = [tuple(s.tolist()) for s in sizes]
    if x.dim() == 0:
        raise ValueError(f"{what} needs a batch (at least 1-d); got a 0-d tensor")
    if len(set(sizes)) > 1:
        batches = [s[0] for s in sizes]
        raise ValueError(f"{what} needs the same batch shape on every process; got batch sizes {batches} "
                         f"(rows, elements per row, dims by rank: {sizes})")


def _randperm(n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    where = generator.device if generator is not None else torch.device("cpu")
    return torch.randperm(n, generator=generator, device=where).to(device)


@torch.no_grad()
def shuffle_across_processes(x: torch.Tensor, generator: torch.Generator | None = None
                             ) -> tuple[torch.Tensor, torch.Tensor]:
    """MoCo's batch shuffle: this process's share of a random permutation of every process's rows.

    With W processes of batch b (the same b on every process: checked, ValueError on every process
    otherwise), the W*b rows are gathered in rank order, rank 0 draws a permutation ``order`` of
    W*b (``torch.randperm`` with its ``generator``, or the global CPU generator; the other ranks'
    generators are not used) and broadcasts it, and rank r gets the gathered rows
    ``order[r*b:(r+1)*b]``. Computing the keys on these rows means BatchNorm normalises a key with
    the statistics of other samples than its query's. Undo with :func:`unshuffle_across_processes`.

    One process (or no process group): the local rows in the order of a random permutation. The
    round trip is still right but BatchNorm sees the same samples as without it, so this gives
    none of the effect; one-process training needs another remedy (the MoCo method provides one).

    Returns:
        ``(x_shuffled, order)``: (b, ...) rows, and the (W*b,) int64 permutation, identical on
        every process.
    """
    rank, world = rank_and_world()
    if world == 1:
        if x.dim() == 0:
            raise ValueError("shuffle_across_processes needs a batch (at least 1-d); got a 0-d tensor")
        order = _randperm(x.shape[0], generator, x.device)
        return x[order], order
    _check_equal_rows(x, "shuffle_across_processes")
    b = x.shape[0]
    gathered = all_gather_cat(x)
    if rank == 0:
        order = _randperm(world * b, generator, x.device)
    else:
        order = torch.empty(world * b, dtype=torch.long, device=x.device)
    dist.broadcast(order, src=0)
    return gathered[order[rank * b:(rank + 1) * b]], order


@torch.no_grad()
def unshuffle_across_processes(y: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Undo :func:`shuffle_across_processes`: ``y`` is this process's (b, ...) outputs computed on
    its shuffled rows, ``order`` the permutation it returned. Every process's ``y`` is gathered
    (the global position ``order[p]`` gets row p of the gathered outputs) and this process's
    original rows ``rank*b:(rank+1)*b`` come back, in their original order.
    """
    rank, world = rank_and_world()
    if world > 1:
        _check_equal_rows(y, "unshuffle_across_processes")
    elif y.dim() == 0:
        raise ValueError("unshuffle_across_processes needs a batch (at least 1-d); got a 0-d tensor")
    b = y.shape[0]
    if order.shape != (world * b,):
        # the same on every process (same b, same broadcast order), so all of them raise
        raise ValueError(f"order must be ({world * b},) for {world} process(es) of batch {b}; "
                         f"got {tuple(order.shape)}")
    gathered = all_gather_cat(y)
    # the row that belongs at global position k sits at position p with order[p] == k
    where = torch.argsort(order.to(gathered.device))
    return gathered[where[rank * b:(rank + 1) * b]]
