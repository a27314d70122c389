"""Weighted k-nearest-neighbour classification of features, as InstDisc (Wu et al. 2018) defines it.

Features are L2-normalised, so similarities are cosines. A query q takes the k training features
with the highest similarity ``s_i = q . x_i``; each votes for its label ``y_i`` with the weight
``exp(s_i / t)``, and the classes are ranked by their summed weight::

    score(q, c) = sum over i in top-k(q) of exp(s_i / t) * [y_i == c]

With k larger than the training set, every training feature votes (k becomes N). The weights are
the plain ``exp(s / t)`` (no shift): they stay finite in float32 while ``1 / t`` is below about 88
(t above about 0.0113; the usual t = 0.07 gives at most e^14.3).

Labels below 0 mean "unlabelled" in a :class:`~clvr.pipeline.batch.ViewBatch`; they cannot vote
nor be scored, so they are an error here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def knn_predict(train_features: torch.Tensor, train_labels: torch.Tensor, query_features: torch.Tensor,
                k: int = 200, temperature: float = 0.07, num_classes: int | None = None,
                chunk: int = 1024, exclude_self: bool = False) -> torch.Tensor:
    """The (M, C) scores ``score(q, c)`` of every query and class (see the module doc).

    Args:
        train_features: (N, D) features of the labelled set (normalised here).
        train_labels: (N,) integer labels in [0, C).
        query_features: (M, D) features to classify (normalised here).
        k: neighbours per query; above N (N - 1 with ``exclude_self``) every row votes.
        temperature: t of the weights ``exp(s / t)``.
        num_classes: C; default the largest training label + 1.
        chunk: queries scored at once: memory stays (chunk, N).
        exclude_self: the queries are the training rows themselves (M == N, query i is row i):
            each query's own row does not vote (leave-one-out).

    Returns:
        (M, C) summed weights, in the floating dtype of the features (float32 unless both are
        float64), on the training features' device. Top-1 is ``scores.argmax(1)``.
    """
    train, labels, num_classes = _check_train(train_features, train_labels, num_classes)
    if query_features.dim() != 2 or query_features.shape[1] != train.shape[1]:
        raise ValueError(f"query_features must be (M, D) with D = {train.shape[1]}; "
                         f"got {tuple(query_features.shape)}")
    if k < 1:
        raise ValueError(f"k = {k} must be at least 1")
    if not temperature > 0:
        raise ValueError(f"temperature = {temperature} must be positive")
    if chunk < 1:
        raise ValueError(f"chunk = {chunk} must be at least 1")
    n, m = train.shape[0], query_features.shape[0]
    if exclude_self and m != n:
        raise ValueError(f"exclude_self needs the queries to be the training rows (M == N); "
                         f"got M = {m}, N = {n}")
    voters = n - 1 if exclude_self else n
    if voters < 1:
        raise ValueError(f"exclude_self with N = {n} training row leaves no neighbour to vote")
    k = min(k, voters)

    dtype = torch.promote_types(train.dtype, query_features.dtype)
    if not dtype.is_floating_point or dtype.itemsize < 4:
        dtype = torch.float32
    train = F.normalize(train.to(dtype), dim=1)
    labels = labels.to(train.device)
    scores = torch.zeros(m, num_classes, dtype=dtype, device=train.device)
    for start in range(0, m, chunk):
        q = F.normalize(query_features[start:start + chunk].to(train.device, dtype), dim=1)
        sim = q @ train.T                                                  # (chunk, N)
        if exclude_self:
            rows = torch.arange(q.shape[0], device=sim.device)
            sim[rows, rows + start] = float("-inf")
        top, idx = sim.topk(k, dim=1)                                       # (chunk, k)
        scores[start:start + q.shape[0]].scatter_add_(1, labels[idx], torch.exp(top / temperature))
    return scores


def knn_accuracy(train_features: torch.Tensor, train_labels: torch.Tensor, query_features: torch.Tensor,
                 query_labels: torch.Tensor, k: int = 200, temperature: float = 0.07,
                 topk: tuple[int, ...] = (1, 5), num_classes: int | None = None) -> dict[str, float]:
    """Share of queries whose label is among the ``j`` best-scored classes, for each j of ``topk``.

    A query counts at top-j when its class has a positive score and fewer than j classes score
    strictly above it (a class no neighbour voted for is never right; exact ties, which need
    equal similarities, go in the query's favour).

    Args: as :func:`knn_predict`, and
        query_labels: (M,) labels of the queries, in [0, C).
        topk: the j to report; a j above C is left out (so ``top5`` needs at least 5 classes).
        num_classes: C; default the largest training or query label + 1.

    Returns:
        ``{"top1": ..., "top5": ...}``, floats in [0, 1].
    """
    if query_labels.dim() != 1 or query_labels.shape[0] != query_features.shape[0]:
        raise ValueError(f"query_labels must be (M,) with M = {query_features.shape[0]} queries; "
                         f"got {tuple(query_labels.shape)}")
    query_labels = _check_labels(query_labels, "query_labels")
    if query_labels.numel() == 0:
        raise ValueError("no queries to score (M = 0)")
    if any(j < 1 for j in topk):
        raise ValueError(f"topk = {tuple(topk)}: every entry must be at least 1")
    train_labels = _check_labels(train_labels, "train_labels")
    if num_classes is None and train_labels.numel():
        num_classes = int(max(train_labels.max(), query_labels.max())) + 1
    elif num_classes is not None and int(query_labels.max()) >= num_classes:
        raise ValueError(f"num_classes = {num_classes} but query_labels reach {int(query_labels.max())}")
    scores = knn_predict(train_features, train_labels, query_features, k, temperature, num_classes)
    truth = query_labels.to(scores.device)[:, None]
    own = scores.gather(1, truth)                                           # (M, 1)
    above = (scores > own).sum(1)                                           # classes ranked higher
    voted = own[:, 0] > 0
    return {f"top{j}": float(((above < j) & voted).double().mean())
            for j in topk if j <= scores.shape[1]}


def _check_labels(labels: torch.Tensor, what: str) -> torch.Tensor:
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(f"{what} must be integers; got {labels.dtype}")
    labels = labels.long()
    unlabelled = int((labels < 0).sum())
    if unlabelled:
        raise ValueError(f"{what}: {unlabelled} of {labels.numel()} labels are below 0 (unlabelled "
                         "samples); kNN needs every sample labelled")
    return labels


def _check_train(features: torch.Tensor, labels: torch.Tensor, num_classes: int | None):
    if features.dim() != 2:
        raise ValueError(f"train_features must be (N, D); got {tuple(features.shape)}")
    if features.shape[0] == 0:
        raise ValueError("train_features is empty (N = 0): no neighbours to vote")
    if labels.dim() != 1 or labels.shape[0] != features.shape[0]:
        raise ValueError(f"train_labels must be (N,) with N = {features.shape[0]}; got {tuple(labels.shape)}")
    labels = _check_labels(labels, "train_labels")
    top = int(labels.max())
    if num_classes is None:
        num_classes = top + 1
    elif num_classes < 1 or top >= num_classes:
        raise ValueError(f"num_classes = {num_classes} but train_labels reach {top}")
    return features, labels, num_classes
