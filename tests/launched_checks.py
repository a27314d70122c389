"""Checks run by ``accelerate launch --multi_gpu --num_processes 2`` on CPU (see
tests/test_launched.py): the process group is the one accelerate sets up from the environment,
as in a real run. Each process writes what it measured to OUT/rank{r}.pt; the test compares.

Not collected by pytest (no ``test_`` prefix)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from accelerate import Accelerator, DistributedDataParallelKwargs

from clvr.methods import get_method
from clvr.methods.distributed import shuffle_across_processes, unshuffle_across_processes
from clvr.methods.losses import nt_xent
from clvr.methods.memory_bank import MemoryBank
from clvr.methods.queue import KeyQueue
from clvr.pipeline.batch import ViewBatch

B, D = 4, 6


def main(out: Path) -> None:
    acc = Accelerator(cpu=True, kwargs_handlers=[DistributedDataParallelKwargs(broadcast_buffers=False)])
    rank, world = acc.process_index, acc.num_processes
    assert world == 2 and dist.is_initialized(), "launched as 2 processes"
    res = {"rank": rank, "world": world, "backend": dist.get_backend()}
    mine = slice(rank * B, (rank + 1) * B)

    # 1. NT-Xent with gathered negatives: 2 x b against 1 x 2b, loss and gradients
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(world * B, D, generator=g, dtype=torch.float64), torch.randn(world * B, D, generator=g, dtype=torch.float64)
    a, b = z1[mine].clone().requires_grad_(True), z2[mine].clone().requires_grad_(True)
    loss = nt_xent(a, b, 0.3, gather=True)
    loss.backward()
    wa, wb = z1.clone().requires_grad_(True), z2.clone().requires_grad_(True)
    whole = nt_xent(wa, wb, 0.3)
    whole.backward()
    mean = loss.detach().clone()
    dist.all_reduce(mean)
    res["nt_xent"] = {"mean_loss": float(mean / world), "whole_loss": float(whole),
                      "grad_err": float(max((a.grad / world - wa.grad[mine]).abs().max(),
                                            (b.grad / world - wb.grad[mine]).abs().max()))}

    # 2. the SimCLR method wrapped by accelerate (DDP), in float64: averaged gradients of 2 x b
    #    equal 1 x 2b (eval mode: BatchNorm uses its running statistics on both sides)
    torch.manual_seed(0)
    config = {"backbone": "tiny", "norm": "layer", "hidden": 16, "dim": 8}
    method = get_method("simclr")(config).double().eval()
    reference = get_method("simclr")({**config, "gather": False}).double().eval()   # the whole batch here
    reference.load_state_dict(method.state_dict())
    views = [torch.randn(world * B, 3, 16, 16, generator=g, dtype=torch.float64) for _ in range(2)]

    def batch(sl):
        n = views[0][sl].shape[0]
        return ViewBatch(views=tuple(v[sl] for v in views), names=("view0", "view1"), index=torch.arange(n),
                         label=torch.zeros(n, dtype=torch.long), valid=torch.ones(n, dtype=torch.bool), kind="two_view")
    model = acc.prepare(method)
    out_loss = model(batch(mine)).loss
    acc.backward(out_loss)                           # DDP averages the gradients over the processes
    ref_loss = reference(batch(slice(None))).loss
    ref_loss.backward()
    errs = [float((p.grad - q.grad).abs().max()) for p, q in zip(method.parameters(), reference.parameters())
            if p.grad is not None]
    res["simclr_ddp"] = {"grad_err": max(errs), "params": len(errs),
                         "loss": float(out_loss), "whole_loss": float(ref_loss)}

    # 3. queue and bank take every process's keys and features, in rank order
    queue = KeyQueue(size=4 * world, dim=2)
    queue.enqueue(torch.full((2, 2), float(rank + 1)))
    bank = MemoryBank(10, 2, momentum=0.0)
    bank.update(torch.tensor([rank, 5 + rank]), torch.full((2, 2), float(rank + 1)))
    res["queue"], res["bank"] = queue.keys.clone(), bank.bank.clone()

    # 4. shuffle-BN's shuffle crosses processes and comes back
    rows = torch.arange(rank * B, (rank + 1) * B, dtype=torch.float64)[:, None]
    torch.manual_seed(1)
    shuffled, order = shuffle_across_processes(rows)
    res["shuffled"], res["order"] = shuffled.clone(), order.clone()
    res["unshuffled"] = unshuffle_across_processes(shuffled * 10, order)
    torch.save(res, out / f"rank{rank}.pt")
    acc.wait_for_everyone()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
