"""Deterministic shuffling and stratified train/val splitting of input lists."""

from __future__ import annotations

import random
from collections import defaultdict


def shuffled(items: list, seed: int) -> list:
    out = list(items)
    random.Random(seed).shuffle(out)
    return out


def stratified_split(items: list, fraction: float, seed: int, label=lambda it: it.label):
    """Split ``items`` into (train, val) with ``round(fraction * n)`` items in val, spread over
    the classes in proportion to their size (largest-remainder rounding), so each class keeps
    its share in both parts. A class never gives its last item to val, so every class is seen
    in training.

    Which items go to val is drawn with ``seed``; both parts keep the input order.
    Unlabelled items (label -1) form one stratum of their own.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"--val-fraction must be in [0, 1), got {fraction}")
    by_class = defaultdict(list)
    for i, it in enumerate(items):
        by_class[label(it)].append(i)
    classes = sorted(by_class)
    quotas = {c: fraction * len(by_class[c]) for c in classes}
    take = {c: min(int(quotas[c]), len(by_class[c]) - 1) for c in classes}
    left = int(round(fraction * len(items))) - sum(take.values())
    room = [c for c in classes if take[c] < len(by_class[c]) - 1]
    for c in sorted(room, key=lambda c: (-(quotas[c] - take[c]), c))[:max(left, 0)]:
        take[c] += 1
    rng = random.Random(seed)
    val = set()
    for c in classes:
        val.update(rng.sample(by_class[c], take[c]))
    train = [it for i, it in enumerate(items) if i not in val]
    return train, [it for i, it in enumerate(items) if i in val]
