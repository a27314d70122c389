"""Gathering across processes: 2 CPU processes (gloo) x batch b equal 1 process x batch 2b.

The loss of each process is the mean over its own anchors; DDP averages the processes'
gradients. So the mean of the 2 losses must equal the 1-process loss, and each process's
gradient divided by the world size must equal the 1-process gradient of its slice. A gather whose
backward returns only the local slice of the local gradient gets this wrong by a factor (the bug
several libraries shipped), so the gradients are compared directly.
"""

from __future__ import annotations

import sys

import torch
import torch.multiprocessing as mp

WORLD, B, D, TAU = 2, 3, 5, 0.3


def data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(WORLD * B, D, generator=g, dtype=torch.float64), \
        torch.randn(WORLD * B, D, generator=g, dtype=torch.float64)


def worker(rank, init, out):
    import torch.distributed as dist
    from clvr.methods.losses import nt_xent
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=WORLD)
    try:
        z1, z2 = (t[rank * B:(rank + 1) * B].clone().requires_grad_(True) for t in data())
        loss = nt_xent(z1, z2, TAU, gather=True)
        loss.backward()
        # memory bank and queue: each rank gives its own indices and keys
        from clvr.methods.memory_bank import MemoryBank
        from clvr.methods.queue import KeyQueue
        bank = MemoryBank(10, 2, momentum=0.0)
        bank.update(torch.tensor([rank, 5 + rank]), torch.full((2, 2), float(rank + 1)))
        queue = KeyQueue(size=8, dim=2)
        queue.enqueue(torch.full((2, 2), float(rank + 1)))
        torch.save({"loss": loss.detach(), "g1": z1.grad, "g2": z2.grad, "bank": bank.bank,
                    "queue": queue.keys}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_nt_xent_gathered_over_two_processes_equals_one_big_batch(tmp_path):
    from clvr.methods.losses import nt_xent
    mp.spawn(worker, args=(f"file://{tmp_path}/init", str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]

    z1, z2 = (t.clone().requires_grad_(True) for t in data())
    whole = nt_xent(z1, z2, TAU)
    whole.backward()
    assert torch.allclose(torch.stack([r["loss"] for r in ranks]).mean(), whole.detach(), atol=1e-10)
    for r, res in enumerate(ranks):
        sl = slice(r * B, (r + 1) * B)
        assert torch.allclose(res["g1"] / WORLD, z1.grad[sl], atol=1e-10)
        assert torch.allclose(res["g2"] / WORLD, z2.grad[sl], atol=1e-10)
    # each process's own loss differs from the whole one: the comparison is not trivially equal
    assert not torch.allclose(ranks[0]["loss"], whole.detach())


def test_bank_and_queue_receive_every_rank_in_rank_order(tmp_path):
    mp.spawn(worker, args=(f"file://{tmp_path}/init", str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    unit = 2 ** -0.5
    for res in ranks:                               # identical on both ranks
        assert torch.allclose(res["bank"][[0, 5]], torch.full((2, 2), unit))      # rank 0's update
        assert torch.allclose(res["bank"][[1, 6]], torch.full((2, 2), unit))      # rank 1's update
        assert torch.equal(res["queue"][:2], torch.full((2, 2), 1.0))             # rank 0's keys first
        assert torch.equal(res["queue"][2:4], torch.full((2, 2), 2.0))            # then rank 1's
    assert torch.equal(ranks[0]["bank"], ranks[1]["bank"]) and torch.equal(ranks[0]["queue"], ranks[1]["queue"])


if __name__ == "__main__":
    sys.exit(0)
