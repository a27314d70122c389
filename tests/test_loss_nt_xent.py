"""clvr.methods.losses.nt_xent against a loop-by-loop float64 reference of SimCLR's formula.

The 2N anchors are [z1; z2] (L2-normalised); anchor a's positive is the other view of its image,
its candidates are all the other 2N - 1 anchors:

    loss = mean_a -log( exp(s(a, pos(a)) / t) / sum_{b != a} exp(s(a, b) / t) )
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from clvr.methods.losses import nt_xent


# ----------------------------------------------------------------------------- reference

def _unit(v):
    norm = math.sqrt(sum(float(x) * float(x) for x in v))
    return [float(x) / norm for x in v]


def _dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def _logsumexp(xs):
    top = max(xs)
    return top + math.log(sum(math.exp(x - top) for x in xs))


def reference_nt_xent(z1, z2, temperature):
    z1 = np.asarray(z1, dtype=np.float64)
    z2 = np.asarray(z2, dtype=np.float64)
    n = z1.shape[0]
    views = [_unit(r) for r in z1] + [_unit(r) for r in z2]     # anchor a: image a % n, view a // n
    total = 0.0
    for a in range(2 * n):
        image, view = a % n, a // n
        positive = image + (1 - view) * n                         # the other view of the same image
        logits = {b: _dot(views[a], views[b]) / temperature for b in range(2 * n) if b != a}
        total += _logsumexp(list(logits.values())) - logits[positive]
    return total / (2 * n)


def _rand(gen, *shape, dtype=torch.float64):
    return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)


# ----------------------------------------------------------------------------- reference comparison

@pytest.mark.parametrize("n, d, temperature", [
    (1, 3, 0.1), (2, 2, 0.1), (4, 8, 0.1), (7, 5, 0.5), (3, 16, 1.0), (10, 4, 0.07), (5, 3, 2.0),
])
def test_matches_reference(n, d, temperature):
    gen = torch.Generator().manual_seed(100 * n + d)
    z1, z2 = _rand(gen, n, d) * 3, _rand(gen, n, d) * 0.2     # scale must not matter (normalised)
    got = nt_xent(z1, z2, temperature=temperature)
    assert got.dtype == torch.float64 and got.dim() == 0
    want = reference_nt_xent(z1.numpy(), z2.numpy(), temperature)
    assert got.item() == pytest.approx(want, rel=1e-6, abs=1e-6)


def test_default_temperature_is_01():
    gen = torch.Generator().manual_seed(1)
    z1, z2 = _rand(gen, 5, 6), _rand(gen, 5, 6)
    assert nt_xent(z1, z2).item() == pytest.approx(reference_nt_xent(z1.numpy(), z2.numpy(), 0.1), rel=1e-6)


def test_gather_without_a_process_group_is_the_local_loss():
    gen = torch.Generator().manual_seed(2)
    z1, z2 = _rand(gen, 4, 6), _rand(gen, 4, 6)
    assert nt_xent(z1, z2, 0.2, gather=True).item() == pytest.approx(nt_xent(z1, z2, 0.2).item(), abs=1e-12)


# ----------------------------------------------------------------------------- closed forms

@pytest.mark.parametrize("n", [1, 2, 3, 8, 50])
@pytest.mark.parametrize("temperature", [0.05, 0.1, 1.0])
def test_collinear_embeddings_give_log_2n_minus_1(n, temperature):
    gen = torch.Generator().manual_seed(n)
    direction = _rand(gen, 1, 7)
    scales1 = torch.rand(n, 1, generator=gen, dtype=torch.float64) + 0.1   # positive multiples: same unit vector
    scales2 = torch.rand(n, 1, generator=gen, dtype=torch.float64) + 0.1
    got = nt_xent(direction * scales1, direction * scales2, temperature=temperature)
    assert got.item() == pytest.approx(math.log(2 * n - 1), rel=1e-12, abs=1e-12)


# ----------------------------------------------------------------------------- gradients

@pytest.mark.parametrize("n, d, temperature", [(1, 3, 0.5), (3, 4, 0.2), (4, 2, 1.0)])
def test_gradcheck(n, d, temperature):
    gen = torch.Generator().manual_seed(9 + n)
    z1 = _rand(gen, n, d).requires_grad_()
    z2 = _rand(gen, n, d).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: nt_xent(a, b, temperature=temperature), (z1, z2))


# ----------------------------------------------------------------------------- permutations

def test_permuting_the_batch_consistently_is_invariant():
    gen = torch.Generator().manual_seed(21)
    z1, z2 = _rand(gen, 12, 5), _rand(gen, 12, 5)
    perm = torch.randperm(12, generator=gen)
    assert not torch.equal(perm, torch.arange(12))
    base = nt_xent(z1, z2, temperature=0.1).item()
    assert nt_xent(z1[perm], z2[perm], temperature=0.1).item() == pytest.approx(base, rel=1e-12, abs=1e-12)


def test_swapping_the_views_is_invariant():
    gen = torch.Generator().manual_seed(22)
    z1, z2 = _rand(gen, 6, 5), _rand(gen, 6, 5)
    assert nt_xent(z2, z1, 0.3).item() == pytest.approx(nt_xent(z1, z2, 0.3).item(), rel=1e-12, abs=1e-12)


def test_permuting_only_z2_changes_the_loss():
    gen = torch.Generator().manual_seed(23)
    z1 = _rand(gen, 6, 8)
    z2 = z1 + 0.1 * _rand(gen, 6, 8)            # well-aligned pairs: low loss
    base = nt_xent(z1, z2, temperature=0.1).item()
    roll = torch.roll(torch.arange(6), 1)
    shuffled = nt_xent(z1, z2[roll], temperature=0.1).item()
    assert shuffled > base + 1.0
    assert shuffled == pytest.approx(reference_nt_xent(z1.numpy(), z2[roll].numpy(), 0.1), rel=1e-6)


def test_self_similarity_is_excluded():
    # If the anchor itself were among the candidates, identical views would not give ln(2N-1):
    # check a case where only the self term differs from a closed form.
    n, t = 3, 0.5
    e = torch.eye(n, dtype=torch.float64)
    with_self = math.log(2 * math.exp(1 / t) + 2 * (n - 1)) - 1 / t
    without_self = math.log(math.exp(1 / t) + 2 * (n - 1)) - 1 / t
    got = nt_xent(e, e.clone(), temperature=t).item()
    assert got == pytest.approx(without_self, rel=1e-12)
    assert abs(got - with_self) > 0.1


# ----------------------------------------------------------------------------- stability

def test_low_temperature_float32_is_finite():
    gen = torch.Generator().manual_seed(31)
    z1 = _rand(gen, 16, 32, dtype=torch.float32).mul(50).requires_grad_()
    z2 = _rand(gen, 16, 32, dtype=torch.float32).requires_grad_()
    loss = nt_xent(z1, z2, temperature=0.01)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(z1.grad).all() and torch.isfinite(z2.grad).all()
    want = reference_nt_xent(z1.detach().double().numpy(), z2.detach().double().numpy(), 0.01)
    assert loss.item() == pytest.approx(want, rel=1e-3, abs=1e-3)


def test_low_temperature_identical_views_float32_is_finite():
    # the positive equals the (masked) self-similarity: the -inf mask must not leak NaNs
    gen = torch.Generator().manual_seed(32)
    z = _rand(gen, 8, 16, dtype=torch.float32)
    z1, z2 = z.clone().requires_grad_(), z.clone().requires_grad_()
    loss = nt_xent(z1, z2, temperature=0.01)
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(z1.grad).all() and torch.isfinite(z2.grad).all()


# ----------------------------------------------------------------------------- errors

@pytest.mark.parametrize("s1, s2", [((4, 3), (5, 3)), ((4, 3), (4, 2)), ((3,), (3,)), ((2, 4, 3), (2, 4, 3))])
def test_wrong_shapes_raise(s1, s2):
    with pytest.raises(ValueError, match=r"z1 and z2 must both be \(N, D\)"):
        nt_xent(torch.randn(*s1), torch.randn(*s2))
