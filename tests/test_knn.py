"""Weighted kNN (clvr.methods.knn) against a float64 reference written from the formula.

The reference loops over queries and over their neighbours: normalise, rank the training rows by
cosine similarity, and add exp(s / t) to the label of each of the k best. Ties between
similarities are not a concern: the random inputs are continuous (ties have probability zero),
and the hand-made clusters tie only between rows of the same label, where the vote is the same
whichever tied row is taken.
"""

from __future__ import annotations

import math

import pytest
import torch

from clvr.methods.knn import knn_accuracy, knn_predict


def reference(train, labels, query, k, t, num_classes, exclude_self=False):
    """(M, C) float64 scores, one query and one neighbour at a time."""
    def unit(row):
        norm = math.sqrt(sum(v * v for v in row))
        return [v / norm for v in row]

    train = [unit(r) for r in train.double().tolist()]
    labels = labels.tolist()
    out = torch.zeros(len(query), num_classes, dtype=torch.float64)
    for i, q in enumerate(query.double().tolist()):
        q = unit(q)
        sims = [(sum(a * b for a, b in zip(q, x)), j) for j, x in enumerate(train)
                if not (exclude_self and j == i)]
        sims.sort(reverse=True)
        for s, j in sims[:k]:
            out[i, labels[j]] += math.exp(s / t)
    return out


def data(n=40, m=23, d=6, classes=7, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, d, generator=g, dtype=dtype), torch.randint(0, classes, (n,), generator=g),
            torch.randn(m, d, generator=g, dtype=dtype), torch.randint(0, classes, (m,), generator=g))


