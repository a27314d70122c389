"""Linear probes on cached features: they separate what is linearly separable, report top-k
correctly, and are reproducible."""

from __future__ import annotations

import pytest
import torch

from clvr.methods.linear_probe import linear_svm, logistic_regression, standardize, topk_accuracy, train_linear


def clusters(n_per=30, classes=6, dim=12, spread=0.1, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=g) * 3
    labels = torch.arange(classes).repeat_interleave(n_per)
    return centres[labels] + spread * torch.randn(len(labels), dim, generator=g), labels


def test_topk_accuracy_against_a_hand_count():
    scores = torch.tensor([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.2, 0.3, 0.5]])
    labels = torch.tensor([1, 1, 0])
    assert topk_accuracy(scores, labels, topk=(1, 2, 5)) == pytest.approx({"top1": 1 / 3, "top2": 2 / 3})


def test_sgd_probe_separates_clusters_and_is_reproducible():
    x, y = clusters()
    tx, ty = clusters(seed=0, n_per=10)
    x, tx = standardize(x, tx)
    a = train_linear(x, y, 6, epochs=20, batch_size=32)
    b = train_linear(x, y, 6, epochs=20, batch_size=32)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    with torch.no_grad():
        assert topk_accuracy(a(tx), ty)["top1"] == 1.0
    shuffled = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(1))]
    with torch.no_grad():      # training inside no_grad still trains (the probe enables grad)
        assert topk_accuracy(train_linear(x, shuffled, 6, epochs=20)(tx), ty)["top1"] < 0.6


@pytest.mark.parametrize("probe", [logistic_regression, linear_svm])
def test_sklearn_probes(probe):
    x, y = clusters()
    tx, ty = clusters(n_per=10)
    got = probe(x.numpy(), y.numpy(), tx.numpy(), ty.numpy())
    assert got["top1"] == 1.0 and got["top5"] == 1.0
    noisy = probe(x.numpy(), y.numpy(), clusters(n_per=10, spread=20.0, seed=5)[0].numpy(), ty.numpy())
    assert noisy["top1"] < 0.9


def test_bad_labels_are_refused():
    x, y = clusters()
    with pytest.raises(ValueError, match="labels must be in"):
        train_linear(x, y, 3)
    with pytest.raises(ValueError, match="features but"):
        train_linear(x[:5], y, 6)
