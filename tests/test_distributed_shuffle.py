"""MoCo's shuffle-BN: clvr.methods.distributed.shuffle_across_processes / unshuffle_across_processes.

Two CPU processes (gloo) of batch B. Row k of the global batch (rank k // B) holds the value k, so
every row can be followed: shuffled slices must be a permutation of all rows, rank r gets the rows
order[r*B:(r+1)*B], unshuffle must bring every output back to the row it came from, and a
batch statistic (a stand-in for BatchNorm) must come from the slice a row was shuffled into.
"""

from __future__ import annotations

import pytest
import torch
import torch.multiprocessing as mp

from clvr.methods.distributed import shuffle_across_processes, unshuffle_across_processes

WORLD, B, D, SEED = 2, 4, 3, 0


def global_rows(n=WORLD * B):
    """Row k is [k, 10 k, 100 k]: its value is its global id."""
    return torch.arange(n, dtype=torch.float64)[:, None] * torch.tensor([1.0, 10.0, 100.0], dtype=torch.float64)


def row_wise(x):
    return x * x + 1


def batch_stat(x):
    return x - x.mean(dim=0, keepdim=True)      # depends on the other rows of the slice, like BatchNorm


def _worker(rank, init, out):
    from datetime import timedelta

    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=WORLD, timeout=timedelta(seconds=60))
    try:
        res = {}
        x = global_rows()[rank * B:(rank + 1) * B]
        # rank 1's generator has another seed: only rank 0's is used
        gen = torch.Generator().manual_seed(SEED if rank == 0 else SEED + 1)
        xs, order = shuffle_across_processes(x, gen)
        res["shuffled"], res["order"] = xs, order
        res["row_wise"] = unshuffle_across_processes(row_wise(xs), order)
        res["batch_stat"] = unshuffle_across_processes(batch_stat(xs), order)
        res["x_after"] = x                                  # the input is left alone
        # the global CPU generator, seeded differently on each rank: rank 0's draw is broadcast
        torch.manual_seed(100 + rank)
        _, res["order_global_rng"] = shuffle_across_processes(x)
        # unequal batches: every rank raises, none hangs (the sizes are gathered first)
        for name, fn in [("shuffle", lambda t: shuffle_across_processes(t)),
                         ("unshuffle", lambda t: unshuffle_across_processes(t, torch.arange(2 * B - 1)))]:
            try:
                fn(x if rank == 0 else x[:B - 1])
                res[f"unequal_{name}"] = None
            except ValueError as e:
                res[f"unequal_{name}"] = str(e)
        try:                                                # same batch, other row shape
            shuffle_across_processes(x if rank == 0 else x[:, :2])
            res["other_rows"] = None
        except ValueError as e:
            res["other_rows"] = str(e)
        # still in step after the errors: a round trip works
        xs, order = shuffle_across_processes(x, gen)
        res["after_errors"] = torch.equal(unshuffle_across_processes(xs, order), x)
        torch.save(res, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("shuffle_dist")
    mp.spawn(_worker, args=(f"file://{tmp}/init", str(tmp)), nprocs=WORLD, join=True)
    return [torch.load(tmp / f"rank{r}.pt") for r in range(WORLD)]


# ----------------------------------------------------------------------------- two processes

def test_order_is_one_permutation_drawn_by_rank_0(ranks):
    order = ranks[0]["order"]
    assert order.dtype == torch.long
    assert torch.equal(ranks[1]["order"], order)
    assert torch.equal(torch.sort(order).values, torch.arange(WORLD * B))
    assert torch.equal(order, torch.randperm(WORLD * B, generator=torch.Generator().manual_seed(SEED)))
    assert torch.equal(ranks[0]["order_global_rng"], ranks[1]["order_global_rng"])


def test_each_rank_gets_its_slice_of_the_permutation(ranks):
    order = ranks[0]["order"]
    x = global_rows()
    for r, res in enumerate(ranks):
        assert torch.equal(res["shuffled"], x[order[r * B:(r + 1) * B]])
        assert torch.equal(res["x_after"], x[r * B:(r + 1) * B])
    together = torch.cat([res["shuffled"] for res in ranks])
    assert torch.equal(torch.sort(together[:, 0]).values, x[:, 0])        # every row exactly once


def test_rows_cross_to_the_other_process(ranks):
    order = ranks[0]["order"]
    home = order // B                          # the rank a row came from, by shuffled position
    there = torch.arange(WORLD * B) // B       # the rank that computes it
    assert (home != there).sum() >= 1          # seed 0: true for the order observed
    for r, res in enumerate(ranks):
        came_from = (res["shuffled"][:, 0].long() // B)
        assert torch.equal(came_from, home[r * B:(r + 1) * B])


def test_unshuffle_of_a_row_wise_function_is_the_function(ranks):
    x = global_rows()
    for r, res in enumerate(ranks):
        assert torch.equal(res["row_wise"], row_wise(x[r * B:(r + 1) * B]))


def test_batch_statistics_come_from_the_shuffled_slice(ranks):
    x = global_rows()
    order = ranks[0]["order"]
    slice_mean = [x[order[s * B:(s + 1) * B]].mean(0) for s in range(WORLD)]
    position = torch.argsort(order)            # where each global row was shuffled to
    for r, res in enumerate(ranks):
        want = torch.stack([x[k] - slice_mean[int(position[k]) // B] for k in range(r * B, (r + 1) * B)])
        assert torch.allclose(res["batch_stat"], want, rtol=0, atol=1e-12)
    # and that is not what the unshuffled local batch would give
    assert not torch.allclose(ranks[0]["batch_stat"], batch_stat(x[:B]))


def test_unequal_batches_raise_on_every_rank(ranks):
    for res in ranks:
        for name in ("shuffle", "unshuffle"):
            msg = res[f"unequal_{name}"]
            assert msg is not None and f"{name}_across_processes" in msg
            assert f"batch sizes [{B}, {B - 1}]" in msg
        assert res["other_rows"] is not None and "same batch shape" in res["other_rows"]
        assert res["after_errors"] is True


# ----------------------------------------------------------------------------- one process

@pytest.mark.parametrize("n", [1, 2, 7, 32])
def test_one_process_round_trip(n):
    x = torch.randn(n, 3, 2, dtype=torch.float64)
    xs, order = shuffle_across_processes(x, torch.Generator().manual_seed(n))
    assert order.dtype == torch.long and torch.equal(torch.sort(order).values, torch.arange(n))
    assert torch.equal(xs, x[order])
    assert torch.equal(unshuffle_across_processes(xs, order), x)
    assert torch.equal(unshuffle_across_processes(row_wise(xs), order), row_wise(x))


def test_one_process_permutes_and_follows_the_generator():
    x = global_rows(16)
    xs1, o1 = shuffle_across_processes(x, torch.Generator().manual_seed(3))
    xs2, o2 = shuffle_across_processes(x, torch.Generator().manual_seed(3))
    assert torch.equal(o1, o2) and torch.equal(xs1, xs2)
    assert not torch.equal(o1, torch.arange(16))
    torch.manual_seed(4)
    _, o3 = shuffle_across_processes(x)                     # global generator
    torch.manual_seed(4)
    assert torch.equal(o3, torch.randperm(16))


def test_one_process_is_not_differentiable():
    x = torch.randn(5, 2, requires_grad=True)
    xs, order = shuffle_across_processes(x)
    assert not xs.requires_grad
    assert not unshuffle_across_processes(xs * 2, order).requires_grad


def test_one_process_bad_order_raises():
    with pytest.raises(ValueError, match=r"order must be \(4,\).*got \(5,\)"):
        unshuffle_across_processes(torch.zeros(4, 2), torch.arange(5))