@pytest.mark.parametrize("k, t, chunk, num_classes", [
    (5, 0.07, 1024, None),     # one chunk
    (5, 0.07, 7, None),        # chunk smaller than M, not dividing it
    (1, 0.5, 1, None),         # one query at a time, one neighbour
    (1000, 0.2, 10, None),     # k > N: every row votes
    (12, 0.1, 5, 11),          # more classes than labels: empty columns
])
def test_scores_equal_the_loop_reference(k, t, chunk, num_classes):
    train, labels, query, _ = data()
    scores = knn_predict(train, labels, query, k=k, temperature=t, num_classes=num_classes, chunk=chunk)
    c = num_classes or int(labels.max()) + 1
    assert scores.shape == (len(query), c) and scores.dtype == torch.float64
    torch.testing.assert_close(scores, reference(train, labels, query, k, t, c), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("k, chunk", [(4, 3), (1000, 64)])
def test_exclude_self_drops_each_querys_own_row(k, chunk):
    train, labels, _, _ = data(n=31)
    scores = knn_predict(train, labels, train, k=k, temperature=0.1, chunk=chunk, exclude_self=True)
    expected = reference(train, labels, train, k, 0.1, int(labels.max()) + 1, exclude_self=True)
    torch.testing.assert_close(scores, expected, rtol=1e-10, atol=1e-10)
    # without it, each row's nearest neighbour is itself (similarity 1)
    with_self = knn_predict(train, labels, train, k=1, temperature=0.1)
    torch.testing.assert_close(with_self.max(1).values, torch.full((31,), math.exp(10.0), dtype=torch.float64))


def test_k_above_n_is_n_and_float32_stays_float32():
    train, labels, query, _ = data()
    assert torch.equal(knn_predict(train, labels, query, k=40), knn_predict(train, labels, query, k=10 ** 6))
    s32 = knn_predict(train.float(), labels, query.float(), k=9)
    assert s32.dtype == torch.float32
    torch.testing.assert_close(s32.double(), reference(train, labels, query, 9, 0.07, 7), rtol=1e-5, atol=1e-5)


def test_two_tight_clusters_are_classified_perfectly_and_flipped_labels_never():
    g = torch.Generator().manual_seed(1)
    centres = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    train = centres.repeat_interleave(10, 0) + 0.01 * torch.randn(20, 3, generator=g)
    labels = torch.tensor([0] * 10 + [1] * 10)
    query = centres.repeat_interleave(5, 0) + 0.01 * torch.randn(10, 3, generator=g)
    truth = torch.tensor([0] * 5 + [1] * 5)
    acc = knn_accuracy(train, labels, query, truth, k=5)
    assert acc == {"top1": 1.0}                      # 2 classes: no top-5
    assert knn_accuracy(train, labels, query, 1 - truth, k=5) == {"top1": 0.0}
    # every one of k = 20 votes: the own cluster's exp(~1/t) outweighs the other's exp(~0)
    assert knn_accuracy(train, labels, query, truth, k=20, topk=(1, 2)) == {"top1": 1.0, "top2": 1.0}


def test_accuracy_is_the_share_of_queries_whose_class_ranks_high_enough():
    train, labels, query, truth = data(n=200, m=150, d=4, classes=10, seed=3)
    acc = knn_accuracy(train, labels, query, truth, k=20, topk=(1, 3, 5, 10))
    scores = knn_predict(train, labels, query, k=20, num_classes=10)
    assert acc["top1"] == pytest.approx(float((scores.argmax(1) == truth).double().mean()))
    assert acc["top5"] == pytest.approx(float((scores.topk(5).indices == truth[:, None]).any(1).double().mean()))
    assert 0 <= acc["top1"] <= acc["top3"] <= acc["top5"] <= acc["top10"] <= 1
    # with k = 20 at most 10 classes have votes; an unvoted true class is never right
    voted = (scores.gather(1, truth[:, None])[:, 0] > 0).double().mean()
    assert acc["top10"] == pytest.approx(float(voted))


def test_default_classes_include_the_query_labels():
    train = torch.eye(3)
    labels = torch.tensor([0, 1, 2])
    query = torch.eye(3)
    # class 5 has no training row: such queries are never right, but they count
    acc = knn_accuracy(train, labels, query, torch.tensor([0, 1, 5]), k=1, topk=(1, 5))
    assert acc == {"top1": pytest.approx(2 / 3), "top5": pytest.approx(2 / 3)}


def test_errors_name_the_bad_value():
    train, labels, query, truth = data()
    bad = labels.clone()
    bad[[0, 3, 7]] = -1
    with pytest.raises(ValueError, match="train_labels: 3 of 40 labels are below 0"):
        knn_predict(train, bad, query)
    with pytest.raises(ValueError, match="train_labels: 3 of 40"):
        knn_accuracy(train, bad, query, truth)
    bad_q = truth.clone()
    bad_q[1] = -1
    with pytest.raises(ValueError, match="query_labels: 1 of 23 labels are below 0"):
        knn_accuracy(train, labels, query, bad_q)
    with pytest.raises(ValueError, match="M == N"):
        knn_predict(train, labels, query, exclude_self=True)
    with pytest.raises(ValueError, match=r"D = 6; got \(23, 5\)"):
        knn_predict(train, labels, query[:, :5])
    with pytest.raises(ValueError, match=r"train_labels must be \(N,\) with N = 40"):
        knn_predict(train, labels[:5], query)
    with pytest.raises(ValueError, match="k = 0"):
        knn_predict(train, labels, query, k=0)
    with pytest.raises(ValueError, match="temperature = 0"):
        knn_predict(train, labels, query, temperature=0)
    with pytest.raises(ValueError, match="chunk = 0"):
        knn_predict(train, labels, query, chunk=0)
    with pytest.raises(ValueError, match="num_classes = 3 but train_labels reach 6"):
        knn_predict(train, labels, query, num_classes=3)
    with pytest.raises(ValueError, match="must be integers; got torch.float32"):
        knn_predict(train, labels.float(), query)
    with pytest.raises(ValueError, match="topk"):
        knn_accuracy(train, labels, query, truth, topk=(0,))
    with pytest.raises(ValueError, match=r"query_labels must be \(M,\) with M = 23"):
        knn_accuracy(train, labels, query, truth[:4])
    with pytest.raises(ValueError, match="empty"):
        knn_predict(train[:0], labels[:0], query)
    with pytest.raises(ValueError, match="no neighbour"):
        knn_predict(train[:1], labels[:1], train[:1], exclude_self=True)
