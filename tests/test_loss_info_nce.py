"""clvr.methods.losses.info_nce against a loop-by-loop float64 reference of its formula:

    loss = mean_i -log( exp(q_i.p_i / t) / (exp(q_i.p_i / t) + sum_k exp(q_i.n_ik / t)) )

with n_ik = n_k for shared (K, D) negatives, and q, p, n L2-normalised when ``normalize``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from clvr.methods.losses import info_nce


# ----------------------------------------------------------------------------- reference

def _unit(v):
    norm = math.sqrt(sum(float(x) * float(x) for x in v))
    return [float(x) / norm for x in v]


def _dot(a, b):
    return sum(float(x) * float(y) for x, y in zip(a, b))


def _logsumexp(xs):
    top = max(xs)
    return top + math.log(sum(math.exp(x - top) for x in xs))


def reference_info_nce(query, positive, negatives, temperature, normalize=True):
    """Plain loops over queries and negatives, in Python floats (float64)."""
    q = np.asarray(query, dtype=np.float64)
    p = np.asarray(positive, dtype=np.float64)
    neg = np.asarray(negatives, dtype=np.float64)
    n = q.shape[0]
    total = 0.0
    for i in range(n):
        qi, pi = list(q[i]), list(p[i])
        negs_i = [list(v) for v in (neg if neg.ndim == 2 else neg[i])]
        if normalize:
            qi, pi, negs_i = _unit(qi), _unit(pi), [_unit(v) for v in negs_i]
        s_pos = _dot(qi, pi) / temperature
        s_neg = [_dot(qi, v) / temperature for v in negs_i]
        total += _logsumexp([s_pos] + s_neg) - s_pos
    return total / n


def _rand(gen, *shape, dtype=torch.float64):
    return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)


# ----------------------------------------------------------------------------- reference comparison

@pytest.mark.parametrize("n, d, k, temperature, per_query, normalize", [
    (1, 2, 1, 0.07, False, True),
    (4, 8, 16, 0.07, False, True),
    (7, 3, 5, 0.5, False, True),
    (5, 16, 9, 1.0, False, False),
    (3, 5, 4, 0.2, False, False),
    (1, 4, 3, 0.07, True, True),
    (6, 8, 7, 0.1, True, True),
    (4, 3, 11, 2.0, True, True),
    (5, 6, 4, 0.3, True, False),
])
def test_matches_reference(n, d, k, temperature, per_query, normalize):
    gen = torch.Generator().manual_seed(1000 * n + 10 * d + k)
    q, p = _rand(gen, n, d), _rand(gen, n, d)
    negs = _rand(gen, n, k, d) if per_query else _rand(gen, k, d)
    got = info_nce(q, p, negs, temperature=temperature, normalize=normalize)
    assert got.dtype == torch.float64 and got.dim() == 0
    want = reference_info_nce(q.numpy(), p.numpy(), negs.numpy(), temperature, normalize)
    assert got.item() == pytest.approx(want, rel=1e-6, abs=1e-6)


def test_default_temperature_is_007_and_normalises():
    gen = torch.Generator().manual_seed(3)
    q, p, negs = _rand(gen, 4, 6) * 5, _rand(gen, 4, 6) * 0.1, _rand(gen, 9, 6) * 3
    want = reference_info_nce(q.numpy(), p.numpy(), negs.numpy(), 0.07, normalize=True)
    assert info_nce(q, p, negs).item() == pytest.approx(want, rel=1e-6, abs=1e-6)


def test_shared_negatives_equal_per_query_copies():
    gen = torch.Generator().manual_seed(4)
    q, p, negs = _rand(gen, 5, 7), _rand(gen, 5, 7), _rand(gen, 6, 7)
    shared = info_nce(q, p, negs, temperature=0.2)
    per_query = info_nce(q, p, negs.expand(5, 6, 7).clone(), temperature=0.2)
    assert shared.item() == pytest.approx(per_query.item(), rel=1e-12, abs=1e-12)


# ----------------------------------------------------------------------------- closed forms

@pytest.mark.parametrize("n, k, temperature", [(1, 1, 0.07), (3, 4, 0.07), (5, 31, 0.5), (2, 1000, 1.0)])
@pytest.mark.parametrize("per_query", [False, True])
def test_negatives_identical_to_positive_give_log_k_plus_1(n, k, temperature, per_query):
    gen = torch.Generator().manual_seed(k)
    q, p = _rand(gen, n, 6), _rand(gen, n, 6)
    if per_query:
        negs = p[:, None, :].expand(n, k, 6).clone()
    else:
        p = p[:1].expand(n, 6).clone()          # one positive for all so shared negatives can equal it
        negs = p[:1].expand(k, 6).clone()
    got = info_nce(q, p, negs, temperature=temperature)
    assert got.item() == pytest.approx(math.log(k + 1), rel=1e-12, abs=1e-12)


def test_perfect_separation_tends_to_zero_and_reverse_to_large():
    d = 4
    q = torch.eye(d, dtype=torch.float64)[:1]                      # e_0
    negs = -q.expand(5, d).clone()                                 # antipodal negatives
    good = info_nce(q, q.clone(), negs, temperature=0.05)          # s_pos = 1, s_neg = -1
    assert good.item() == pytest.approx(math.log1p(5 * math.exp(-2 / 0.05)), rel=1e-9)
    bad = info_nce(q, -q, -negs, temperature=0.05)                 # s_pos = -1, s_neg = 1
    assert bad.item() == pytest.approx(2 / 0.05 + math.log(5 + math.exp(-2 / 0.05)), rel=1e-9)


# ----------------------------------------------------------------------------- gradients

@pytest.mark.parametrize("per_query", [False, True])
@pytest.mark.parametrize("normalize", [True, False])
def test_gradcheck(per_query, normalize):
    gen = torch.Generator().manual_seed(7)
    q = _rand(gen, 3, 4).requires_grad_()
    p = _rand(gen, 3, 4).requires_grad_()
    negs = (_rand(gen, 3, 5, 4) if per_query else _rand(gen, 5, 4)).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda a, b, c: info_nce(a, b, c, temperature=0.3, normalize=normalize), (q, p, negs))


# ----------------------------------------------------------------------------- permutations

@pytest.mark.parametrize("per_query", [False, True])
def test_permuting_queries_with_their_positives_is_invariant(per_query):
    gen = torch.Generator().manual_seed(11)
    n, k, d = 9, 6, 5
    q, p = _rand(gen, n, d), _rand(gen, n, d)
    negs = _rand(gen, n, k, d) if per_query else _rand(gen, k, d)
    perm = torch.randperm(n, generator=gen)
    assert not torch.equal(perm, torch.arange(n))
    base = info_nce(q, p, negs, temperature=0.1)
    negs_perm = negs[perm] if per_query else negs[torch.randperm(k, generator=gen)]  # shared: order is irrelevant
    moved = info_nce(q[perm], p[perm], negs_perm, temperature=0.1)
    assert moved.item() == pytest.approx(base.item(), rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("per_query", [False, True])
def test_wrong_pairing_changes_the_loss(per_query):
    gen = torch.Generator().manual_seed(12)
    n, k, d = 6, 5, 4
    q, p = _rand(gen, n, d), _rand(gen, n, d)
    negs = _rand(gen, n, k, d) if per_query else _rand(gen, k, d)
    base = info_nce(q, p, negs, temperature=0.1).item()
    roll = torch.roll(torch.arange(n), 1)
    assert abs(info_nce(q, p[roll], negs, temperature=0.1).item() - base) > 1e-3
    if per_query:
        assert abs(info_nce(q, p, negs[roll], temperature=0.1).item() - base) > 1e-3
    if per_query:
        # the positive is the logit in front: swapping it with negative 0 changes the loss
        swapped = negs.clone()
        swapped[:, 0] = p
        assert abs(info_nce(q, negs[:, 0], swapped, temperature=0.1).item() - base) > 1e-3


# ----------------------------------------------------------------------------- stability

@pytest.mark.parametrize("per_query", [False, True])
def test_low_temperature_float32_is_finite(per_query):
    gen = torch.Generator().manual_seed(13)
    q = _rand(gen, 8, 16, dtype=torch.float32).mul(100).requires_grad_()
    p = _rand(gen, 8, 16, dtype=torch.float32).requires_grad_()
    negs = (_rand(gen, 8, 64, 16, dtype=torch.float32) if per_query
            else _rand(gen, 64, 16, dtype=torch.float32)).requires_grad_()
    loss = info_nce(q, p, negs, temperature=0.01)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    for t in (q, p, negs):
        assert t.grad is not None and torch.isfinite(t.grad).all()
    # and it is still the formula (computed in float64 from the same float32 numbers)
    want = reference_info_nce(q.detach().double().numpy(), p.detach().double().numpy(),
                              negs.detach().double().numpy(), 0.01)
    assert loss.item() == pytest.approx(want, rel=1e-3, abs=1e-3)


def test_low_temperature_unnormalised_float32_is_finite():
    gen = torch.Generator().manual_seed(14)
    q = _rand(gen, 4, 8, dtype=torch.float32).mul(10).requires_grad_()
    p = _rand(gen, 4, 8, dtype=torch.float32).requires_grad_()
    negs = _rand(gen, 32, 8, dtype=torch.float32).requires_grad_()
    loss = info_nce(q, p, negs, temperature=0.01, normalize=False)   # logits in the thousands
    assert torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, p, negs))


# ----------------------------------------------------------------------------- errors

def _re_shape(shape):
    return r"\(" + r", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + r"\)"


@pytest.mark.parametrize("neg_shape", [(4,), (2, 3, 5, 4)])
def test_negatives_of_wrong_rank_raise(neg_shape):
    q, p = torch.randn(3, 4), torch.randn(3, 4)
    with pytest.raises(ValueError, match=r"negatives must be \(K, D\) or \(N, K, D\).*" + _re_shape(neg_shape)):
        info_nce(q, p, torch.randn(*neg_shape))


@pytest.mark.parametrize("q_shape, p_shape, neg_shape", [
    ((4, 3), (1, 3), (6, 3)),        # silently broadcast: every query gets positive 0
    ((4, 3), (4, 3), (1, 6, 3)),     # silently broadcast: every query gets the negatives of query 0
    ((4, 3), (5, 3), (6, 3)),        # RuntimeError from the broadcast
    ((4, 3), (4, 3), (6, 5)),        # RuntimeError from the matmul
    ((4, 3), (4, 3), (5, 6, 3)),     # RuntimeError from einsum
])
def test_mismatched_shapes_raise_value_error(q_shape, p_shape, neg_shape):
    with pytest.raises(ValueError):
        info_nce(torch.randn(*q_shape), torch.randn(*p_shape), torch.randn(*neg_shape))
