"""Methods on 2 CPU processes (gloo): what gathering, the queue, the memory bank and shuffle-BN
do across processes, checked against one process computing the same thing.

Everything runs in ONE ``mp.spawn`` (a module-scoped fixture); each scenario's results are saved
per rank and the tests below compare them with a one-process reference computed here. Every
model is built from ``torch.manual_seed(0)``, so all ranks and the reference start from the same
weights; everything is float64.
"""

from __future__ import annotations

import sys
import traceback
from datetime import timedelta

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

WORLD, B = 2, 4
TINY_SIMCLR = dict(backbone="tiny", norm="layer", hidden=16, dim=8)
TINY_MOCO = dict(backbone="tiny", hidden=16, dim=8, queue=16)          # BatchNorm backbone
TINY_INSTDISC = dict(backbone="tiny", dim=8, negatives=16)
NUM_SAMPLES = 32
INSTDISC_INDEX = [[0, 5, 10, 15], [16, 21, 26, 31]]                  # per rank
MOCO_SEED = 11


def build(name, **config):
    from clvr.methods import get_method
    torch.manual_seed(0)
    return get_method(name)(**config).double()


def global_views(seed, n=WORLD * B, views=2, size=16):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, 3, size, size, generator=g, dtype=torch.float64) for _ in range(views)]


def batch_of(views, index, valid=None):
    from clvr.pipeline.batch import ViewBatch
    index = torch.as_tensor(index, dtype=torch.long)
    n = len(index)
    return ViewBatch(views=tuple(views), names=tuple(f"view{i}" for i in range(len(views))), kind="two_view",
                     index=index, label=torch.full((n,), -1, dtype=torch.long),
                     valid=torch.ones(n, dtype=torch.bool) if valid is None else valid)


def rank_slice(rank):
    return slice(rank * B, (rank + 1) * B)


# ------------------------------------------------------------------------------ the scenarios

@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These models are tiny: one intra-op thread is many times faster than two that contend
    (and than spinning OpenMP threads on a busy machine). Restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def simclr_scenario(rank):
    import torch.distributed as dist
    # The SimCLR head has BatchNorm1d: in train mode its statistics over 2 x b rows would differ
    # from those over 2b rows on one process. In eval mode it normalises each row with its (fixed)
    # running statistics, and the backbone uses LayerNorm, so every row is computed on its own.
    m = build("simclr", **TINY_SIMCLR).eval()
    views = [v[rank_slice(rank)] for v in global_views(0)]
    out = m(batch_of(views, torch.arange(B) + rank * B))
    out.loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in m.named_parameters()}
    averaged = {}
    for n, g in grads.items():                  # what DDP does: all-reduce, divide by the world
        g = g.clone()
        dist.all_reduce(g)
        averaged[n] = g / WORLD
    return {"loss": out.loss.detach(), "grads": grads, "averaged": averaged}


def moco_scenario(rank):
    m = build("moco_v2", **TINY_MOCO).train()   # shuffle-BN on, BatchNorm in train mode
    v0, v1 = (v[rank_slice(rank)] for v in global_views(1))
    q = m.online(v0)
    before = m.queue.keys.clone()
    torch.manual_seed(MOCO_SEED)                # the same on both ranks; rank 0 draws the order
    out = m(batch_of([v0, v1], torch.arange(B) + rank * B))
    return {"loss": out.loss.detach(), "q": q.detach(), "before": before, "queue": m.queue.keys.clone(),
            "pointer": int(m.queue.pointer)}


def instdisc_scenario(rank):
    m = build("instdisc", **TINY_INSTDISC, num_samples=NUM_SAMPLES).train()
    (x,) = (v[rank_slice(rank)] for v in global_views(2, views=1))
    torch.manual_seed(20 + rank)                # each rank draws its own noise
    out = m(batch_of([x], INSTDISC_INDEX[rank]))
    return {"loss": out.loss.detach(), "bank": m.bank.bank.clone(), "log_z": m.log_z_value.clone()}


def repeats_scenario(rank):
    """SimCLR (gathers) after a skip: rank 1 holds a sample its rebuilt stream brought again
    (invalid, counted in ``dropped``); every rank goes on with the same number of rows."""
    m = build("simclr", **TINY_SIMCLR).eval()
    valid = torch.ones(B, dtype=torch.bool)
    dropped = 0
    if rank == 1:
        valid[2], dropped = False, 1
    views = [v[rank_slice(rank)] for v in global_views(2)]
    batch = batch_of(views, torch.arange(B) + rank * B, valid)
    batch.dropped = dropped
    kept = m.prepare(batch)
    out = m(batch)
    return {"rows": len(kept), "index": kept.index.tolist(), "loss": out.loss.detach()}


