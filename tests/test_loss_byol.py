"""clvr.methods.losses.byol against a loop-by-loop float64 reference of its formula:

    loss = mean_i (2 - 2 cos(p1_i, z2_i)) + mean_i (2 - 2 cos(p2_i, z1_i)),

with no gradient into the targets z1, z2.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from clvr.methods.losses import byol


# ----------------------------------------------------------------------------- reference

def _cos(a, b):
    dot = sum(float(x) * float(y) for x, y in zip(a, b))
    na = math.sqrt(sum(float(x) * float(x) for x in a))
    nb = math.sqrt(sum(float(y) * float(y) for y in b))
    return dot / (na * nb)


def reference_byol(p1, p2, z1, z2):
    p1, p2, z1, z2 = (np.asarray(a, dtype=np.float64) for a in (p1, p2, z1, z2))
    n = p1.shape[0]
    one = sum(2 - 2 * _cos(p1[i], z2[i]) for i in range(n)) / n
    two = sum(2 - 2 * _cos(p2[i], z1[i]) for i in range(n)) / n
    return one + two


def _rand(gen, *shape, dtype=torch.float64):
    return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)


def _four(gen, n, d, dtype=torch.float64):
    return tuple(_rand(gen, n, d, dtype=dtype) for _ in range(4))


# ----------------------------------------------------------------------------- reference comparison

@pytest.mark.parametrize("n, d", [(1, 2), (1, 5), (4, 8), (7, 3), (16, 32), (3, 256)])
def test_matches_reference(n, d):
    gen = torch.Generator().manual_seed(10 * n + d)
    p1, p2, z1, z2 = _four(gen, n, d)
    p1 = p1 * 10                              # scale does not matter (normalised)
    got = byol(p1, p2, z1, z2)
    assert got.dtype == torch.float64 and got.dim() == 0
    assert got.item() == pytest.approx(reference_byol(p1, p2, z1, z2), rel=1e-6, abs=1e-6)


# ----------------------------------------------------------------------------- closed forms

def test_parallel_predictions_give_zero():
    gen = torch.Generator().manual_seed(1)
    _, _, z1, z2 = _four(gen, 5, 6)
    scale = torch.rand(5, 1, generator=gen, dtype=torch.float64) + 0.5
    got = byol(z2 * scale, z1 * 3.0, z1, z2)   # p1 || z2, p2 || z1
    assert got.item() == pytest.approx(0.0, abs=1e-12)


def test_cross_view_pairing():
    # p1 is parallel to z2 (its target) but antiparallel to z1: only the right pairing gives 0
    gen = torch.Generator().manual_seed(2)
    _, _, z1, _ = _four(gen, 4, 3)
    z2 = -z1
    assert byol(z2, z1, z1, z2).item() == pytest.approx(0.0, abs=1e-12)
    assert byol(z1, z2, z1, z2).item() == pytest.approx(8.0, abs=1e-12)


def test_antiparallel_gives_four_per_direction():
    gen = torch.Generator().manual_seed(3)
    _, _, z1, z2 = _four(gen, 6, 5)
    # one direction antiparallel, the other parallel: 4 + 0
    assert byol(-2 * z2, z1, z1, z2).item() == pytest.approx(4.0, abs=1e-12)
    assert byol(z2, -0.5 * z1, z1, z2).item() == pytest.approx(4.0, abs=1e-12)
    # both antiparallel: 4 + 4 (the two directions are summed, each a mean over the batch)
    assert byol(-z2, -z1, z1, z2).item() == pytest.approx(8.0, abs=1e-12)


def test_orthogonal_gives_two_per_direction():
    e = torch.eye(4, dtype=torch.float64)
    p = e[[1, 2, 3, 0]]                        # row i is orthogonal to e_i
    assert byol(p, e, e, e).item() == pytest.approx(2.0, abs=1e-12)
    assert byol(p, p, e, e).item() == pytest.approx(4.0, abs=1e-12)


def test_loss_is_a_batch_mean_not_a_sum():
    # duplicating the batch leaves the loss unchanged
    gen = torch.Generator().manual_seed(4)
    p1, p2, z1, z2 = _four(gen, 3, 4)
    base = byol(p1, p2, z1, z2).item()
    twice = byol(*(torch.cat([t, t]) for t in (p1, p2, z1, z2))).item()
    assert twice == pytest.approx(base, rel=1e-12)


# ----------------------------------------------------------------------------- gradients

@pytest.mark.parametrize("n, d", [(1, 3), (3, 4)])
def test_gradcheck_wrt_predictions(n, d):
    gen = torch.Generator().manual_seed(5 + n)
    p1, p2, z1, z2 = _four(gen, n, d)
    p1.requires_grad_()
    p2.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: byol(a, b, z1, z2), (p1, p2))


def test_no_gradient_into_targets():
    gen = torch.Generator().manual_seed(6)
    p1, p2, z1, z2 = (t.requires_grad_() for t in _four(gen, 4, 5))
    loss = byol(p1, p2, z1, z2)
    loss.backward()
    assert p1.grad is not None and p1.grad.abs().sum() > 0
    assert p2.grad is not None and p2.grad.abs().sum() > 0
    for z in (z1, z2):
        assert z.grad is None or torch.count_nonzero(z.grad) == 0


def test_targets_alone_do_not_make_a_graph():
    gen = torch.Generator().manual_seed(7)
    p1, p2, z1, z2 = _four(gen, 4, 5)
    z1.requires_grad_()
    z2.requires_grad_()
    assert not byol(p1, p2, z1, z2).requires_grad


def test_gradient_matches_analytic_formula():
    # d/dp (2 - 2 p.z / (|p||z|)) = -2 / |p| * (zhat - cos * phat), divided by N for the mean
    gen = torch.Generator().manual_seed(8)
    n, d = 3, 4
    p1, p2, z1, z2 = _four(gen, n, d)
    p1.requires_grad_()
    byol(p1, p2, z1, z2).backward()
    for i in range(n):
        p, z = p1[i].detach().numpy(), z2[i].numpy()
        ph, zh = p / np.linalg.norm(p), z / np.linalg.norm(z)
        want = -2 / np.linalg.norm(p) * (zh - float(ph @ zh) * ph) / n
        assert np.allclose(p1.grad[i].numpy(), want, rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------- permutations

def test_permuting_the_batch_consistently_is_invariant():
    gen = torch.Generator().manual_seed(9)
    p1, p2, z1, z2 = _four(gen, 10, 6)
    perm = torch.randperm(10, generator=gen)
    assert not torch.equal(perm, torch.arange(10))
    base = byol(p1, p2, z1, z2).item()
    assert byol(p1[perm], p2[perm], z1[perm], z2[perm]).item() == pytest.approx(base, rel=1e-12, abs=1e-12)


def test_swapping_the_views_is_invariant():
    gen = torch.Generator().manual_seed(10)
    p1, p2, z1, z2 = _four(gen, 5, 6)
    assert byol(p2, p1, z2, z1).item() == pytest.approx(byol(p1, p2, z1, z2).item(), rel=1e-12, abs=1e-12)


def test_permuting_only_the_targets_changes_the_loss():
    gen = torch.Generator().manual_seed(11)
    _, _, z1, z2 = _four(gen, 6, 8)
    p1 = z2 + 0.05 * _rand(gen, 6, 8)
    p2 = z1 + 0.05 * _rand(gen, 6, 8)
    base = byol(p1, p2, z1, z2).item()
    roll = torch.roll(torch.arange(6), 1)
    assert byol(p1, p2, z1, z2[roll]).item() > base + 0.5
    assert byol(p1, p2, z1[roll], z2).item() > base + 0.5


# ----------------------------------------------------------------------------- stability

@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3])
def test_float32_is_finite(scale):
    gen = torch.Generator().manual_seed(12)
    p1, p2, z1, z2 = _four(gen, 16, 32, dtype=torch.float32)
    p1 = (p1 * scale).requires_grad_()
    p2 = (p2 / scale).requires_grad_()
    loss = byol(p1, p2, z1 * scale, z2)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert 0.0 <= loss.item() <= 8.0 + 1e-5
    loss.backward()
    assert torch.isfinite(p1.grad).all() and torch.isfinite(p2.grad).all()
    want = reference_byol(p1.detach().double(), p2.detach().double(), (z1 * scale).double(), z2.double())
    assert loss.item() == pytest.approx(want, rel=1e-4, abs=1e-4)


# ----------------------------------------------------------------------------- errors

@pytest.mark.parametrize("z2_shape", [(1, 3), (5, 3), (4, 5), (3,)])
def test_wrong_shapes_raise_value_error(z2_shape):
    with pytest.raises(ValueError):
        byol(torch.randn(4, 3), torch.randn(4, 3), torch.randn(4, 3), torch.randn(z2_shape))
