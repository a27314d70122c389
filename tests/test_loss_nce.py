"""clvr.methods.losses.nce / nce_log_z against InstDisc's NCE written out directly:

    Pm(s) = exp(s / t) / Z,   Pn = 1 / N,   h(s) = Pm(s) / (Pm(s) + m Pn)
    loss  = mean_b [ -log h(s_pos_b) - sum_j log(1 - h(s_neg_bj)) ]
    Z     = N * mean(exp(s_neg / t))          (nce_log_z returns log Z)
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from clvr.methods.losses import nce, nce_log_z


# ----------------------------------------------------------------------------- reference

def reference_h(s, log_z, temperature, m, num_samples):
    pm = math.exp(s / temperature) / math.exp(log_z)
    return pm / (pm + m / num_samples)


def reference_nce(positive, negatives, log_z, temperature, num_samples):
    positive = np.asarray(positive, dtype=np.float64)
    negatives = np.asarray(negatives, dtype=np.float64)
    b, m = negatives.shape
    total = 0.0
    for i in range(b):
        term = -math.log(reference_h(float(positive[i]), log_z, temperature, m, num_samples))
        for j in range(m):
            term -= math.log(1.0 - reference_h(float(negatives[i, j]), log_z, temperature, m, num_samples))
        total += term
    return total / b


def reference_log_z(negatives, temperature, num_samples):
    flat = np.asarray(negatives, dtype=np.float64).ravel()
    return math.log(num_samples * sum(math.exp(float(s) / temperature) for s in flat) / len(flat))


def _sims(gen, *shape, dtype=torch.float64):
    """Cosine-like similarities in [-1, 1]."""
    return (torch.rand(*shape, generator=gen, dtype=torch.float64) * 2 - 1).to(dtype)


# ----------------------------------------------------------------------------- hand-computed case

def test_hand_computed_tiny_case():
    # t = 1, Z = 4, N = 8, m = 2: m Pn = 1/4.
    #   positive s = ln 2: Pm = 2/4 = 1/2, h = (1/2) / (1/2 + 1/4) = 2/3
    #   negative s = 0:    Pm = 1/4,       h = 1/2, 1 - h = 1/2
    #   negative s = ln 3: Pm = 3/4,       h = 3/4, 1 - h = 1/4
    # loss = -ln(2/3) - ln(1/2) - ln(1/4) = ln(3/2 * 2 * 4) = ln 12
    assert reference_h(math.log(2), math.log(4), 1.0, 2, 8) == pytest.approx(2 / 3, rel=1e-15)
    assert reference_h(0.0, math.log(4), 1.0, 2, 8) == pytest.approx(1 / 2, rel=1e-15)
    assert reference_h(math.log(3), math.log(4), 1.0, 2, 8) == pytest.approx(3 / 4, rel=1e-15)
    pos = torch.tensor([math.log(2)], dtype=torch.float64)
    neg = torch.tensor([[0.0, math.log(3)]], dtype=torch.float64)
    got = nce(pos, neg, math.log(4), temperature=1.0, num_samples=8)
    assert got.item() == pytest.approx(math.log(12), rel=1e-12)


def test_h_of_the_positive_alone():
    # negatives at -inf contribute log(1 - 0) = 0, so loss = -log h(s_pos)
    t, log_z, n_samples = 0.5, math.log(3.0), 10
    pos = torch.tensor([0.5, -0.25], dtype=torch.float64)
    neg = torch.full((2, 2), float("-inf"), dtype=torch.float64)
    got = nce(pos, neg, log_z, temperature=t, num_samples=n_samples)
    h = [math.exp(1.0) / 3 / (math.exp(1.0) / 3 + 0.2), math.exp(-0.5) / 3 / (math.exp(-0.5) / 3 + 0.2)]
    assert torch.isfinite(got)
    assert got.item() == pytest.approx(-(math.log(h[0]) + math.log(h[1])) / 2, rel=1e-12)


def test_h_of_a_negative_alone():
    # a positive with h -> 1 contributes ~0, so loss = -log(1 - h(s_neg))
    t, log_z, n_samples = 1.0, 0.0, 4                # Z = 1, m = 1: m Pn = 1/4
    pos = torch.tensor([200.0], dtype=torch.float64)
    neg = torch.tensor([[math.log(0.75)]], dtype=torch.float64)   # Pm = 3/4, h = 3/4
    got = nce(pos, neg, log_z, temperature=t, num_samples=n_samples)
    assert got.item() == pytest.approx(math.log(4), rel=1e-12)


def test_log_z_tensor_and_float_agree():
    gen = torch.Generator().manual_seed(5)
    pos, neg = _sims(gen, 4), _sims(gen, 4, 6)
    a = nce(pos, neg, 1.7, temperature=0.1, num_samples=100)
    b = nce(pos, neg, torch.tensor(1.7, dtype=torch.float64), temperature=0.1, num_samples=100)
    assert a.item() == pytest.approx(b.item(), abs=1e-15)


# ----------------------------------------------------------------------------- reference comparison

@pytest.mark.parametrize("b, m, temperature, num_samples", [
    (1, 1, 1.0, 10), (4, 8, 0.07, 1000), (7, 3, 0.5, 50), (3, 16, 0.1, 128_000), (5, 4096, 0.07, 1_281_167),
])
@pytest.mark.parametrize("z_from_batch", [True, False])
def test_matches_reference(b, m, temperature, num_samples, z_from_batch):
    gen = torch.Generator().manual_seed(b * 31 + m)
    pos, neg = _sims(gen, b), _sims(gen, b, m)
    log_z = nce_log_z(neg, temperature, num_samples).item() if z_from_batch else 3.0
    got = nce(pos, neg, log_z, temperature=temperature, num_samples=num_samples)
    assert got.dtype == torch.float64 and got.dim() == 0
    want = reference_nce(pos.numpy(), neg.numpy(), log_z, temperature, num_samples)
    assert got.item() == pytest.approx(want, rel=1e-6, abs=1e-6)


@pytest.mark.parametrize("shape", [(5,), (3, 7), (2, 3, 4)])
@pytest.mark.parametrize("temperature, num_samples", [(0.07, 1000), (1.0, 17), (0.5, 1_281_167)])
def test_log_z_is_log_n_mean_exp(shape, temperature, num_samples):
    gen = torch.Generator().manual_seed(len(shape) * 7 + num_samples % 13)
    neg = _sims(gen, *shape)
    got = nce_log_z(neg, temperature, num_samples)
    want = math.log(num_samples * np.mean(np.exp(neg.numpy() / temperature)))
    assert got.item() == pytest.approx(want, rel=1e-12, abs=1e-12)
    assert got.item() == pytest.approx(reference_log_z(neg.numpy(), temperature, num_samples), rel=1e-12)


def test_log_z_does_not_overflow_and_is_detached():
    neg = torch.tensor([[1.0, 0.5], [0.9, -1.0]], dtype=torch.float32, requires_grad=True)
    got = nce_log_z(neg, 0.001, 1000)            # exp(1000) would overflow even in float64
    assert torch.isfinite(got)
    s = [1000.0, 500.0, 900.0, -1000.0]
    want = 1000.0 + math.log(sum(math.exp(x - 1000.0) for x in s) / 4 * 1000)
    assert got.item() == pytest.approx(want, rel=1e-6)
    assert not got.requires_grad


def test_z_estimated_on_the_batch_makes_mean_pm_of_negatives_one_over_n():
    # with Z = N mean(exp(s/t)), the model density of the negatives averages to Pn = 1/N
    gen = torch.Generator().manual_seed(8)
    neg, t, n_samples = _sims(gen, 6, 10), 0.2, 500
    z = math.exp(nce_log_z(neg, t, n_samples).item())
    assert np.mean(np.exp(neg.numpy() / t) / z) == pytest.approx(1 / n_samples, rel=1e-12)


# ----------------------------------------------------------------------------- gradients

def test_gradcheck():
    gen = torch.Generator().manual_seed(10)
    pos = _sims(gen, 3).requires_grad_()
    neg = _sims(gen, 3, 4).requires_grad_()
    assert torch.autograd.gradcheck(lambda p, n: nce(p, n, 0.4, temperature=0.3, num_samples=20), (pos, neg))


def test_gradcheck_with_log_z_from_batch():
    gen = torch.Generator().manual_seed(11)
    pos = _sims(gen, 2).requires_grad_()
    neg = _sims(gen, 2, 3).requires_grad_()
    # log Z is a constant (nce_log_z detaches): the gradient treats it as fixed
    fn = lambda p, n: nce(p, n, nce_log_z(n, 0.5, 30), temperature=0.5, num_samples=30)  # noqa: E731
    fixed = nce_log_z(neg, 0.5, 30).item()
    assert torch.autograd.gradcheck(
        lambda p, n: nce(p, n, fixed, temperature=0.5, num_samples=30), (pos, neg))
    g1 = torch.autograd.grad(fn(pos, neg), (pos, neg))
    g2 = torch.autograd.grad(nce(pos, neg, fixed, temperature=0.5, num_samples=30), (pos, neg))
    for a, b in zip(g1, g2):
        assert torch.allclose(a, b, rtol=0, atol=1e-14)


# ----------------------------------------------------------------------------- permutations

def test_permuting_the_batch_consistently_is_invariant():
    gen = torch.Generator().manual_seed(12)
    pos, neg = _sims(gen, 9), _sims(gen, 9, 5)
    perm = torch.randperm(9, generator=gen)
    assert not torch.equal(perm, torch.arange(9))
    base = nce(pos, neg, 2.0, temperature=0.1, num_samples=100).item()
    moved = nce(pos[perm], neg[perm][:, torch.randperm(5, generator=gen)], 2.0, temperature=0.1, num_samples=100)
    assert moved.item() == pytest.approx(base, rel=1e-12, abs=1e-12)


def test_swapping_positive_and_negative_changes_the_loss():
    gen = torch.Generator().manual_seed(13)
    pos, neg = _sims(gen, 4), _sims(gen, 4, 3)
    base = nce(pos, neg, 2.0, temperature=0.1, num_samples=100).item()
    neg2 = neg.clone()
    neg2[:, 0] = pos
    swapped = nce(neg[:, 0].clone(), neg2, 2.0, temperature=0.1, num_samples=100).item()
    assert abs(swapped - base) > 1e-3
    assert swapped == pytest.approx(reference_nce(neg[:, 0].numpy(), neg2.numpy(), 2.0, 0.1, 100), rel=1e-6)


def test_higher_positive_lowers_the_loss():
    pos = torch.tensor([0.2, 0.2], dtype=torch.float64)
    neg = torch.tensor([[0.1, -0.3], [0.0, 0.4]], dtype=torch.float64)
    low = nce(pos + 0.5, neg, 1.0, temperature=0.1, num_samples=100).item()
    high = nce(pos, neg, 1.0, temperature=0.1, num_samples=100).item()
    assert low < high


# ----------------------------------------------------------------------------- stability

def test_low_temperature_float32_is_finite():
    gen = torch.Generator().manual_seed(14)
    pos = _sims(gen, 16, dtype=torch.float32).requires_grad_()
    neg = _sims(gen, 16, 4096, dtype=torch.float32).requires_grad_()
    log_z = nce_log_z(neg, 0.01, 1_281_167)
    loss = nce(pos, neg, log_z, temperature=0.01, num_samples=1_281_167)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(pos.grad).all() and torch.isfinite(neg.grad).all()


def test_low_temperature_extreme_log_z_float32_is_finite():
    # exp(s / t) = exp(+-100) and a Z far from it: the direct formula would overflow / underflow
    pos = torch.tensor([1.0, -1.0], dtype=torch.float32, requires_grad=True)
    neg = torch.tensor([[1.0, -1.0], [0.99, 0.0]], dtype=torch.float32, requires_grad=True)
    for log_z in (-50.0, 0.0, 150.0):
        loss = nce(pos, neg, log_z, temperature=0.01, num_samples=1000)
        assert torch.isfinite(loss)
        gp, gn = torch.autograd.grad(loss, (pos, neg))
        assert torch.isfinite(gp).all() and torch.isfinite(gn).all()


# ----------------------------------------------------------------------------- errors

@pytest.mark.parametrize("pos_shape, neg_shape", [((4,), (5, 3)), ((4,), (4,)), ((4, 1), (4, 3)), ((4,), (4, 3, 2)),
                                                  ((), (1, 3))])
def test_wrong_shapes_raise(pos_shape, neg_shape):
    with pytest.raises(ValueError, match=r"positive must be \(B,\) and negatives \(B, m\)"):
        nce(torch.randn(pos_shape), torch.randn(neg_shape), 0.0, temperature=0.07, num_samples=100)