def padded_scenario(rank, padded_ranks):
    """SimCLR and MoCo (both gather) on a batch with padding on ``padded_ranks``."""
    from clvr.methods import MethodError
    result = {}
    for name, config in (("simclr", TINY_SIMCLR), ("moco_v2", TINY_MOCO)):
        m = build(name, **config).eval()
        valid = torch.ones(B, dtype=torch.bool)
        if rank in padded_ranks:
            valid[-1] = False
        views = [v[rank_slice(rank)] for v in global_views(3)]
        try:
            m(batch_of(views, torch.arange(B) + rank * B, valid))
            result[name] = ("ok", "")
        except MethodError as e:
            result[name] = ("MethodError", str(e))
        except Exception as e:                  # a failed collective, a timeout...
            result[name] = (type(e).__name__, str(e)[:300])
            break                               # the process group is no longer usable
    return result


def worker(rank, init, out):
    import torch.distributed as dist
    from clvr.methods import available
    available()                                 # import every method before the first collective
    torch.set_num_threads(1)
    # a short timeout: a rank left alone in a collective fails in seconds, not in 30 minutes
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=WORLD, timeout=timedelta(seconds=30))
    results = {}
    try:
        results["simclr"] = simclr_scenario(rank)
        results["moco"] = moco_scenario(rank)
        results["instdisc"] = instdisc_scenario(rank)
        results["repeats"] = repeats_scenario(rank)
        results["padded_everywhere"] = padded_scenario(rank, padded_ranks=(0, 1))
        # last: if only one rank raises, the other is left alone in a collective
        results["padded_on_rank_1"] = padded_scenario(rank, padded_ranks=(1,))
    except Exception:
        results["error"] = traceback.format_exc()
    finally:
        torch.save(results, f"{out}/rank{rank}.pt")
        try:
            dist.destroy_process_group()
        except Exception:
            pass


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("method_distributed")
    mp.spawn(worker, args=(f"file://{tmp}/init", str(tmp)), nprocs=WORLD, join=True)
    results = [torch.load(tmp / f"rank{r}.pt") for r in range(WORLD)]
    for r, res in enumerate(results):
        assert "error" not in res, f"rank {r}:\n{res['error']}"
    return results


# ------------------------------------------------------------------------------ the tests

def test_simclr_two_processes_with_gather_equal_one_process_with_the_whole_batch(ranks):
    m = build("simclr", **TINY_SIMCLR).eval()
    views = global_views(0)
    out = m(batch_of(views, torch.arange(WORLD * B)))
    out.loss.backward()
    whole = {n: p.grad for n, p in m.named_parameters()}
    losses = torch.stack([r["simclr"]["loss"] for r in ranks])
    # every process has 2b anchors: the mean of the processes' losses is the loss over 2 x 2b anchors
    assert torch.allclose(losses.mean(), out.loss.detach(), atol=1e-10, rtol=0)
    assert not torch.allclose(losses[0], out.loss.detach(), atol=1e-6)        # not trivially equal
    # the gather's backward sums every process's loss gradient into the local rows, so the
    # processes' gradients sum to d(sum of losses); DDP's average (sum / world) is the 1-process one
    for n, g in whole.items():
        per_rank = [r["simclr"]["grads"][n] for r in ranks]
        assert torch.allclose(sum(per_rank) / WORLD, g, atol=1e-8, rtol=0), n
        for r in ranks:
            assert torch.allclose(r["simclr"]["averaged"][n], g, atol=1e-8, rtol=0), n
    w = "online.backbone.body.0.weight"
    assert not torch.allclose(ranks[0]["simclr"]["grads"][w], whole[w], atol=1e-6)   # one rank alone is not it


def _moco_reference():
    """The keys of the global batch as shuffle-BN computes them over 2 processes: rank 0 draws
    a permutation of the 2b rows, process r embeds rows order[r*b:(r+1)*b] (its own BatchNorm
    batch) and the outputs go back to their rows."""
    m = build("moco_v2", **TINY_MOCO).train()
    x = global_views(1)[1]
    torch.manual_seed(MOCO_SEED)
    order = torch.randperm(WORLD * B)
    shuffled = torch.cat([m.key_encoder(x[order[rank_slice(r)]]) for r in range(WORLD)])
    return m, x, shuffled[torch.argsort(order)]


