"""Linear evaluation on frozen, cached features: the SGD protocol, logistic regression and a
linear SVM (as InstDisc), each reporting top-1 and top-5 accuracy.

Features are extracted once (:mod:`.features`) and cached; the probes never touch the encoder.

- :func:`train_linear` trains a linear layer with SGD (momentum 0.9, cosine decay, no weight
  decay by default: MoCo's protocol, whose lr of 30 suits unnormalised ResNet features; the
  default lr here is for features standardised by :func:`standardize`);
- :func:`logistic_regression` fits scikit-learn's multinomial logistic regression;
- :func:`linear_svm` fits scikit-learn's LinearSVC.

Labels are class ids, 0 or more: a label of -1 (a sample without a label) is refused by name
everywhere (scikit-learn would take -1 for one more class, and a test label of -1 would count as
a wrong answer); leave such samples out first, as ``clvr eval`` does.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def check_labelled(labels, what: str = "labels") -> None:
    """Refuse labels below 0 (samples without a label), naming how many."""
    arr = np.asarray(labels)
    bad = int((arr < 0).sum()) if arr.size else 0
    if bad:
        raise ValueError(f"{what}: {bad} of {arr.size} labels are below 0 (samples without a label); leave "
                         "them out before fitting or scoring a probe")


def standardize(train: torch.Tensor, *others: torch.Tensor):
    """Features scaled by the training set's mean and std (per dimension)."""
    mean, std = train.mean(0), train.std(0).clamp(min=1e-6)
    return tuple((x - mean) / std for x in (train, *others))


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor, topk=(1, 5)) -> dict:
    """``{"top1": .., "top5": ..}``; a k above the number of classes is left out."""
    out = {}
    for k in topk:
        if k <= scores.shape[1]:
            hit = (scores.topk(k, dim=1).indices == labels[:, None]).any(1)
            out[f"top{k}"] = float(hit.float().mean())
    return out


def train_linear(features, labels, num_classes: int, epochs: int = 100, lr: float = 0.1,
                 batch_size: int = 256, momentum: float = 0.9, weight_decay: float = 0.0,
                 seed: int = 0) -> torch.nn.Linear:
    """A linear classifier trained with SGD + cosine decay on (N, D) features."""
    if features.shape[0] != labels.shape[0]:
        raise ValueError(f"{features.shape[0]} features but {labels.shape[0]} labels")
    check_labelled(labels, "train_linear")
    if int(labels.max()) >= num_classes:
        raise ValueError(f"labels must be in [0, {num_classes}): they reach {int(labels.max())}")
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    layer = torch.nn.Linear(features.shape[1], num_classes)
    opt = torch.optim.SGD(layer.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    steps = epochs * math.ceil(features.shape[0] / batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    with torch.enable_grad():
        _fit(layer, opt, sched, features, labels, epochs, batch_size, g)
    return layer.eval()


def _fit(layer, opt, sched, features, labels, epochs, batch_size, g) -> None:
    n = features.shape[0]
    for _ in range(epochs):
        order = torch.randperm(n, generator=g)
        for i in range(0, n, batch_size):
            idx = order[i:i + batch_size]
            loss = F.cross_entropy(layer(features[idx]), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()


def logistic_regression(train, train_labels, test, test_labels, C: float = 1.0, max_iter: int = 1000) -> dict:
    from sklearn.linear_model import LogisticRegression
    check_labelled(train_labels, "logistic regression: train labels")
    check_labelled(test_labels, "logistic regression: test labels")
    model = LogisticRegression(C=C, max_iter=max_iter)
    model.fit(np.asarray(train), np.asarray(train_labels))
    scores = torch.as_tensor(model.predict_proba(np.asarray(test)))
    return _remap(scores, model.classes_, test_labels)


def linear_svm(train, train_labels, test, test_labels, C: float = 1.0) -> dict:
    from sklearn.svm import LinearSVC
    check_labelled(train_labels, "linear SVM: train labels")
    check_labelled(test_labels, "linear SVM: test labels")
    model = LinearSVC(C=C)
    model.fit(np.asarray(train), np.asarray(train_labels))
    scores = torch.as_tensor(model.decision_function(np.asarray(test)))
    if scores.dim() == 1:                               # two classes: one margin
        scores = torch.stack([-scores, scores], 1)
    return _remap(scores, model.classes_, test_labels)


def _remap(scores, classes, labels) -> dict:
    """Scores over the classes the model saw, as top-k against ``labels`` (a label the model never
    saw counts as wrong)."""
    labels = torch.as_tensor(np.asarray(labels))
    position = {int(c): i for i, c in enumerate(classes)}
    target = torch.tensor([position.get(int(v), -1) for v in labels])
    return topk_accuracy(scores, target)
