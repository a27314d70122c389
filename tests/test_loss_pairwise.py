"""clvr.methods.losses.pairwise_info_nce against a loop-by-loop float64 reference of its formula.

Row i of a and row i of b are a positive pair. Direction a->b, for each valid anchor a_i:

    loss_i = log sum_{j in C(i)} exp(a_i.b_j / t) - a_i.b_i / t,
    C(i) = { j valid : j == i or group[j] != group[i] }

and the direction's loss is the mean over the valid anchors; b->a swaps a and b. Symmetric: the
average of the two directions. a and b are L2-normalised first when ``normalize``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from clvr.methods.losses import pairwise_info_nce


# ----------------------------------------------------------------------------- reference

def _unit(v):
    norm = math.sqrt(sum(float(x) * float(x) for x in v))
    return [float(x) / norm for x in v]


def _dot(a, b):
    return sum(float(x) * float(y) for x, y in zip(a, b))


def _logsumexp(xs):
    top = max(xs)
    return top + math.log(sum(math.exp(x - top) for x in xs))


def reference_pairwise(a, b, temperature, symmetric=True, normalize=True, valid=None, group=None):
    """Plain loops over anchors and candidates, in Python floats (float64)."""
    a = [list(r) for r in np.asarray(a, dtype=np.float64)]
    b = [list(r) for r in np.asarray(b, dtype=np.float64)]
    n = len(a)
    if normalize:
        a, b = [_unit(r) for r in a], [_unit(r) for r in b]
    valid = [True] * n if valid is None else [bool(v) for v in valid]
    group = list(range(n)) if group is None else [int(g) for g in group]

    def one_way(anchors, candidates):
        total, count = 0.0, 0
        for i in range(n):
            if not valid[i]:
                continue
            logits = [_dot(anchors[i], candidates[j]) / temperature for j in range(n)
                      if valid[j] and (j == i or group[j] != group[i])]
            total += _logsumexp(logits) - _dot(anchors[i], candidates[i]) / temperature
            count += 1
        return total / count if count else 0.0

    if symmetric:
        return (one_way(a, b) + one_way(b, a)) / 2
    return one_way(a, b)


def _rand(gen, *shape, dtype=torch.float64):
    return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)


def _masks(gen, n, with_valid, with_group):
    valid = group = None
    if with_valid:
        valid = torch.rand(n, generator=gen) < 0.7
        valid[0] = True                                   # at least one valid anchor
    if with_group:
        group = torch.randint(0, max(1, n // 2), (n,), generator=gen)   # repeats guaranteed for n > 1
    return valid, group


# ----------------------------------------------------------------------------- reference comparison

@pytest.mark.parametrize("n, d, temperature", [(1, 3, 0.1), (2, 2, 0.07), (5, 8, 0.1), (9, 4, 0.5), (12, 16, 1.0)])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("with_valid, with_group", [(False, False), (True, False), (False, True), (True, True)])
def test_matches_reference(n, d, temperature, symmetric, normalize, with_valid, with_group):
    gen = torch.Generator().manual_seed(1000 * n + 10 * d + 2 * with_valid + with_group)
    a, b = _rand(gen, n, d) * 3, _rand(gen, n, d) * 0.2
    if not normalize:
        a, b = a / 3, b / 0.2 * 0.5                    # unnormalised logits of moderate size
    valid, group = _masks(gen, n, with_valid, with_group)
    got = pairwise_info_nce(a, b, temperature, symmetric=symmetric, normalize=normalize, valid=valid, group=group)
    assert got.dtype == torch.float64 and got.dim() == 0
    want = reference_pairwise(a.numpy(), b.numpy(), temperature, symmetric, normalize,
                              None if valid is None else valid.numpy(), None if group is None else group.numpy())
    assert got.item() == pytest.approx(want, rel=1e-10, abs=1e-10)


def test_the_two_directions_and_their_average():
    gen = torch.Generator().manual_seed(5)
    a, b = _rand(gen, 7, 6), _rand(gen, 7, 6)
    valid, group = _masks(gen, 7, True, True)
    kw = dict(valid=valid, group=group)
    a_to_b = pairwise_info_nce(a, b, 0.2, symmetric=False, **kw).item()
    b_to_a = pairwise_info_nce(b, a, 0.2, symmetric=False, **kw).item()
    assert abs(a_to_b - b_to_a) > 1e-3                   # the directions really differ
    assert a_to_b == pytest.approx(reference_pairwise(a.numpy(), b.numpy(), 0.2, False, True,
                                                      valid.numpy(), group.numpy()), rel=1e-10, abs=1e-10)
    assert b_to_a == pytest.approx(reference_pairwise(b.numpy(), a.numpy(), 0.2, False, True,
                                                      valid.numpy(), group.numpy()), rel=1e-10, abs=1e-10)
    assert pairwise_info_nce(a, b, 0.2, **kw).item() == pytest.approx((a_to_b + b_to_a) / 2, rel=1e-12, abs=1e-12)


def test_tensor_temperature_equals_float_and_gets_a_gradient():
    gen = torch.Generator().manual_seed(6)
    a, b = _rand(gen, 6, 5), _rand(gen, 6, 5)
    valid, group = _masks(gen, 6, True, True)
    t = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    got = pairwise_info_nce(a, b, t, valid=valid, group=group)
    want = reference_pairwise(a.numpy(), b.numpy(), 0.3, True, True, valid.numpy(), group.numpy())
    assert got.item() == pytest.approx(want, rel=1e-10, abs=1e-10)
    assert got.item() == pytest.approx(pairwise_info_nce(a, b, 0.3, valid=valid, group=group).item(), abs=1e-14)
    got.backward()
    h = 1e-6                                               # central difference of the reference
    fd = (reference_pairwise(a.numpy(), b.numpy(), 0.3 + h, True, True, valid.numpy(), group.numpy())
          - reference_pairwise(a.numpy(), b.numpy(), 0.3 - h, True, True, valid.numpy(), group.numpy())) / (2 * h)
    assert t.grad is not None and t.grad.item() == pytest.approx(fd, rel=1e-6, abs=1e-8)


def test_default_temperature_is_01_and_normalises():
    gen = torch.Generator().manual_seed(7)
    a, b = _rand(gen, 5, 4) * 7, _rand(gen, 5, 4) * 0.1
    assert pairwise_info_nce(a, b).item() == pytest.approx(
        reference_pairwise(a.numpy(), b.numpy(), 0.1), rel=1e-10, abs=1e-10)


def test_gather_without_a_process_group_is_the_local_loss():
    gen = torch.Generator().manual_seed(8)
    a, b = _rand(gen, 6, 5), _rand(gen, 6, 5)
    valid, group = _masks(gen, 6, True, True)
    for symmetric in (True, False):
        kw = dict(symmetric=symmetric, valid=valid, group=group)
        assert pairwise_info_nce(a, b, 0.2, gather=True, **kw).item() == \
            pytest.approx(pairwise_info_nce(a, b, 0.2, **kw).item(), abs=1e-14)


def test_invalid_rows_do_not_matter():
    gen = torch.Generator().manual_seed(9)
    a, b = _rand(gen, 8, 5), _rand(gen, 8, 5)
    valid = torch.tensor([1, 0, 1, 1, 0, 1, 1, 0], dtype=torch.bool)
    base = pairwise_info_nce(a, b, 0.1, valid=valid).item()
    a2, b2 = a.clone(), b.clone()
    a2[~valid], b2[~valid] = _rand(gen, 3, 5) * 100, torch.zeros(3, 5, dtype=torch.float64)   # padding
    assert pairwise_info_nce(a2, b2, 0.1, valid=valid).item() == pytest.approx(base, rel=1e-12, abs=1e-12)
    assert base == pytest.approx(pairwise_info_nce(a[valid], b[valid], 0.1).item(), rel=1e-12, abs=1e-12)


# ----------------------------------------------------------------------------- closed forms

@pytest.mark.parametrize("n", [1, 2, 3, 8, 50])
@pytest.mark.parametrize("temperature", [0.05, 0.1, 1.0])
@pytest.mark.parametrize("symmetric", [True, False])
def test_collinear_embeddings_give_log_n(n, temperature, symmetric):
    gen = torch.Generator().manual_seed(n)
    direction = _rand(gen, 1, 7)
    a = direction * (torch.rand(n, 1, generator=gen, dtype=torch.float64) + 0.1)   # same unit vector
    b = direction * (torch.rand(n, 1, generator=gen, dtype=torch.float64) + 0.1)
    got = pairwise_info_nce(a, b, temperature, symmetric=symmetric)
    assert got.item() == pytest.approx(math.log(n), rel=1e-12, abs=1e-12)


def test_collinear_with_valid_gives_log_n_valid():
    n = 9
    valid = torch.tensor([1, 1, 0, 1, 0, 0, 1, 1, 0], dtype=torch.bool)             # 5 valid
    a = torch.ones(n, 3, dtype=torch.float64)
    got = pairwise_info_nce(a, 2 * a, 0.1, valid=valid)
    assert got.item() == pytest.approx(math.log(5), rel=1e-12, abs=1e-12)


def test_collinear_with_groups_and_valid_closed_form():
    # 8 rows, row 7 invalid. Groups of the valid rows: {0, 1} -> 0, {2, 3, 4} -> 1, {5} -> 2,
    # {6} -> 1 too. Anchor i's denominator keeps the valid rows minus the others of its group:
    #   rows 0, 1:         7 - 1 = 6 candidates
    #   rows 2, 3, 4, 6:   7 - 3 = 4 candidates
    #   row 5:             7 candidates
    # (row 7 shares group 2 with row 5 but, invalid, is not counted anyway)
    valid = torch.tensor([1, 1, 1, 1, 1, 1, 1, 0], dtype=torch.bool)
    group = torch.tensor([0, 0, 1, 1, 1, 2, 1, 2])
    a = torch.full((8, 4), 0.5, dtype=torch.float64)
    want = (2 * math.log(6) + 4 * math.log(4) + math.log(7)) / 7
    for symmetric in (True, False):
        got = pairwise_info_nce(a, a.clone(), 0.07, symmetric=symmetric, valid=valid, group=group)
        assert got.item() == pytest.approx(want, rel=1e-12, abs=1e-12)


def test_one_group_leaves_only_the_positive():
    # everything is the same object: the denominator is the positive alone, the loss is 0
    gen = torch.Generator().manual_seed(10)
    a, b = _rand(gen, 5, 4), _rand(gen, 5, 4)
    got = pairwise_info_nce(a, b, 0.1, group=torch.zeros(5, dtype=torch.long))
    assert got.item() == pytest.approx(0.0, abs=1e-12)


def test_orthonormal_pairs_closed_form():
    # a = b = e_i: s_ii = 1/t, s_ij = 0 -> loss = log(exp(1/t) + n - 1) - 1/t
    n, t = 4, 0.5
    e = torch.eye(n, dtype=torch.float64)
    want = math.log(math.exp(1 / t) + n - 1) - 1 / t
    assert pairwise_info_nce(e, e.clone(), t).item() == pytest.approx(want, rel=1e-12)


# ----------------------------------------------------------------------------- gradients

@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("normalize", [True, False])
def test_gradcheck_with_masks_and_temperature(symmetric, normalize):
    gen = torch.Generator().manual_seed(11)
    a = _rand(gen, 5, 3).requires_grad_()
    b = _rand(gen, 5, 3).requires_grad_()
    t = torch.tensor(0.4, dtype=torch.float64, requires_grad=True)
    valid = torch.tensor([1, 1, 0, 1, 1], dtype=torch.bool)
    group = torch.tensor([0, 1, 0, 0, 2])
    assert torch.autograd.gradcheck(
        lambda x, y, tau: pairwise_info_nce(x, y, tau, symmetric=symmetric, normalize=normalize,
                                            valid=valid, group=group), (a, b, t))


# ----------------------------------------------------------------------------- permutations

def test_permuting_everything_consistently_is_invariant():
    gen = torch.Generator().manual_seed(12)
    n = 11
    a, b = _rand(gen, n, 6), _rand(gen, n, 6)
    valid, group = _masks(gen, n, True, True)
    perm = torch.randperm(n, generator=gen)
    assert not torch.equal(perm, torch.arange(n))
    for symmetric in (True, False):
        base = pairwise_info_nce(a, b, 0.1, symmetric=symmetric, valid=valid, group=group).item()
        moved = pairwise_info_nce(a[perm], b[perm], 0.1, symmetric=symmetric, valid=valid[perm], group=group[perm])
        assert moved.item() == pytest.approx(base, rel=1e-12, abs=1e-12)


def test_wrong_pairing_changes_the_loss():
    gen = torch.Generator().manual_seed(13)
    a = _rand(gen, 6, 8)
    b = a + 0.1 * _rand(gen, 6, 8)
    base = pairwise_info_nce(a, b, 0.1).item()
    assert pairwise_info_nce(a, b[torch.roll(torch.arange(6), 1)], 0.1).item() > base + 1.0


# ----------------------------------------------------------------------------- no valid anchor

@pytest.mark.parametrize("symmetric", [True, False])
def test_no_valid_anchor_is_a_connected_zero(symmetric):
    gen = torch.Generator().manual_seed(14)
    a, b = _rand(gen, 4, 3).requires_grad_(), _rand(gen, 4, 3).requires_grad_()
    t = torch.tensor(0.1, dtype=torch.float64, requires_grad=True)
    loss = pairwise_info_nce(a, b, t, symmetric=symmetric, valid=torch.zeros(4, dtype=torch.bool))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    for x in (a, b, t):
        assert x.grad is not None and torch.equal(x.grad, torch.zeros_like(x))


def test_empty_batch_is_a_connected_zero():
    a = torch.zeros(0, 3, dtype=torch.float64, requires_grad=True)
    loss = pairwise_info_nce(a, a.detach().clone())
    assert loss.item() == 0.0
    loss.backward()
    assert a.grad is not None and a.grad.shape == (0, 3)


# ----------------------------------------------------------------------------- stability

def test_low_temperature_float32_with_masks_is_finite():
    gen = torch.Generator().manual_seed(15)
    a = _rand(gen, 16, 32, dtype=torch.float32).mul(50).requires_grad_()
    b = _rand(gen, 16, 32, dtype=torch.float32).requires_grad_()
    valid, group = _masks(gen, 16, True, True)
    loss = pairwise_info_nce(a, b, 0.01, valid=valid, group=group)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all()
    want = reference_pairwise(a.detach().double().numpy(), b.detach().double().numpy(), 0.01, True, True,
                              valid.numpy(), group.numpy())
    assert loss.item() == pytest.approx(want, rel=1e-3, abs=1e-3)


# ----------------------------------------------------------------------------- errors

@pytest.mark.parametrize("sa, sb", [((4, 3), (5, 3)), ((4, 3), (4, 2)), ((3,), (3,)), ((2, 4, 3), (2, 4, 3))])
def test_wrong_shapes_raise(sa, sb):
    with pytest.raises(ValueError, match=r"a and b must both be \(N, D\).*\(" + str(sa[0])):
        pairwise_info_nce(torch.randn(*sa), torch.randn(*sb))


@pytest.mark.parametrize("valid", [torch.ones(5, dtype=torch.bool), torch.ones(4, 1, dtype=torch.bool),
                                   torch.ones(4)])
def test_bad_valid_raises(valid):
    with pytest.raises(ValueError, match=r"valid must be a bool tensor of shape \(4,\)"):
        pairwise_info_nce(torch.randn(4, 3), torch.randn(4, 3), valid=valid)


@pytest.mark.parametrize("group", [torch.zeros(3, dtype=torch.long), torch.zeros(4, 2, dtype=torch.long),
                                   torch.zeros(4)])
def test_bad_group_raises(group):
    with pytest.raises(ValueError, match=r"group must be an integer tensor of shape \(4,\)"):
        pairwise_info_nce(torch.randn(4, 3), torch.randn(4, 3), group=group)


@pytest.mark.parametrize("temperature", [0.0, -0.1, float("nan"), float("inf"), torch.tensor([0.1])])
def test_bad_temperature_raises(temperature):
    with pytest.raises(ValueError, match="temperature"):
        pairwise_info_nce(torch.randn(4, 3), torch.randn(4, 3), temperature)


# ----------------------------------------------------------------------------- two processes

WORLD, B, D, TAU = 2, 4, 5, 0.3
# global rows 0-3 on rank 0, 4-7 on rank 1. Rows 2 and 7 are padding: 3 valid anchors per rank.
VALID = torch.tensor([1, 1, 0, 1, 1, 1, 1, 0], dtype=torch.bool)
# groups span both processes: {0, 3, 6} and {1, 4} are the same objects; 2, 5, 7 alone
GROUP = torch.tensor([0, 1, 2, 0, 1, 4, 0, 5])
# (symmetric, masked) configurations run in every spawn
CONFIGS = [(True, True), (False, True), (True, False)]
# unequal split: rank 1 has no valid anchor at all
VALID_UNEQUAL = torch.tensor([1, 1, 0, 1, 0, 0, 0, 0], dtype=torch.bool)


def _data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(WORLD * B, D, generator=g, dtype=torch.float64), \
        torch.randn(WORLD * B, D, generator=g, dtype=torch.float64)


def _leaves(a, b, sl=slice(None)):
    return (a[sl].clone().requires_grad_(True), b[sl].clone().requires_grad_(True),
            torch.tensor(TAU, dtype=torch.float64, requires_grad=True))


def _worker(rank, init, out):
    from datetime import timedelta

    import torch.distributed as dist
    from clvr.methods.losses import pairwise_info_nce
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=WORLD, timeout=timedelta(seconds=60))
    try:
        sl = slice(rank * B, (rank + 1) * B)
        results = {}
        for symmetric, masked in CONFIGS:
            a, b, t = _leaves(*_data(), sl)
            loss = pairwise_info_nce(a, b, t, symmetric=symmetric, gather=True,
                                     valid=VALID[sl] if masked else None, group=GROUP[sl] if masked else None)
            loss.backward()
            results[(symmetric, masked)] = (loss.detach(), a.grad, b.grad, t.grad)
        # Unequal split, scaled as the docstring says (W * n_r / n): rank 1 has no valid anchor,
        # its loss is 0, and its backward must still join the gathers' all-reduce (no hang).
        a, b, t = _leaves(*_data(), sl)
        loss = pairwise_info_nce(a, b, t, gather=True, valid=VALID_UNEQUAL[sl], group=GROUP[sl])
        n_r = VALID_UNEQUAL[sl].sum().item()
        (loss * WORLD * n_r / VALID_UNEQUAL.sum().item()).backward()
        results["unequal"] = (loss.detach(), a.grad, b.grad, t.grad)
        torch.save(results, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pairwise_dist")
    mp.spawn(_worker, args=(f"file://{tmp}/init", str(tmp)), nprocs=WORLD, join=True)
    return [torch.load(tmp / f"rank{r}.pt") for r in range(WORLD)]


@pytest.mark.parametrize("symmetric, masked", CONFIGS)
def test_two_processes_equal_one_big_batch(two_processes, symmetric, masked):
    a, b, t = _leaves(*_data())
    whole = pairwise_info_nce(a, b, t, symmetric=symmetric, valid=VALID if masked else None,
                              group=GROUP if masked else None)
    whole.backward()
    ranks = [res[(symmetric, masked)] for res in two_processes]
    # Every rank has the same number of valid anchors (3, or 4 unmasked), so DDP's average of the
    # per-rank means is the global mean.
    assert torch.allclose(torch.stack([r[0] for r in ranks]).mean(), whole.detach(), rtol=0, atol=1e-10)
    # Embedding gradients: the gathers' backward already sums every rank's loss gradient into each
    # rank's rows, so a rank's gradient is W times the gradient of the averaged loss; DDP's
    # averaging of the parameter gradients divides it by W again.
    for r, (_, ga, gb, _) in enumerate(ranks):
        sl = slice(r * B, (r + 1) * B)
        assert torch.allclose(ga / WORLD, a.grad[sl], rtol=0, atol=1e-10)
        assert torch.allclose(gb / WORLD, b.grad[sl], rtol=0, atol=1e-10)
    # Temperature gradient: nothing is gathered on its path, so rank r holds only the gradient of
    # its own loss, (1/n_r) sum_{i in rank r} dl_i/dt. DDP averages over ranks:
    # (1/W) sum_r (1/n_r) sum_{i in r} dl_i/dt, which is (1/n) sum_i dl_i/dt, the 1-process
    # gradient, because n_r = n / W here (equal split). So sum over ranks / W == whole, not each rank.
    assert torch.allclose(sum(r[3] for r in ranks) / WORLD, t.grad, rtol=0, atol=1e-10)
    assert not torch.allclose(ranks[0][3], t.grad, rtol=0, atol=1e-6)
    # each rank's own loss differs from the whole one: the comparison is not trivially equal
    assert not torch.allclose(ranks[0][0], whole.detach(), rtol=0, atol=1e-6)


def test_two_processes_with_an_empty_rank_scaled_by_anchor_counts(two_processes):
    a, b, t = _leaves(*_data())
    whole = pairwise_info_nce(a, b, t, valid=VALID_UNEQUAL, group=GROUP)
    whole.backward()
    ranks = [res["unequal"] for res in two_processes]
    assert ranks[1][0].item() == 0.0                             # no valid anchor on rank 1
    n = VALID_UNEQUAL.sum().item()
    counts = [VALID_UNEQUAL[r * B:(r + 1) * B].sum().item() for r in range(WORLD)]
    weighted = sum(c * r[0] for c, r in zip(counts, ranks)) / n
    assert torch.allclose(weighted, whole.detach(), rtol=0, atol=1e-10)
    for r, (_, ga, gb, _) in enumerate(ranks):
        sl = slice(r * B, (r + 1) * B)
        assert torch.allclose(ga / WORLD, a.grad[sl], rtol=0, atol=1e-10)
        assert torch.allclose(gb / WORLD, b.grad[sl], rtol=0, atol=1e-10)
    assert torch.equal(ranks[1][3], torch.zeros_like(t.grad))      # a zero, not a missing, gradient
    assert torch.allclose(sum(r[3] for r in ranks) / WORLD, t.grad, rtol=0, atol=1e-10)
