"""Class-balanced, seeded label subsets for semi-supervised evaluation (1% and 10% of the labels).

A subset keeps ``round(fraction x n_c)`` samples of every class c (at least one per class), drawn
with a seeded generator, so the same seed and labels give the same subset on any machine. Subsets
are written as JSON files of global sample indices, so anyone can evaluate on exactly the same
labels::

    {"format": "clvr-label-subset", "fraction": 0.01, "seed": 0, "classes": 10,
     "per_class": {"0": 2, ...}, "index": [12, 57, ...]}

Subsets are drawn from labelled samples only: :func:`balanced_subset` refuses a label below 0
(a sample without a label), so leave those out first; :func:`write_subset` records how many
were (``unlabelled_left_out``) when told.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

FORMAT = "clvr-label-subset"


def balanced_subset(index, labels, fraction: float, seed: int = 0) -> np.ndarray:
    """Sorted global indices of a class-balanced subset: ``max(1, round(fraction x n_c))`` of
    each class c, drawn uniformly without replacement with ``seed``."""
    index, labels = np.asarray(index, dtype=np.int64), np.asarray(labels, dtype=np.int64)
    if index.shape != labels.shape or index.ndim != 1:
        raise ValueError(f"index and labels must be 1-D of one length, got {index.shape} and {labels.shape}")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if (labels < 0).any():
        raise ValueError(f"{int((labels < 0).sum())} samples have no label (label < 0); a label subset needs labels")
    if len(np.unique(index)) != len(index):
        raise ValueError("sample indices repeat; give each sample once")
    rng = np.random.default_rng(seed)
    order = np.argsort(index, kind="stable")          # independent of the order given
    index, labels = index[order], labels[order]
    keep = []
    for c in np.unique(labels):
        members = index[labels == c]
        n = max(1, int(round(fraction * len(members))))
        keep.append(rng.choice(members, size=n, replace=False))
    return np.sort(np.concatenate(keep))


def write_subset(path, index, labels, fraction: float, seed: int = 0, unlabelled_left_out: int = 0) -> dict:
    """Draw :func:`balanced_subset` and write it as JSON; returns what was written.
    ``unlabelled_left_out``: samples of the set without a label, left out of ``index`` and
    ``labels`` by the caller (recorded in the file when there are some)."""
    from ..shards.fileio import write_atomic
    chosen = balanced_subset(index, labels, fraction, seed)
    lookup = dict(zip(np.asarray(index).tolist(), np.asarray(labels).tolist()))
    per_class: dict[str, int] = {}
    for i in chosen.tolist():
        per_class[str(lookup[i])] = per_class.get(str(lookup[i]), 0) + 1
    data = {"format": FORMAT, "fraction": fraction, "seed": seed, "classes": len(per_class),
            "per_class": dict(sorted(per_class.items(), key=lambda kv: int(kv[0]))), "index": chosen.tolist()}
    if unlabelled_left_out:
        data["unlabelled_left_out"] = int(unlabelled_left_out)
    write_atomic(Path(path), (json.dumps(data, indent=1) + "\n").encode())
    return data


def read_subset(path) -> np.ndarray:
    """The sorted global indices of a subset file written by :func:`write_subset`."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except OSError as e:
        raise ValueError(f"{path}: cannot read the label subset ({e.strerror})") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not a label subset (invalid JSON: {e})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("index"), list):
        raise ValueError(f"{path}: not a label subset (expected format {FORMAT!r} with an 'index' list)")
    return np.asarray(sorted(data["index"]), dtype=np.int64)
