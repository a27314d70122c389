"""clvr.methods.losses.cpc against a loop-by-loop float64 reference of its formula.

targets: (B, G, G, D). predictions[k - 1]: (B, G - k, G, D); its cell (b, i, j) predicts target
(b, i + k, j) and is scored against every target cell of the batch:

    loss_k = mean_{b, i, j} [ logsumexp_{b', r, c} (pred_k[b, i, j] . tgt[b', r, c] / t)
                              - pred_k[b, i, j] . tgt[b, i + k, j] / t ]
    loss   = mean_k loss_k
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from clvr.methods.losses import cpc


# ----------------------------------------------------------------------------- reference

def _logsumexp(xs):
    top = max(xs)
    return top + math.log(sum(math.exp(x - top) for x in xs))


def reference_cpc_step(pred, targets, k, temperature=1.0):
    """The mean cross-entropy of the k-step predictions ``pred`` (B, G - k, G, D)."""
    tgt = np.asarray(targets, dtype=np.float64)
    pred = np.asarray(pred, dtype=np.float64)
    b_n, g, g2, _ = tgt.shape
    cells = [(b, r, c) for b in range(b_n) for r in range(g) for c in range(g2)]
    total, count = 0.0, 0
    for b in range(b_n):
        for i in range(g - k):
            for j in range(g2):
                v = pred[b, i, j]
                scores = {cell: float(np.dot(v, tgt[cell])) / temperature for cell in cells}
                total += _logsumexp(list(scores.values())) - scores[(b, i + k, j)]
                count += 1
    return total / count


def reference_cpc(predictions, targets, temperature=1.0):
    steps = [reference_cpc_step(p, targets, k, temperature) for k, p in enumerate(predictions, start=1)]
    return sum(steps) / len(steps)


def _rand(gen, *shape, dtype=torch.float64):
    return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)


def _problem(gen, b, g, d, steps, dtype=torch.float64):
    targets = _rand(gen, b, g, g, d, dtype=dtype)
    predictions = [_rand(gen, b, g - k, g, d, dtype=dtype) for k in range(1, steps + 1)]
    return predictions, targets


# ----------------------------------------------------------------------------- reference comparison

@pytest.mark.parametrize("b, g, d, steps, temperature", [
    (1, 2, 3, 1, 1.0),
    (2, 3, 4, 1, 1.0),
    (2, 3, 4, 2, 0.5),
    (1, 4, 2, 3, 0.1),
    (3, 5, 4, 4, 1.0),
    (2, 5, 8, 2, 2.0),
    (2, 7, 3, 3, 0.3),
])
def test_matches_reference(b, g, d, steps, temperature):
    gen = torch.Generator().manual_seed(1000 * b + 100 * g + 10 * d + steps)
    predictions, targets = _problem(gen, b, g, d, steps)
    got = cpc(predictions, targets, temperature=temperature)
    assert got.dtype == torch.float64 and got.dim() == 0
    want = reference_cpc([p.numpy() for p in predictions], targets.numpy(), temperature)
    assert got.item() == pytest.approx(want, rel=1e-6, abs=1e-6)


def test_default_temperature_is_one():
    gen = torch.Generator().manual_seed(1)
    predictions, targets = _problem(gen, 2, 3, 4, 2)
    assert cpc(predictions, targets).item() == pytest.approx(
        reference_cpc(predictions, targets.numpy(), 1.0), rel=1e-6)


def test_steps_are_averaged_equally():
    # the loss is the mean of the per-step losses, not the mean over all predictions pooled
    gen = torch.Generator().manual_seed(2)
    b, g = 2, 4
    predictions, targets = _problem(gen, b, g, 3, 3)
    per_step = [reference_cpc_step(p, targets, k) for k, p in enumerate(predictions, start=1)]
    counts = [b * (g - k) * g for k in (1, 2, 3)]
    pooled = sum(c * l for c, l in zip(counts, per_step)) / sum(counts)
    got = cpc(predictions, targets).item()
    assert got == pytest.approx(sum(per_step) / 3, rel=1e-9)
    assert abs(got - pooled) > 1e-3
    assert cpc(predictions[:1], targets).item() == pytest.approx(per_step[0], rel=1e-9)
    assert cpc(predictions[:2], targets).item() == pytest.approx((per_step[0] + per_step[1]) / 2, rel=1e-9)


# ----------------------------------------------------------------------------- closed forms

@pytest.mark.parametrize("b, g, steps", [(1, 2, 1), (2, 3, 2), (3, 4, 3)])
def test_identical_targets_give_log_of_candidate_count(b, g, steps):
    gen = torch.Generator().manual_seed(b + g)
    targets = _rand(gen, 1, 1, 1, 5).expand(b, g, g, 5).clone()
    predictions = [_rand(gen, b, g - k, g, 5) for k in range(1, steps + 1)]
    got = cpc(predictions, targets, temperature=0.3)
    assert got.item() == pytest.approx(math.log(b * g * g), rel=1e-12, abs=1e-12)


def test_perfect_one_hot_prediction_closed_form():
    # targets: one-hot codes, all B*G*G distinct; predictions: exactly the code of their target
    b, g = 2, 3
    n_cells = b * g * g
    targets = torch.eye(n_cells, dtype=torch.float64).reshape(b, g, g, n_cells)
    predictions = [targets[:, 1:].clone()]
    t = 0.5
    want = math.log(math.exp(1 / t) + n_cells - 1) - 1 / t
    assert cpc(predictions, targets, temperature=t).item() == pytest.approx(want, rel=1e-12)


# ----------------------------------------------------------------------------- gradients

@pytest.mark.parametrize("b, g, d, steps", [(1, 2, 2, 1), (2, 3, 2, 2)])
def test_gradcheck(b, g, d, steps):
    gen = torch.Generator().manual_seed(3 + g)
    predictions, targets = _problem(gen, b, g, d, steps)
    inputs = tuple(p.requires_grad_() for p in predictions) + (targets.requires_grad_(),)
    assert torch.autograd.gradcheck(lambda *a: cpc(list(a[:-1]), a[-1], temperature=0.7), inputs)


# ----------------------------------------------------------------------------- permutations

def test_permuting_the_batch_consistently_is_invariant():
    gen = torch.Generator().manual_seed(4)
    predictions, targets = _problem(gen, 5, 4, 3, 3)
    perm = torch.randperm(5, generator=gen)
    assert not torch.equal(perm, torch.arange(5))
    base = cpc(predictions, targets, temperature=0.2).item()
    moved = cpc([p[perm] for p in predictions], targets[perm], temperature=0.2).item()
    assert moved == pytest.approx(base, rel=1e-12, abs=1e-12)


def test_permuting_columns_consistently_is_invariant():
    gen = torch.Generator().manual_seed(5)
    predictions, targets = _problem(gen, 2, 4, 3, 2)
    cols = torch.tensor([2, 0, 3, 1])
    base = cpc(predictions, targets, temperature=0.2).item()
    moved = cpc([p[:, :, cols] for p in predictions], targets[:, :, cols], temperature=0.2).item()
    assert moved == pytest.approx(base, rel=1e-12, abs=1e-12)


def _aligned(gen, b, g, d, steps, noise=0.05):
    """Predictions close to their true targets, so the loss is low and mispairing shows."""
    targets = _rand(gen, b, g, g, d)
    predictions = [targets[:, k:] + noise * _rand(gen, b, g - k, g, d) for k in range(1, steps + 1)]
    return predictions, targets


def test_permuting_only_the_targets_batch_changes_the_loss():
    gen = torch.Generator().manual_seed(6)
    predictions, targets = _aligned(gen, 4, 3, 8, 2)
    base = cpc(predictions, targets, temperature=0.1).item()
    roll = torch.roll(torch.arange(4), 1)
    assert cpc(predictions, targets[roll], temperature=0.1).item() > base + 1.0


def test_positive_is_k_rows_ahead_not_the_same_row():
    gen = torch.Generator().manual_seed(7)
    b, g, d = 2, 4, 8
    targets = _rand(gen, b, g, g, d)
    right = [targets[:, 1:].clone(), targets[:, 2:].clone()]        # row i predicts row i + k
    wrong = [targets[:, :-1].clone(), targets[:, :-2].clone()]      # row i "predicts" row i
    # k off by one: step 1 given row i + 2 (last row repeated to fill), step 2 given row i + 1
    shifted = [torch.cat([targets[:, 2:], targets[:, -1:]], 1), targets[:, 1:-1].clone()]
    base = cpc(right, targets, temperature=0.1).item()
    assert cpc(wrong, targets, temperature=0.1).item() > base + 1.0
    assert cpc(shifted, targets, temperature=0.1).item() > base + 1.0
    assert base == pytest.approx(reference_cpc(right, targets, 0.1), rel=1e-6)


# ----------------------------------------------------------------------------- stability

def test_low_temperature_float32_is_finite():
    gen = torch.Generator().manual_seed(8)
    predictions, targets = _problem(gen, 4, 5, 16, 3, dtype=torch.float32)
    predictions = [p.requires_grad_() for p in predictions]
    targets.requires_grad_()
    loss = cpc(predictions, targets, temperature=0.01)             # logits in the thousands
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(targets.grad).all()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in predictions)
    want = reference_cpc([p.detach().double() for p in predictions], targets.detach().double(), 0.01)
    assert loss.item() == pytest.approx(want, rel=1e-3)


# ----------------------------------------------------------------------------- errors

@pytest.mark.parametrize("shape", [(2, 3, 4), (2, 3, 3, 4, 1), (3,)])
def test_targets_of_wrong_rank_raise(shape):
    with pytest.raises(ValueError, match=r"targets must be \(B, H, W, D\)"):
        cpc([torch.randn(2, 2, 3, 4)], torch.randn(shape))


@pytest.mark.parametrize("bad_shape", [
    (2, 3, 4, 5),    # step 1 needs G - 1 = 3 rows: this is the right shape for step 1, wrong for step 2
    (2, 1, 4, 5),    # one row too few
    (3, 2, 4, 5),    # batch
    (2, 2, 3, 5),    # columns
    (2, 2, 4, 6),    # feature dimension
])
def test_predictions_of_wrong_shape_raise(bad_shape):
    targets = torch.randn(2, 4, 4, 5)
    with pytest.raises(ValueError, match=r"predictions\[1\] must be \(B, H - 2, W, D\) = \(2, 2, 4, 5\)"):
        cpc([torch.randn(2, 3, 4, 5), torch.randn(bad_shape)], targets)


def test_no_predictions_raise_value_error():
    with pytest.raises(ValueError):
        cpc([], torch.randn(2, 3, 3, 4))


def test_step_with_no_rows_is_rejected():
    targets = torch.randn(2, 2, 2, 3)
    predictions = [torch.randn(2, 1, 2, 3), torch.randn(2, 0, 2, 3)]   # k = 1, k = 2 = G
    try:
        loss = cpc(predictions, targets)
    except ValueError:
        return
    assert torch.isfinite(loss), f"loss is {loss.item()}"


# ----------------------------------------------------------------------------- skip (issue 22)

@pytest.mark.parametrize("skip,steps", [(1, 1), (1, 2), (2, 2)])
def test_skip_scores_each_prediction_against_the_row_skip_plus_k_ahead(skip, steps):
    """With ``skip`` rows left out after the context, predictions[k - 1] (B, G - skip - k, G, D)
    predicts row i + skip + k: the reference's k-step loss at offset skip + k."""
    gen = torch.Generator().manual_seed(11 + skip + steps)
    b, g, d = 2, 5, 4
    targets = _rand(gen, b, g, g, d)
    predictions = [_rand(gen, b, g - skip - k, g, d) for k in range(1, steps + 1)]
    want = sum(reference_cpc_step(p, targets, skip + k, 0.5)
               for k, p in enumerate(predictions, start=1)) / steps
    got = cpc(predictions, targets, 0.5, skip=skip)
    assert got.item() == pytest.approx(want, rel=1e-12, abs=1e-12)


def test_skip_refuses_predictions_shaped_for_another_offset_and_a_grid_too_short():
    gen = torch.Generator().manual_seed(3)
    targets = _rand(gen, 1, 4, 4, 3)
    one_ahead = [_rand(gen, 1, 3, 4, 3)]
    with pytest.raises(ValueError, match=r"predictions\[0\] must be \(B, H - 2, W, D\)"):
        cpc(one_ahead, targets, skip=1)
    with pytest.raises(ValueError, match="K < H - skip = 1"):
        cpc([_rand(gen, 1, 1, 4, 3)], targets, skip=3)
    with pytest.raises(ValueError, match="skip must be >= 0"):
        cpc(one_ahead, targets, skip=-1)
