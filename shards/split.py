"""Deterministic shuffling and stratified train/val splitting of input lists."""

from __future__ import annotations

import random
from collections import defaultdict


def shuffled(items: list, seed: int) -> list:
    out = list(items)
    random.Random(seed).shuffle(out)
    return out


def stratified_split(items: list, fraction: float, seed: int, label=lambda it: it.label):
    """Split ``items`` into (train, val) with ``round(fraction * n_c)`` of each class c in val.

    Which items go to val is drawn with ``seed``; both parts keep the input order.
    Unlabelled items (label -1) form one stratum of their own.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"--val-fraction must be in [0, 1), got {fraction}")
    by_class = defaultdict(list)
    for i, it in enumerate(items):
        by_class[label(it)].append(i)
    rng = random.Random(seed)
    val = set()
    for c in sorted(by_class):
        idx = by_class[c]
        k = int(round(fraction * len(idx)))
        if fraction > 0 and k == 0 and len(idx) > 1:
            k = 1
        val.update(rng.sample(idx, k))
    train = [it for i, it in enumerate(items) if i not in val]
    return train, [it for i, it in enumerate(items) if i in val]