def test_moco_queue_holds_both_ranks_keys_in_rank_order(ranks):
    m, x, keys = _moco_reference()
    q0, q1 = ranks[0]["moco"], ranks[1]["moco"]
    assert torch.equal(q0["queue"], q1["queue"]) and q0["pointer"] == q1["pointer"] == WORLD * B
    queue = q0["queue"]
    assert torch.allclose(queue[:B], keys[:B], atol=1e-12, rtol=0)          # rank 0's keys first
    assert torch.allclose(queue[B:2 * B], keys[B:], atol=1e-12, rtol=0)     # then rank 1's
    assert torch.equal(queue[2 * B:], q0["before"][2 * B:])
    # each rank's loss: its queries against its keys and the queue before the step
    from clvr.methods.losses import info_nce
    for r, res in enumerate(ranks):
        expected = info_nce(res["moco"]["q"], keys[rank_slice(r)], res["moco"]["before"],
                            m.config.temperature, normalize=False)
        assert torch.allclose(res["moco"]["loss"], expected, atol=1e-12, rtol=0)


def test_moco_shuffle_bn_uses_the_cross_process_shuffled_batch(ranks):
    m, x, keys = _moco_reference()
    queue = ranks[0]["moco"]["queue"][:WORLD * B]
    assert torch.allclose(queue, keys, atol=1e-12, rtol=0)
    # neither each process's own batch nor the whole batch gives these statistics
    local = torch.cat([m.key_encoder(x[rank_slice(r)]) for r in range(WORLD)])
    assert not torch.allclose(queue, local, atol=1e-4)
    assert not torch.allclose(queue, m.key_encoder(x), atol=1e-4)


def test_instdisc_bank_and_log_z_follow_every_process(ranks):
    from clvr.methods.losses import nce, nce_log_z
    m = build("instdisc", **TINY_INSTDISC, num_samples=NUM_SAMPLES).train()
    t = m.config.temperature
    bank0 = m.bank.bank.clone()
    x = global_views(2, views=1)[0]
    feats, negs, poss, keeps = [], [], [], []
    for r in range(WORLD):
        f = m.online(x[rank_slice(r)])                     # each rank's BatchNorm batch
        torch.manual_seed(20 + r)
        drawn = torch.randint(NUM_SAMPLES, (m.config.negatives,))
        keeps.append(drawn[None, :] != torch.as_tensor(INSTDISC_INDEX[r])[:, None])   # never the own row
        feats.append(f)
        negs.append(f @ bank0[drawn].T)
        poss.append((f * bank0[INSTDISC_INDEX[r]]).sum(1))
    log_z = nce_log_z(torch.cat(negs), t, NUM_SAMPLES, torch.cat(keeps))   # the noise of every process
    a, b = ranks[0]["instdisc"], ranks[1]["instdisc"]
    assert torch.equal(a["log_z"], b["log_z"])
    assert torch.allclose(a["log_z"], log_z, atol=1e-12, rtol=0)
    assert not torch.allclose(a["log_z"], nce_log_z(negs[0], t, NUM_SAMPLES, keeps[0]), atol=1e-6)
    for r, res in enumerate(ranks):
        assert torch.allclose(res["instdisc"]["loss"], nce(poss[r], negs[r], log_z, t, NUM_SAMPLES - 1, keeps[r]),
                              atol=1e-12, rtol=0)
    # both ranks' rows moved, on both ranks; the other rows did not
    assert torch.equal(a["bank"], b["bank"])
    touched = torch.zeros(NUM_SAMPLES, dtype=torch.bool)
    for r in range(WORLD):
        idx = INSTDISC_INDEX[r]
        touched[idx] = True
        assert torch.allclose(a["bank"][idx], F.normalize(0.5 * bank0[idx] + 0.5 * feats[r], dim=1),
                              atol=1e-12, rtol=0)
    assert torch.equal(a["bank"][~touched], bank0[~touched])


def test_a_skips_repeat_on_one_rank_leaves_every_rank_the_same_number_of_rows(ranks):
    rows = [res["repeats"]["rows"] for res in ranks]
    assert rows == [B - 1] * WORLD
    assert ranks[0]["repeats"]["index"] == list(range(B - 1))                   # the first valid rows
    assert ranks[1]["repeats"]["index"] == [i + B for i in range(B) if i != 2]  # the repeat left out
    assert all(torch.isfinite(res["repeats"]["loss"]) for res in ranks)


def test_padding_on_every_rank_raises_method_error_on_every_rank(ranks):
    for r, res in enumerate(ranks):
        for name in ("simclr", "moco_v2"):
            kind, message = res["padded_everywhere"][name]
            assert kind == "MethodError", (r, name, kind, message)
            assert "last_batch='drop'" in message and "padding" in message, message


def test_padding_on_one_rank_only_raises_method_error_on_every_rank(ranks):
    for r, res in enumerate(ranks):
        kind, message = res["padded_on_rank_1"]["simclr"]
        assert kind == "MethodError", (r, kind, message)
        assert "last_batch='drop'" in message


if __name__ == "__main__":
    sys.exit(0)
